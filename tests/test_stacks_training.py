"""Training models with several stacks: FreezeTrainer, Seq2SeqTrainer, schedules, the cache."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import STACK_CASES
from trainer_support import one_torch_thread  # noqa: F401
from transformers import (
    AutoConfig,
    AutoModelForSeq2SeqLM,
    Seq2SeqTrainer,
    Seq2SeqTrainingArguments,
    TrainingArguments,
)

from freeze_policies import FreezeOptions, FreezePolicyError, FreezeTrainer, anatomy, get_policy

CASES = {case.id: case for case in STACK_CASES}


class Pairs(torch.utils.data.Dataset):
    """Random source/target pairs of fixed length for a tiny encoder-decoder (or speech) model."""

    def __init__(self, n=8, seed=0, features=None):
        generator = torch.Generator().manual_seed(seed)
        self.target = torch.randint(3, 99, (n, 5), generator=generator)
        if features is None:
            self.source = {"input_ids": torch.randint(3, 99, (n, 7), generator=generator)}
        else:  # (mels, frames) log-mel features
            self.source = {"input_features": torch.randn((n, *features), generator=generator)}

    def __len__(self):
        return len(self.target)

    def __getitem__(self, i):
        return {**{k: v[i] for k, v in self.source.items()}, "labels": self.target[i]}


def args_for(tmp_path, cls=TrainingArguments, **overrides):
    defaults = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3,
                    learning_rate=1e-2, report_to="none", save_strategy="no", use_cpu=True,
                    logging_strategy="no", seed=0, disable_tqdm=True)
    return cls(**{**defaults, **overrides})


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def optimizer_names(trainer):
    by_id = {id(p): n for n, p in trainer.model.named_parameters()}
    return {by_id[id(p)] for group in trainer.optimizer.param_groups for p in group["params"]}


@pytest.mark.parametrize("case_id,policy,data", [
    ("t5", {"name": "freeze_parts", "parts": ["encoder"], "tied_weights": "freeze"}, None),
    ("bart", {"name": "bottom_n", "n": 1, "stack": "decoder", "tied_weights": "freeze"}, None),
    ("whisper", {"name": "freeze_parts", "parts": ["encoder"]}, (8, 32)),
])
def test_freeze_trainer_on_encoder_decoder_keeps_frozen_weights_bit_identical(
        case_id, policy, data, tmp_path):
    model = CASES[case_id].build()
    trainer = FreezeTrainer(model=model, args=args_for(tmp_path), freeze_policy=policy,
                            train_dataset=Pairs(features=data))
    expected = get_policy(**policy).trainable_names(anatomy(model))
    before = snapshot(model)
    trainer.train()
    after = snapshot(model)
    moved = {n for n in after if not torch.equal(before[n], after[n])}
    assert optimizer_names(trainer) == set(expected)
    assert moved and moved <= set(expected)
    assert all(torch.equal(before[n], after[n]) for n in after if n not in expected)
    assert trainer.frozen_audit.passed


class FreezeSeq2SeqTrainer(FreezeTrainer, Seq2SeqTrainer):
    """FreezeTrainer's freezing with Seq2SeqTrainer's generation-based evaluation."""


def test_seq2seq_trainer_with_a_schedule_over_the_decoder_and_generation_eval(tmp_path):
    # transformers' generate() on a T5 whose decoder is deeper than its encoder fails in its own
    # cache (IndexError), with or without freezing: equal depths here.
    config = AutoConfig.for_model("t5", **{**CASES["t5"].config, "num_decoder_layers": 2})
    model = AutoModelForSeq2SeqLM.from_config(config)
    args = args_for(tmp_path, Seq2SeqTrainingArguments, predict_with_generate=True,
                    per_device_eval_batch_size=4, max_steps=4)
    policy = get_policy("freeze_parts", parts=["encoder"], tied_weights="freeze", policy={
        "name": "gradual_unfreeze", "stack": "decoder", "every": 1, "unit": "steps"})
    trainer = FreezeSeq2SeqTrainer(model=model, args=args, freeze_policy=policy,
                                   train_dataset=Pairs(), eval_dataset=Pairs(n=4, seed=1))
    anat = anatomy(model)
    encoder = set(anat.stack("encoder").names())
    before = snapshot(model)
    trainer.train()
    after = snapshot(model)
    moved = {n for n in after if not torch.equal(before[n], after[n])}
    decoder_blocks = {n for block in anat.stack("decoder").blocks for n in block}
    assert moved & decoder_blocks  # the schedule opened decoder blocks
    assert not moved & encoder and "shared.weight" not in moved
    assert trainer.frozen_audit.passed
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics
    predictions = trainer.predict(Pairs(n=4, seed=2))
    assert predictions.predictions.shape[0] == 4  # generated token ids, one row per example
    assert predictions.predictions.dtype.kind == "i" and predictions.predictions.shape[1] > 1


def test_prefix_cache_refuses_a_frozen_encoder_in_one_line(tmp_path):
    model = CASES["t5"].build()
    with pytest.raises(FreezePolicyError, match=r"^cache_frozen_prefix works on models with one "
                       r"stack of blocks; T5ForConditionalGeneration has 2 \(encoder, decoder\), "
                       r"and caching a frozen encoder's output is not supported yet$"):
        FreezeTrainer(model=model, args=args_for(tmp_path), train_dataset=Pairs(),
                      freeze_policy={"name": "freeze_parts", "parts": ["encoder"],
                                     "tied_weights": "freeze"},
                      freeze_options=FreezeOptions(cache_frozen_prefix=True))


ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_processes_on_an_encoder_decoder_match_one_process(tmp_path):
    """2 CPU processes over gloo, batch 2 each, against 1 process with batch 4: frozen encoder
    untouched, ranks bit-identical, the decoder schedule re-wraps DDP and matches one process."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    worker = str(ROOT / "tests" / "ddp_seq2seq_worker.py")
    runs = [
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(ROOT / "configs/accelerate/ddp_cpu.yaml"), "--main_process_port", str(free_port()),
         worker, str(tmp_path / "two"), "--batch", "2"],
        [sys.executable, worker, str(tmp_path / "one"), "--batch", "4"],
    ]
    for command in runs:
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1, one = (torch.load(tmp_path / run / f"rank{r}.pt", weights_only=False)
                         for run, r in (("two", 0), ("two", 1), ("one", 0)))
    assert rank0["info"]["world_size"] == 2 and one["info"]["world_size"] == 1
    assert [k for k in rank0["state"] if not torch.equal(rank0["state"][k],
                                                        rank1["state"][k])] == []
    for name, value in one["state"].items():
        torch.testing.assert_close(rank0["state"][name], value, atol=1e-5, rtol=0, msg=name)
    assert rank0["info"]["stages"] == one["info"]["stages"] == [(0, 0), (2, 1), (4, 2)]
    assert rank0["info"]["audit"] == [True] and rank0["info"]["rewraps"] == 2
    moved = {k for k in rank0["state"] if not torch.equal(rank0["state"][k], rank0["init"][k])}
    assert not any(k.startswith("encoder.") or k == "shared.weight" for k in moved)
    assert {k for k in moved if k.startswith("decoder.block.")} >= {
        k for k in rank0["state"] if k.startswith("decoder.block.2.")}
