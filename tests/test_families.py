"""The families people fine-tune now (vision-language, speech, mixture of experts): their
anatomy against hand-written oracles, the trace and transformers' metadata agreeing, the parts
inside blocks by role, the vision-language presets, and the part policies on every family."""

import re

import pytest
import torch
import transformers
from tiny_models import (
    CASE_IDS,
    FAMILY_CASE_IDS,
    FAMILY_CASES,
    STACK_CASE_IDS,
    STACK_CASES,
    TEST_CASES,
    TINY,
    expected_block_parts,
)
from transformers import AutoConfig

from freeze_policies import FreezePolicyError, anatomy, get_policy

FAMILIES = {case.id: case for case in FAMILY_CASES}


def names_of(model):
    return [name for name, _ in model.named_parameters()]


@pytest.fixture(scope="module", params=FAMILY_CASES, ids=FAMILY_CASE_IDS)
def family(request):
    case = request.param
    model = case.build()
    return case, model, anatomy(model)


def test_every_family_answers_and_matches_its_oracle(family):
    case, model, anat = family
    names = names_of(model)
    assert anat.traced == case.traced, anat.trace
    if not case.traced:
        assert anat.trace.startswith("transformers metadata: towers ")
    assert sorted(anat.names()) == sorted(names)  # every parameter exactly once
    assert [(s.name, s.depth) for s in anat.stacks] == list(case.depths.items())
    got = {part: set(members) for part, members in anat.parts().items()}
    assert got == case.expected_parts(names)
    assert {s.name: s.feeds for s in anat.stacks if s.feeds} == case.feeds
    assert set(anat.features) == {n for n in names if n.startswith(case.features)} if \
        case.features else not anat.features
    assert anat.tied == case.tied


def test_vision_language_presets_match_the_oracle(family):
    case, model, anat = family
    names = names_of(model)
    presets = {preset: set(members) for preset, members in anat.presets().items()}
    expected = {preset: {n for n in names if n.startswith(prefixes)}
                for preset, prefixes in case.presets.items()}
    assert presets == expected
    if presets:  # the tower and the projector never overlap; together with the LM: everything
        assert not presets["vision_tower"] & presets["projector"]
        union = presets["vision_tower"] | presets["projector"] | presets["language_model"]
        assert union | presets["head"] == set(names)


def test_parts_inside_blocks_match_the_oracle(family):
    case, model, anat = family
    got = {part: set(members) for part, members in anat.block_parts.items()}
    assert got == expected_block_parts(names_of(model), list(case.stacks.values()))


def test_qwen2_vl_freezing_the_vision_tower_keeps_its_merger_trainable():
    model = FAMILIES["qwen2-vl"].build()
    trainable = get_policy("freeze_parts", parts=["vision_tower"]).apply(model)
    assert {n for n in trainable if n.startswith("model.visual.")} == {
        n for n in names_of(model) if n.startswith("model.visual.merger.")}
    assert not model.model.visual.blocks[0].attn.qkv.weight.requires_grad
    assert model.model.visual.merger.mlp[0].weight.requires_grad
    # the stack itself (named as transformers names the module) still means all of `visual`
    everything_visual = get_policy("freeze_parts", parts=["visual"]).apply(model)
    assert not any(n.startswith("model.visual.") for n in everything_visual)


# -- the trace and the metadata agree wherever both answer --------------------------------------

ALL_CASES = [*TEST_CASES, *STACK_CASES, *FAMILY_CASES]
ALL_IDS = [*CASE_IDS, *STACK_CASE_IDS, *FAMILY_CASE_IDS]
# Without a trace a parameter outside the blocks is placed by registration order; these are
# registered on the other side of the blocks from where the forward uses them.
REGISTRATION_ORDER_DIFFERS = {
    "deberta-v2-cls": {"deberta.encoder.rel_embeddings.weight"},
    "mpnet-cls": {"mpnet.encoder.relative_attention_bias.weight"},
    "bart": {f"model.{side}.layernorm_embedding.{p}" for side in ("encoder", "decoder")
             for p in ("weight", "bias")},
}
# Dual encoders: transformers names no encoder/decoder tower for CLIP's and SigLIP's text tower.
STRUCTURE_REFUSES = {"clip", "siglip"}


