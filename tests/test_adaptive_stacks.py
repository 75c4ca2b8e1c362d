"""auto_freeze on models with several stacks: ``stack=`` names the stack measured and frozen."""

from __future__ import annotations

import re

import pytest
import torch
from test_stacks_training import Pairs, args_for, optimizer_names, snapshot
from tiny_models import STACK_CASES
from trainer_support import Recorder, make_model, one_torch_thread  # noqa: F401
from transformers import AutoConfig, AutoModelForSeq2SeqLM, AutoModelForSpeechSeq2Seq

from freeze_policies import FreezeOptions, FreezePolicyError, FreezeTrainer, anatomy, get_policy
from freeze_policies.policies.adaptive import AutoFreezeController

CASES = {case.id: case for case in STACK_CASES}
WHISPER_FEATURES = (8, 32)  # (mels, frames) for the tiny Whisper

# What freezes with the decoder's block 0, written by hand: the decoder's embeddings and, under
# tied_weights="freeze", the table tied to them (T5's and BART's shared table, which the encoder
# reads too; Whisper's decoder tokens, which are also proj_out).
DECODER_EMBEDDINGS = {
    "t5": {"shared.weight"},
    "bart": {"model.shared.weight", "model.decoder.embed_positions.weight",
             "model.decoder.layernorm_embedding.weight", "model.decoder.layernorm_embedding.bias"},
    "whisper": {"model.decoder.embed_tokens.weight", "model.decoder.embed_positions.weight"},
}


def decoder_block(case_id: str, name: str) -> int | None:
    found = re.match(CASES[case_id].stacks["decoder"], name)
    return int(found.group(1)) if found else None


def policy(**options):
    return get_policy("auto_freeze", **{"stack": "decoder", "tied_weights": "freeze", **options})


# -- stages and errors --------------------------------------------------------------------------
@pytest.mark.parametrize("case_id", ["t5", "bart", "whisper"])
def test_stage_d_freezes_the_stack_embeddings_and_its_lowest_d_blocks_only(case_id):
    model = CASES[case_id].build()
    anat = anatomy(model)
    names = set(anat.names()) - set(anat.tied)
    auto = policy()
    assert auto.num_stages(anat) == 3  # depth 0, 1, 2 of the decoder's 3 blocks
    assert auto.trainable_names(anat, 0) == names
    for depth in (1, 2):
        frozen = DECODER_EMBEDDINGS[case_id] | {
            n for n in names if (decoder_block(case_id, n) or 0) < depth
            and decoder_block(case_id, n) is not None}
        assert auto.trainable_names(anat, depth) == names - frozen


def test_a_single_stack_model_accepts_its_own_stack_name_with_the_same_stages():
    anat = anatomy(make_model("bert", layers=3))
    plain, named = get_policy("auto_freeze"), get_policy("auto_freeze", stack="encoder")
    assert named.num_stages(anat) == plain.num_stages(anat) == 3
    for stage in range(3):
        assert named.trainable_names(anat, stage) == plain.trainable_names(anat, stage)
    with pytest.raises(FreezePolicyError, match=r"^auto_freeze: stack='decoder' is not a stack of "
                       r"BertForSequenceClassification; its stacks: encoder$"):
        AutoFreezeController(get_policy("auto_freeze", stack="decoder"), anat)


def test_several_stacks_and_no_stack_named_is_a_one_line_error_listing_them(tmp_path):
    model = CASES["whisper"].build()
    with pytest.raises(FreezePolicyError) as raised:
        FreezeTrainer(model=model, args=args_for(tmp_path), train_dataset=Pairs(),
                      freeze_policy={"name": "auto_freeze", "every": 1})
    assert re.fullmatch(
        r"auto_freeze: WhisperForConditionalGeneration has 2 stacks of blocks \(encoder: .*\); "
        r"pass stack= one of encoder, decoder", str(raised.value))


@pytest.mark.parametrize("case_id,table", [("t5", "shared.weight"), ("whisper", "proj_out.weight")])
def test_a_table_tied_across_the_stack_boundary_needs_tied_weights(case_id, table, tmp_path):
    model = CASES[case_id].build()
    with pytest.raises(FreezePolicyError, match=f"auto_freeze' would train {table} but freeze "):
        FreezeTrainer(model=model, args=args_for(tmp_path), train_dataset=Pairs(),
                      freeze_policy={"name": "auto_freeze", "stack": "decoder", "every": 1})


def test_the_prefix_cache_is_refused_on_several_stacks_in_one_line(tmp_path):
    with pytest.raises(FreezePolicyError, match=r"^cache_frozen_prefix works on models with one "
                       r"stack of blocks; T5ForConditionalGeneration has 2 \(encoder, decoder\)"):
        FreezeTrainer(model=CASES["t5"].build(), args=args_for(tmp_path), train_dataset=Pairs(),
                      freeze_policy=policy(every=1),
                          freeze_options=FreezeOptions(cache_frozen_prefix=True))


