"""Anatomy discovery on every architecture of the table, the fallbacks and the refusals."""

import pytest
import torch
import transformers
from tiny_models import CASE_IDS, DEPTH, TEST_CASES, TINY
from torch import nn
from transformers import AutoConfig

from freeze_policies import FreezePolicyError, anatomy, get_policy, summarize


@pytest.fixture(params=TEST_CASES, ids=CASE_IDS)
def case(request):
    return request.param


def test_groups_match_the_oracle_and_cover_every_parameter_once(case):
    model = case.build()
    names = [name for name, _ in model.named_parameters()]
    anat = anatomy(model)

    assert anat.traced, "the dummy forward should run on every table model"
    assert anat.depth == DEPTH
    assert sorted(anat.names()) == sorted(names)  # every parameter exactly once
    expected = case.expected_groups(names)
    got = {group: set(members) for group, members in anat.groups().items()}
    got.setdefault("shared", set())
    assert got == expected


def test_input_embedding_and_output_layer_are_placed(case):
    model = case.build()
    anat = anatomy(model)
    by_tensor = {id(p): n for n, p in model.named_parameters()}
    inputs = model.get_input_embeddings()
    assert all(by_tensor[id(p)] in anat.embeddings for p in inputs.parameters())
    output = model.get_output_embeddings() if case.auto_class.endswith("CausalLM") else None
    if output is not None and case.tied:
        assert anat.tied == {"lm_head.weight": by_tensor[id(output.weight)]}
        assert anat.tied_groups == {"lm_head.weight": "head"}
    elif output is not None:
        assert "lm_head.weight" in anat.head and not anat.tied


def test_norms_are_the_normalisation_parameters(case):
    model = case.build()
    anat = anatomy(model)
    names = [name for name, _ in model.named_parameters()]
    expected = {n for n in names if any(
        ("norm" in part.lower() or part.startswith("ln_")) for part in n.split(".")[:-1])}
    assert set(anat.norms) == expected


def test_anatomy_does_not_change_training_mode_or_weights():
    case = TEST_CASES[0]
    model = case.build()
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    anatomy(model)
    assert model.training
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


class Unlisted(nn.Module):
    """An architecture nobody listed: no config, a forward the dummy input does not fit."""

    def __init__(self):
        super().__init__()
        self.tok = nn.Embedding(10, 8)
        self.stack = nn.ModuleList(nn.Linear(8, 8) for _ in range(4))
        self.norm = nn.LayerNorm(8)
        self.out = nn.Linear(8, 2)

    def forward(self, tokens, extra):
        hidden = self.tok(tokens)
        for layer in self.stack:
            hidden = layer(hidden)
        return self.out(self.norm(hidden))


def test_unlisted_architecture_falls_back_to_registration_order():
    anat = anatomy(Unlisted())
    assert not anat.traced
    assert anat.embeddings == ["tok.weight"]
    assert anat.blocks == [[f"stack.{i}.weight", f"stack.{i}.bias"] for i in range(4)]
    assert anat.head == ["norm.weight", "norm.bias", "out.weight", "out.bias"]
    assert set(anat.norms) == {"norm.weight", "norm.bias"}


def test_explicit_blocks_by_modulelist_name_and_by_list():
    model = Unlisted()
    assert anatomy(model, blocks="stack").block_modules == [f"stack.{i}" for i in range(4)]
    two = anatomy(model, blocks=["stack.1", "stack.3"])
    assert two.depth == 2
    assert two.embeddings == ["tok.weight", "stack.0.weight", "stack.0.bias"]  # before block 0
    assert two.shared == ["stack.2.weight", "stack.2.bias"]  # between the given blocks


def test_explicit_blocks_bad_names_are_refused():
    with pytest.raises(FreezePolicyError, match=r"blocks='nope' is not a ModuleList of Unlisted; "
                       r"ModuleLists: stack \(4\)"):
        anatomy(Unlisted(), blocks="nope")
    with pytest.raises(FreezePolicyError, match=r"blocks= names no module of Unlisted: \['x'\]"):
        anatomy(Unlisted(), blocks=["x"])


def test_no_blocks_found_names_the_way_out():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with pytest.raises(FreezePolicyError, match=r"cannot find the transformer blocks of Sequential"
                       r".*no ModuleList.*pass blocks="):
        anatomy(model)


def test_albert_shared_layers_are_refused_with_the_reason():
    config = AutoConfig.for_model("albert", embedding_size=16, **TINY)
    model = transformers.AutoModelForSequenceClassification.from_config(config)
    with pytest.raises(FreezePolicyError, match=r"AlbertForSequenceClassification \(its layers are "
                       r"shared across depths, as in ALBERT\).*pass blocks="):
        anatomy(model)


def test_encoder_decoder_has_two_stacks_and_works_with_explicit_blocks():
    config = AutoConfig.for_model("t5", d_model=32, d_ff=37, num_layers=2, num_heads=2, d_kv=16,
                                  vocab_size=99, decoder_start_token_id=0)
    model = transformers.AutoModelForSeq2SeqLM.from_config(config)
    assert anatomy(model).stack_names() == ["encoder", "decoder"]  # see tests/test_stacks.py
    with pytest.raises(FreezePolicyError, match=r"bottom_n: T5ForConditionalGeneration has 2 "
                       r"stacks of blocks .* pass stack= one of encoder, decoder"):
        get_policy("bottom_n", n=2).apply(model)
    order = ["encoder.block.0", "encoder.block.1", "decoder.block.0", "decoder.block.1"]
    anat = anatomy(model, blocks=order)
    assert anat.depth == 4
    assert "encoder.final_layer_norm.weight" in anat.shared  # runs between the given blocks
    get_policy("bottom_n", n=2, blocks=order, tied_weights="train").apply(model, anat=anat)
    assert not model.encoder.block[1].layer[0].SelfAttention.q.weight.requires_grad
    assert model.decoder.block[0].layer[0].SelfAttention.q.weight.requires_grad


def test_summary_counts_per_group_and_tied_tensor_once():
    case = next(c for c in TEST_CASES if c.id == "gpt2-lm")
    model = case.build()
    get_policy("top_n", n=1, tied_weights="freeze").apply(model)
    summary = summarize(model)
    assert summary.total == sum(p.numel() for p in model.parameters())  # tied counted once
    rows = {row.group: row for row in summary.rows}
    assert rows["embeddings"].trainable == 0
    assert rows["block.0"].trainable == 0 and rows["block.2"].trainable == rows["block.2"].total
    assert summary.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    text = str(summary)
    assert text.splitlines()[0].split() == ["group", "trainable", "total", "%"]
    assert text.splitlines()[-1].startswith("total")
    assert summary.as_dict()["groups"]["block.2"] == [rows["block.2"].total] * 2
