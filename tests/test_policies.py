"""Every policy's exact trainable set on every architecture, and every bad input refused."""

import re

import pytest
import torch
from tiny_models import CASE_IDS, DEPTH, NORM_NAME, TEST_CASES, Case

from freeze_policies import (
    FreezePolicyError,
    anatomy,
    get_policy,
    list_policies,
    policy_options,
    register_policy,
    trainable_names,
)
from freeze_policies.policies.named import Policy
from freeze_policies.policies.registry import _POLICIES

REQUIRED = {"embeddings", "bottom_n", "all_but_head", "gradual_unfreeze", "top_n", "bitfit",
            "norm_only", "lisa", "custom"}


def blocks(groups, indices):
    return set().union(*(groups[f"block.{i}"] for i in indices))


def expected_trainable(case: Case, names: list[str], policy: str, stage: int = 0) -> set[str]:
    """The oracle: each policy's documented meaning, from hand-written name patterns."""
    g = case.expected_groups(names)
    every, head, emb, shared = set(names), g["head"], g["embeddings"], g["shared"]
    if policy == "embeddings":
        return every - emb
    if policy == "bottom_n":  # n=2
        return blocks(g, range(2, DEPTH)) | shared | head
    if policy == "top_n":  # n=1
        return blocks(g, [DEPTH - 1]) | shared | head
    if policy == "all_but_head":
        return head
    if policy == "bitfit":
        return {n for n in names if n.endswith("bias")} | head
    if policy == "norm_only":
        return {n for n in names if NORM_NAME.search(n.rsplit(".", 1)[0])} | head
    if policy == "gradual_unfreeze":
        if stage == 0:
            return head
        if stage > DEPTH:
            return every
        return blocks(g, range(DEPTH - stage, DEPTH)) | shared | head
    raise AssertionError(policy)


FIXED = [("embeddings", {}), ("bottom_n", {"n": 2}), ("top_n", {"n": 1}), ("all_but_head", {}),
         ("bitfit", {}), ("norm_only", {})]
UNTIED = [c for c in TEST_CASES if not c.tied]
TIED = [c for c in TEST_CASES if c.tied]


def test_required_policies_are_registered():
    assert set(list_policies()) >= REQUIRED
    assert list_policies() == sorted(list_policies())


@pytest.mark.parametrize("case", UNTIED, ids=[c.id for c in UNTIED])
@pytest.mark.parametrize("policy,options", FIXED, ids=[p for p, _ in FIXED])
def test_fixed_policy_trains_exactly_the_documented_set(case, policy, options):
    model = case.build()
    names = [n for n, _ in model.named_parameters()]
    got = get_policy(policy, **options).apply(model)
    assert got == expected_trainable(case, names, policy)
    assert trainable_names(model) == got  # requires_grad set on every parameter accordingly


@pytest.mark.parametrize("case", UNTIED, ids=[c.id for c in UNTIED])
def test_gradual_unfreeze_opens_head_then_blocks_from_top_then_embeddings(case):
    model = case.build()
    names = [n for n, _ in model.named_parameters()]
    policy = get_policy("gradual_unfreeze", every=3, unit="steps")
    anat = anatomy(model)
    assert policy.num_stages(anat) == DEPTH + 2
    previous = set()
    for stage in range(DEPTH + 3):  # one past the last stage: stays fully open
        got = policy.trainable_names(anat, stage)
        assert got == expected_trainable(case, names, "gradual_unfreeze", stage)
        assert previous <= got  # never closes anything
        previous = got
    assert policy.stage_at(step=5, epoch=0.1) == 1 and policy.stage_at(step=6, epoch=0.1) == 2


def test_gradual_unfreeze_blocks_per_stage_and_epochs():
    case = TEST_CASES[0]
    anat = anatomy(case.build())
    policy = get_policy("gradual_unfreeze", blocks_per_stage=2)
    assert (policy.every, policy.unit) == (1, "epochs")
    assert policy.num_stages(anat) == 2 + 2  # ceil(3 / 2) block stages
    assert set(anat.blocks[0]).isdisjoint(policy.trainable_names(anat, 1))
    assert set(anat.blocks[1]) <= policy.trainable_names(anat, 1)
    assert set(anat.blocks[0]) <= policy.trainable_names(anat, 2)
    assert set(anat.embeddings).isdisjoint(policy.trainable_names(anat, 2))
    assert policy.stage_at(step=100, epoch=1.99) == 1 and policy.stage_at(step=0, epoch=2.0) == 2