@pytest.mark.parametrize("case", ALL_CASES, ids=ALL_IDS)
def test_trace_and_transformers_metadata_agree(case):
    model = case.build()
    traced = anatomy(model)
    if case.id in STRUCTURE_REFUSES:
        with pytest.raises(FreezePolicyError, match=r"transformers names no tower \(get_encoder "
                           r"/ get_decoder\) holding text_model.*stacks are not guessed"):
            anatomy(model, source="structure")
        return
    read = anatomy(model, source="structure")
    assert not read.traced
    if not traced.traced:  # the metadata is the only answer: nothing to compare
        assert case.id in FAMILIES and not FAMILIES[case.id].traced
        return

    def stacks(anat):
        return [(s.name, s.module, s.block_modules, s.feeds, s.role, s.features)
                for s in anat.stacks]

    assert stacks(read) == stacks(traced)
    assert read.block_parts == traced.block_parts
    assert read.presets() == traced.presets()
    assert read.projector == traced.projector
    assert read.tied == traced.tied
    differs = REGISTRATION_ORDER_DIFFERS.get(case.id, set())
    for part in set(traced.parts()) | set(read.parts()):
        left, right = set(traced.parts().get(part, [])), set(read.parts().get(part, []))
        assert left - differs == right - differs, part
    moved = {n for part, names in traced.parts().items() for n in names
             if n not in read.parts().get(part, [])}
    assert moved == differs  # exactly the known ones, no other


def test_source_option_is_validated_and_trace_only_refuses_untraceable_stacks():
    model = FAMILIES["qwen2-vl"].build()
    with pytest.raises(FreezePolicyError, match=r"source='guess' is not one of auto, trace, "
                       r"structure"):
        anatomy(model, source="guess")
    with pytest.raises(FreezePolicyError, match=r"Qwen2VLForConditionalGeneration has 2 stacks "
                       r".*source='trace' was asked\); stacks are not guessed"):
        anatomy(model, source="trace")


# -- part policies on every single-stack family -------------------------------------------------

SINGLE = [*TEST_CASES, *(c for c in FAMILY_CASES if len(c.stacks) == 1)]
SINGLE_IDS = [case.id for case in SINGLE]


@pytest.mark.parametrize("case", SINGLE, ids=SINGLE_IDS)
def test_train_parts_and_freeze_parts_by_role_on_every_single_stack_family(case):
    model = case.build()
    anat = anatomy(model)
    names = names_of(model)
    pattern = case.block_pattern if hasattr(case, "block_pattern") else case.stacks["model"]
    expected = expected_block_parts(names, [pattern])
    assert {part: set(members) for part, members in anat.block_parts.items()} == expected
    trained = get_policy("train_parts", parts=["attention"]).apply(model, anat=anat)
    assert set(trained) == expected["attention"]
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected["attention"]
    frozen_norms = get_policy("freeze_parts", parts=["norms"], tied_weights="train").apply(
        model, anat=anat)
    assert set(frozen_norms) == set(names) - expected["norms"]
    assert not any(p.requires_grad for n, p in model.named_parameters() if n in expected["norms"])
    if "router" in anat.block_parts:  # every block but its router
        trained = get_policy("freeze_parts", parts=["router"]).apply(model, anat=anat)
        routers = {n for n in names if re.search(r"\.mlp\.gate\.weight$", n)}
        assert set(names) - set(trained) == routers and len(routers) == anat.depth


def test_mlps_of_the_top_blocks_compose_with_block_selection():
    model = FAMILIES["mixtral"].build()
    policy = get_policy("train_parts", parts=["mlp"], policy={"name": "top_n", "n": 1})
    trained = policy.apply(model)
    assert set(trained) == {n for n in names_of(model) if n.startswith("model.layers.1.mlp.")}
    experts_only = get_policy("train_parts", parts=["experts"]).apply(model)
    assert set(experts_only) == {n for n in names_of(model) if ".mlp.experts." in n}


def test_a_part_the_model_lacks_is_one_line_naming_its_parts():
    config = AutoConfig.for_model("llama", **dict(TINY, num_key_value_heads=1))
    model = transformers.AutoModelForCausalLM.from_config(config)
    with pytest.raises(FreezePolicyError, match=r"^freeze_parts: LlamaForCausalLM has no "
                       r"'router' \(no parameter there\); its parts: embeddings, head, model, "
                       r"model.embeddings, model.blocks, attention, mlp, norms$"):
        get_policy("freeze_parts", parts=["router"]).apply(model)
    with pytest.raises(FreezePolicyError, match=r"^train_parts: 'vision_tower' is not a part of "
                       r"LlamaForCausalLM; its parts: embeddings, head, model, model.embeddings"):
        get_policy("train_parts", parts=["vision_tower"]).apply(model)
    with pytest.raises(FreezePolicyError, match=r"^train_parts: policy 'train_parts' cannot be "
                       r"nested in train_parts"):
        get_policy("train_parts", parts=["mlp"], policy={"name": "train_parts"})


def test_parts_of_one_stack_by_role():
    model = FAMILIES["idefics3"].build()
    trained = get_policy("train_parts", parts=["text_model.mlp"]).apply(model)
    assert set(trained) == {n for n in names_of(model)
                            if re.match(r"model\.text_model\.layers\.\d+\.mlp\.", n)}
    assert torch.is_tensor(model.model.text_model.layers[0].mlp.up_proj.weight)