# -- in training --------------------------------------------------------------------------------
def deeper_decoder(case_id: str, seed: int = 0):
    """The tiny model with a 4-block decoder: one block frozen from the start, two freezing
    during training, one kept by the floor."""
    case = CASES[case_id]
    key = "num_decoder_layers" if case_id == "t5" else "decoder_layers"
    config = AutoConfig.for_model(case.model_type, **{**case.config, key: 4})
    torch.manual_seed(seed)
    auto = AutoModelForSeq2SeqLM if case_id == "t5" else AutoModelForSpeechSeq2Seq
    return auto.from_config(config)


def features(case_id):
    return WHISPER_FEATURES if case_id == "whisper" else None


@pytest.mark.parametrize("case_id", ["t5", "whisper"])
def test_decoder_blocks_freeze_bottom_up_while_the_encoder_trains(case_id, tmp_path):
    """every=1, percentile=100, a cap that never binds: the decoder's lowest trainable block
    freezes at each decision (steps 2 and 3) until the floor; block 0 and the decoder's
    embeddings are frozen from the start (initial_depth=1) and never train."""
    model = deeper_decoder(case_id)
    recorder = Recorder(states=True)
    trainer = FreezeTrainer(
        model=model, args=args_for(tmp_path, max_steps=5), train_dataset=Pairs(
            features=features(case_id)), callbacks=[recorder],
        freeze_policy=policy(every=1, percentile=100.0, max_change=1e6, initial_depth=1))
    trainer.train()
    history = trainer.state.log_history
    assert [(e["step"], e["freeze_stage"]) for e in history if "freeze_stage" in e] == [
        (0, 1), (2, 2), (3, 3)]
    anat = trainer.freeze_callback.anat
    decoder, encoder = anat.stack("decoder"), anat.stack("encoder")
    snaps, states = recorder.snapshots, recorder.optimizer_states  # [k]: after k steps
    never = set(decoder.blocks[0]) | DECODER_EMBEDDINGS[case_id]
    # what never trained: unchanged, and no optimizer state for it (the optimizer holds every
    # parameter: stage 0, below initial_depth, would train everything)
    assert all(torch.equal(snaps[0][n], snaps[-1][n]) for n in never)
    assert optimizer_names(trainer) == set(snaps[0])
    assert not never & set(states[-1]) and not never & set().union(*recorder.state_names)
    for step, block in ((2, 1), (3, 2)):
        names = decoder.blocks[block]
        assert any(not torch.equal(snaps[0][n], snaps[step][n]) for n in names)  # it trained
        for name in names:  # then bit-identical from the step it froze, its state too
            assert torch.equal(snaps[step][name], snaps[-1][name]), name
            assert torch.equal(states[step - 1][name]["exp_avg"], states[-1][name]["exp_avg"])
        for grads in recorder.grad_names[step:]:
            assert not grads & set(names)
    # the decoder's top block and the encoder's blocks train to the end
    for names in (decoder.blocks[3], *encoder.blocks):
        assert any(not torch.equal(snaps[-2][n], snaps[-1][n]) for n in names)
    assert trainer.frozen_audit.passed
    assert trainer.frozen_audit.checked >= len(decoder.blocks[1]) + len(decoder.blocks[2])
    decisions = trainer.freeze_callback.controller.decisions
    assert [d["auto_freeze_depth"] for d in decisions] == [2, 3, 3, 3]
    assert set(decisions[0]["auto_freeze_rates"]) == {"1", "2", "3"}  # indices in the decoder


def test_resume_on_the_decoder_takes_the_same_decisions(tmp_path):
    def trainer(seed):
        return FreezeTrainer(
            model=deeper_decoder("t5", seed=seed),
            args=args_for(tmp_path / "run", max_steps=8, save_strategy="steps", save_steps=4),
            train_dataset=Pairs(), freeze_policy=policy(every=1, percentile=60.0))

    full = trainer(0)
    full.train()
    decisions = [e for e in full.state.log_history if "auto_freeze_depth" in e]
    resumed = trainer(7)  # another init: the checkpoint must bring everything back
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-4"))
    assert resumed.freeze_callback.controller.decisions == decisions
    at_checkpoint = [d["auto_freeze_depth"] for d in decisions if d["step"] == 4]
    assert max(d["auto_freeze_depth"] for d in decisions if d["step"] > 4) > at_checkpoint[0]
    final, again = snapshot(full.model), snapshot(resumed.model)
    assert [n for n in final if not torch.equal(final[n], again[n])] == []