@pytest.mark.parametrize("case", TEST_CASES, ids=CASE_IDS)
def test_lisa_draws_k_blocks_per_stage_reproducibly(case):
    model = case.build()
    anat = anatomy(model)
    policy = get_policy("lisa", k=1, every=5, seed=7)
    g = case.expected_groups([n for n, _ in model.named_parameters()])
    draws = []
    for stage in range(8):
        got = policy.trainable_names(anat, stage)
        opened = [i for i in range(DEPTH) if g[f"block.{i}"] <= got]
        assert len(opened) == 1
        assert got == g["embeddings"] | g["head"] | g["shared"] | g[f"block.{opened[0]}"] - set(
            anat.tied)
        assert get_policy("lisa", k=1, every=5, seed=7).trainable_names(anat, stage) == got
        draws.append(opened[0])
    assert len(set(draws)) > 1, "resampling must change the blocks across stages"
    other_seed = [get_policy("lisa", k=1, seed=8).sampled_blocks(anat, s) for s in range(8)]
    assert other_seed != [[d] for d in draws]


def test_custom_regexes_select_trainable_and_frozen():
    case = TEST_CASES[0]
    model = case.build()
    names = [n for n, _ in model.named_parameters()]
    got = get_policy("custom", trainable=[r"\.layer\.2\.", r"^classifier"],
                     frozen=[r"\.output\.LayerNorm"]).apply(model)
    expected = {n for n in names if (re.search(r"\.layer\.2\.", n) or n.startswith("classifier"))
                and ".output.LayerNorm" not in n}
    assert got == expected
    only_frozen = get_policy("custom", frozen="embeddings").apply(model)
    assert only_frozen == {n for n in names if "embeddings" not in n}


@pytest.mark.parametrize("case", TIED, ids=[c.id for c in TIED])
@pytest.mark.parametrize("policy,options", FIXED, ids=[p for p, _ in FIXED])
def test_tied_weights_conflict_is_an_error_unless_resolved(case, policy, options):
    model = case.build()
    names = [n for n, _ in model.named_parameters()]
    listed = anatomy(model).tied["lm_head.weight"]
    # lm_head.weight is head; every fixed policy trains the head but not the input embedding.
    with pytest.raises(FreezePolicyError, match=rf"policy '{policy}' would train lm_head.weight "
                       rf"but freeze {re.escape(listed)}, which is the same tensor "
                       r"\(tied weights\); pass tied_weights='train'"):
        get_policy(policy, **options).apply(model)
    assert all(p.requires_grad for p in model.parameters())  # nothing changed
    untied_view = expected_trainable(case, names, policy)
    trained = get_policy(policy, tied_weights="train", **options).apply(model)
    assert trained == untied_view | {listed}
    frozen = get_policy(policy, tied_weights="freeze", **options).apply(model)
    assert frozen == untied_view - {listed}
    assert not model.get_output_embeddings().weight.requires_grad


def test_tied_weights_no_conflict_when_both_names_agree():
    case = next(c for c in TIED if c.id == "gemma-lm")
    model = case.build()
    got = get_policy("lisa", k=1).apply(model)  # embeddings and head both train
    assert "model.embed_tokens.weight" in got and "lm_head.weight" not in got


def test_register_policy_adds_a_user_policy():
    from dataclasses import dataclass

    @register_policy("only_block_zero")
    @dataclass(kw_only=True)
    class OnlyBlockZero(Policy):
        def select(self, anat, stage):
            return set(anat.blocks[0])

    try:
        model = TEST_CASES[0].build()
        got = get_policy("only_block_zero").apply(model)
        assert got == set(anatomy(model).blocks[0])
        assert policy_options("only_block_zero") == ["tied_weights", "blocks"]
    finally:
        del _POLICIES["only_block_zero"]


# -- bad input: one-line errors, raised before anything on the model changes -----------------

BAD_OPTIONS = [
    ("bottom_n", {}, r"policy 'bottom_n' needs option n"),
    ("bottom_n", {"n": -1}, r"bottom_n: n=-1 must be a non-negative integer"),
    ("bottom_n", {"n": 2, "depth": 3}, r"policy 'bottom_n' has no option 'depth'; its options: "
     r"tied_weights, blocks, n"),
    ("top_n", {"n": "2"}, r"top_n: n='2' must be a non-negative integer"),
    ("gradual_unfreeze", {"every": 0}, r"gradual_unfreeze: every=0 must be an integer > 0"),
    ("gradual_unfreeze", {"unit": "batches"}, r"gradual_unfreeze: unit='batches' is not one of "
     r"steps, epochs"),
    ("gradual_unfreeze", {"blocks_per_stage": 0}, r"blocks_per_stage=0 must be an integer >= 1"),
    ("lisa", {"every": -5}, r"lisa: every=-5 must be an integer > 0"),
    ("custom", {}, r"custom: give trainable=\[regex, ...\] and/or frozen=\[...\]"),
    ("custom", {"trainable": ["("]}, r"custom: invalid regex '\('"),
    ("embeddings", {"tied_weights": "maybe"}, r"tied_weights='maybe' is not one of error, train, "
     r"freeze"),
]


@pytest.mark.parametrize("name,options,message", BAD_OPTIONS,
                         ids=[f"{n}-{m[:20]}" for n, _, m in BAD_OPTIONS])
def test_bad_options_are_refused_at_construction(name, options, message):
    with pytest.raises(FreezePolicyError, match=message):
        get_policy(name, **options)


def test_unknown_policy_suggests_the_closest_and_lists_all():
    listed = ", ".join(list_policies())
    with pytest.raises(FreezePolicyError, match=r"unknown policy 'botom_n' \(did you mean "
                       r"'bottom_n'\?\); valid policies: " + re.escape(listed) + "$"):
        get_policy("botom_n")
    assert listed.startswith("all_but_head, auto_freeze, bitfit, bottom_n, custom")
    with pytest.raises(FreezePolicyError, match=r"unknown policy 'xyz'; valid policies: "):
        get_policy("xyz")


BAD_FOR_MODEL = [
    ("bottom_n", {"n": 4}, r"bottom_n: n=4 is out of range for BertForSequenceClassification "
     r"with 3 blocks \(valid: 0..3\)"),
    ("top_n", {"n": 0}, r"top_n: n=0 is out of range .* \(valid: 1..3\)"),
    ("lisa", {"k": 4}, r"lisa: k=4 is out of range .* with 3 blocks"),
    ("gradual_unfreeze", {"blocks_per_stage": 4}, r"gradual_unfreeze: blocks_per_stage=4 is larger "
     r"than the depth of BertForSequenceClassification \(3 blocks\)"),
    ("custom", {"trainable": ["nothing_like_this"]},
     r"custom: regex 'nothing_like_this' matches no parameter of BertForSequenceClassification"),
    ("custom", {"frozen": [".*"]}, r"policy 'custom' leaves nothing trainable in "
     r"BertForSequenceClassification at stage 0"),
    ("custom", {"trainable": ["classifier"], "frozen": ["classifier"]},
     r"leaves nothing trainable"),
]


@pytest.mark.parametrize("name,options,message", BAD_FOR_MODEL,
                         ids=[f"{n}-{m[:20]}" for n, _, m in BAD_FOR_MODEL])
def test_bad_policy_for_model_raises_before_touching_it(name, options, message):
    model = TEST_CASES[0].build()
    model.bert.encoder.layer[0].output.dense.weight.requires_grad_(False)
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(FreezePolicyError, match=message):
        get_policy(name, **options).apply(model)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before


def test_apply_never_changes_values():
    model = TEST_CASES[0].build()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    get_policy("bottom_n", n=2).apply(model)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_register_policy_rejects_bad_and_duplicate_names():
    with pytest.raises(FreezePolicyError, match=r"policy name 'Bad-Name' must be lower-case"):
        register_policy("Bad-Name")
    with pytest.raises(FreezePolicyError, match=r"a policy named 'bitfit' is already registered"):
        register_policy("bitfit")
