"""Several stacks of blocks: anatomy, policies over stacks, presets, tied tables, evidence."""

import re

import pytest
import torch
import transformers
from tiny_models import STACK_CASE_IDS, STACK_CASES, TEST_CASES
from torch import nn
from transformers import AutoConfig

from freeze_policies import FreezePolicyError, anatomy, get_policy, summarize, trainable_names

CASES = {case.id: case for case in STACK_CASES}


@pytest.fixture(scope="module")
def models():
    """One tiny model per case, built once (policies never change values, only requires_grad)."""
    return {case.id: case.build() for case in STACK_CASES}


@pytest.mark.parametrize("case", STACK_CASES, ids=STACK_CASE_IDS)
def test_stacks_and_parts_match_the_oracle(case, models):
    model = models[case.id]
    names = [name for name, _ in model.named_parameters()]
    anat = anatomy(model)

    assert anat.traced and anat.trace == "forward trace"
    assert anat.stack_names() == list(case.stacks)  # in forward order
    assert {s.name: s.depth for s in anat.stacks} == case.depths
    assert {s.name: s.feeds for s in anat.stacks} == {s: case.feeds.get(s, ()) for s in case.stacks}
    got = {part: set(members) for part, members in anat.parts().items()}
    assert got == case.expected_parts(names)
    assert sorted(anat.names()) == sorted(names)  # the flat view: every parameter exactly once
    assert anat.depth == sum(case.depths.values())
    assert anat.tied == case.tied
    assert (
        set(anat.features) == {n for n in names if n.startswith(case.features)}
        if case.features
        else anat.features == []
    )


def test_feature_encoder_is_what_transformers_freezes():
    """wav2vec2's own ``freeze_feature_encoder()`` freezes exactly ``Anatomy.features``."""
    model = CASES["wav2vec2"].build()
    model.freeze_feature_encoder()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert set(anatomy(model).features) == frozen


# (case, policy, options, fullmatch regex of the trainable names) -- written from the model's
# parameter names, independently of the anatomy code.
EXPECTED = [
    (
        "t5",
        "freeze_parts",
        {"parts": ["encoder"], "tied_weights": "freeze"},
        r"decoder\.(block\.\d+\..*|final_layer_norm\.weight)",
    ),
    (
        "t5",
        "bottom_n",
        {"n": 1, "stack": "decoder", "tied_weights": "freeze"},
        r"encoder\.(block\.\d+\..*|final_layer_norm\.weight)|decoder\.(block\.[12]\..*"
        r"|final_layer_norm\.weight)",
    ),
    (
        "t5",
        "top_n",
        {"n": 1, "stack": "encoder", "tied_weights": "freeze"},
        r"encoder\.(block\.1\..*|final_layer_norm\.weight)|decoder\.final_layer_norm\.weight",
    ),
    (
        "t5",
        "all_but_head",
        {"tied_weights": "train"},
        r"decoder\.final_layer_norm\.weight|shared\.weight",
    ),
    (
        "t5",
        "embeddings",
        {"tied_weights": "freeze"},
        r"(en|de)coder\.(block\..*|final_layer_norm\..*)",
    ),
    (
        "bart",
        "freeze_parts",
        {"parts": ["encoder"], "tied_weights": "freeze"},
        r"model\.decoder\..*",
    ),
    (
        "bart",
        "top_n",
        {"n": 2, "stack": "decoder", "tied_weights": "freeze"},
        r"model\.decoder\.layers\.[12]\..*",
    ),
    ("whisper", "freeze_parts", {"parts": ["encoder"]}, r"model\.decoder\..*"),
    ("whisper", "freeze_parts", {"parts": ["feature_encoder"]}, r"(?!model\.encoder\.conv).*"),
    (
        "whisper",
        "bottom_n",
        {"n": 2, "stack": "encoder"},
        r"model\.encoder\.layer_norm\..*|model\.decoder\..*",
    ),
    (
        "whisper",
        "gradual_unfreeze",
        {"stack": "decoder", "tied_weights": "train"},
        r"model\.decoder\.(layer_norm\..*|embed_tokens\.weight)",
    ),
    (
        "wav2vec2",
        "freeze_parts",
        {"parts": ["feature_encoder"]},
        r"(?!wav2vec2\.feature_extractor\.).*",
    ),
    (
        "wav2vec2",
        "bottom_n",
        {"n": 1, "stack": "encoder"},
        r"wav2vec2\.encoder\.layers\.[12]\..*|lm_head\..*",
    ),
    (
        "wav2vec2",
        "freeze_parts",
        {"parts": ["feature_encoder"], "policy": {"name": "top_n", "n": 1}},
        r"wav2vec2\.encoder\.layers\.2\..*|lm_head\..*",
    ),
    (
        "clip",
        "all_but_head",
        {},
        r"logit_scale|(visual|text)_projection\.weight|text_model\.final_layer_norm\..*"
        r"|vision_model\.post_layernorm\..*",
    ),
    (
        "clip",
        "freeze_parts",
        {"parts": ["vision_model"]},
        r"logit_scale|(visual|text)_projection\.weight|text_model\..*",
    ),
    (
        "clip",
        "top_n",
        {"n": 3, "stack": "vision_model"},
        r"vision_model\.(encoder\.layers\.\d\..*|post_layernorm\..*)|logit_scale"
        r"|(visual|text)_projection\.weight|text_model\.final_layer_norm\..*",
    ),
    (
        "siglip",
        "all_but_head",
        {},
        r"logit_(scale|bias)|text_model\.(final_layer_norm|head)\..*"
        r"|vision_model\.(post_layernorm|head)\..*",
    ),
    ("siglip", "freeze_parts", {"parts": ["text_model"]}, r"logit_(scale|bias)|vision_model\..*"),
    ("llava", "train_parts", {"parts": ["projector"]}, r"model\.multi_modal_projector\..*"),
    (
        "llava",
        "freeze_parts",
        {
            "parts": ["vision_tower"],
            "policy": {"name": "bottom_n", "n": 1, "stack": "language_model"},
        },
        r"model\.multi_modal_projector\..*|model\.language_model\.(layers\.1\..*|norm\.weight)"
        r"|lm_head\.weight",
    ),
    (
        "llava",
        "freeze_parts",
        {"parts": ["language_model", "head"]},
        r"model\.(vision_tower|multi_modal_projector)\..*",
    ),
    (
        "llava",
        "freeze_parts",
        {"parts": ["vision_tower", "projector"]},
        r"model\.language_model\..*|lm_head\.weight",
    ),
    (
        "llava",
        "train_parts",
        {"parts": ["projector", "language_model", "head"]},
        r"model\.(multi_modal_projector|language_model)\..*|lm_head\.weight",
    ),
    (
        "llava",
        "top_n",
        {"n": 1, "stack": "vision_tower"},
        r"model\.vision_tower\.(encoder\.layers\.2\..*|post_layernorm\..*)"
        r"|model\.language_model\.norm\.weight|lm_head\.weight",
    ),
    (
        "llava",
        "lisa",
        {"k": 2, "stack": "language_model"},
        r"model\.language_model\..*|lm_head\.weight",
    ),
]


@pytest.mark.parametrize(
    "case_id,policy,options,pattern",
    EXPECTED,
    ids=[f"{c}-{p}-{i}" for i, (c, p, _, _) in enumerate(EXPECTED)],
)
def test_policy_trains_exactly_the_hand_written_set(case_id, policy, options, pattern, models):
    model = models[case_id]
    names = [n for n, _ in model.named_parameters()]
    got = get_policy(policy, **options).apply(model)
    assert got == {n for n in names if re.fullmatch(pattern, n)}
    assert trainable_names(model) == got


ERRORS = [
    (
        "t5",
        "bottom_n",
        {"n": 1},
        r"^bottom_n: T5ForConditionalGeneration has 2 stacks of blocks \(encoder: 2 blocks "
        r"\(encoder\.block\.0 \.\. 1\), feeds decoder; "
        r"decoder: 3 blocks \(decoder\.block\.0 \.\. 2\)\); "
        r"pass stack= one of encoder, decoder$",
    ),
    (
        "llava",
        "gradual_unfreeze",
        {},
        r"^gradual_unfreeze: LlavaForConditionalGeneration has 2 stacks"
        r" .*pass stack= one of vision_tower, language_model$",
    ),
    ("clip", "lisa", {"k": 1}, r"pass stack= one of vision_model, text_model$"),
    (
        "t5",
        "top_n",
        {"n": 1, "stack": "vision"},
        r"^top_n: stack='vision' is not a stack of T5ForConditionalGeneration; "
        r"its stacks: encoder, decoder$",
    ),
    (
        "wav2vec2",
        "bottom_n",
        {"n": 1, "stack": "decoder"},
        r"^bottom_n: stack='decoder' is not a stack of Wav2Vec2ForCTC; its stacks: encoder$",
    ),
    (
        "t5",
        "bottom_n",
        {"n": 3, "stack": "encoder"},
        r"^bottom_n: n=3 is out of range for T5ForConditionalGeneration stack 'encoder' with 2 "
        r"blocks \(valid: 0\.\.2\)$",
    ),
    (
        "t5",
        "freeze_parts",
        {"parts": ["encoder"]},
        r"^policy 'freeze_parts' would train shared\.weight but freeze "
        r"encoder\.embed_tokens\.weight, which is the same tensor \(tied weights\); "
        r"pass tied_weights='train'",
    ),
    (
        "t5",
        "train_parts",
        {"parts": ["projector"]},
        r"^train_parts: T5ForConditionalGeneration has no 'projector' \(no parameter there\); its "
        r"parts: embeddings, head, encoder, encoder\.embeddings, encoder\.blocks, encoder\.top",
    ),
    (
        "llava",
        "freeze_parts",
        {"parts": ["vision"]},
        r"^freeze_parts: 'vision' is not a part of LlavaForConditionalGeneration; its parts: "
        r"embeddings, head, projector, feature_encoder, vision_tower, ",
    ),
    (
        "llava",
        "freeze_parts",
        {},
        r"^freeze_parts: LlavaForConditionalGeneration has 2 stacks "
        r"\(vision_tower, language_model\); pass parts=\[\.\.\.\] from: "
        r"embeddings, head, projector",
    ),
    (
        "clip",
        "freeze_parts",
        {"parts": ["feature_encoder"], "policy": {"name": "lisa", "k": 1}},
        r"^lisa: CLIPModel has 2 stacks",
    ),
]


@pytest.mark.parametrize(
    "case_id,policy,options,message",
    ERRORS,
    ids=[f"{c}-{p}-{i}" for i, (c, p, _, _) in enumerate(ERRORS)],
)
def test_ambiguous_or_bad_stack_input_is_one_line_before_touching_the_model(
    case_id, policy, options, message, models
):
    model = models[case_id]
    for param in model.parameters():
        param.requires_grad_(True)
    with pytest.raises(FreezePolicyError, match=message) as error:
        get_policy(policy, **options).apply(model)
    assert "\n" not in str(error.value)
    assert all(p.requires_grad for p in model.parameters())


BAD_OPTIONS = [
    ("freeze_parts", {"parts": []}, r"freeze_parts: parts=\[\] must be a part name or a non-empty"),
    ("train_parts", {"parts": 3}, r"train_parts: parts=3 must be a part name"),
    (
        "freeze_parts",
        {"policy": "bottom_n"},
        r"freeze_parts: policy='bottom_n' must be a mapping "
        r"with a 'name'",
    ),
    (
        "freeze_parts",
        {"policy": {"name": "freeze_parts"}},
        r"policy 'freeze_parts' cannot be nested",
    ),
    (
        "freeze_parts",
        {"policy": {"name": "top_n", "n": 1, "tied_weights": "train"}},
        r"give tied_weights to freeze_parts itself",
    ),
    ("freeze_parts", {"policy": {"name": "top_n"}}, r"policy 'top_n' needs option n"),
    (
        "freeze_parts",
        {"policy": {"name": "top_n", "n": 1, "stak": "x"}},
        r"policy 'top_n' has no option 'stak'; its options: tied_weights, blocks, n, stack",
    ),
]


@pytest.mark.parametrize(
    "name,options,message", BAD_OPTIONS, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BAD_OPTIONS)]
)
def test_bad_preset_options_are_refused_at_construction(name, options, message):
    with pytest.raises(FreezePolicyError, match=message):
        get_policy(name, **options)


def test_composed_schedule_follows_the_inner_policy_and_keeps_the_frozen_parts(models):
    model = models["llava"]
    anat = anatomy(model)
    policy = get_policy(
        "freeze_parts",
        parts=["vision_tower"],
        policy={"name": "gradual_unfreeze", "stack": "language_model", "every": 2, "unit": "steps"},
    )
    assert policy.scheduled and policy.num_stages(anat) == 2 + 2
    assert policy.stage_at(step=5, epoch=0.0) == 2
    vision = {n for n in anat.names() if n.startswith("model.vision_tower.")}
    stages = [policy.trainable_names(anat, stage) for stage in range(4)]
    assert stages[0] == {"model.language_model.norm.weight", "lm_head.weight"}
    assert stages[1] - stages[0] == set(anat.stack("language_model").blocks[1])
    assert stages[3] == set(anat.names()) - vision  # the last stage opens all but the frozen part
    assert all(not (stage & vision) for stage in stages)


def test_single_stack_models_accept_their_own_stack_name_with_the_same_answer():
    case = TEST_CASES[0]
    model = case.build()
    anat = anatomy(model)
    assert anat.stack_names() == ["encoder"] and anat.parts() == anat.groups()
    for name, options in [
        ("bottom_n", {"n": 2}),
        ("top_n", {"n": 1}),
        ("lisa", {"k": 1}),
        ("gradual_unfreeze", {}),
    ]:
        plain = get_policy(name, **options).trainable_names(anat, 1)
        assert get_policy(name, stack="encoder", **options).trainable_names(anat, 1) == plain
    # freeze_parts / train_parts defaults on one stack: the stack frozen, the head trained
    head_only = get_policy("all_but_head").trainable_names(anat)
    assert get_policy("freeze_parts").trainable_names(anat) == head_only
    assert get_policy("train_parts").trainable_names(anat) == head_only


# -- evidence: blocks the hooks never see -----------------------------------------------------


def squeezebert():
    config = AutoConfig.for_model(
        "squeezebert",
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=36,
        vocab_size=99,
        embedding_size=32,
        q_groups=2,
        k_groups=2,
        v_groups=2,
        post_attention_groups=2,
        intermediate_groups=2,
        output_groups=2,
    )
    config.num_labels = 3
    return transformers.AutoModelForSequenceClassification.from_config(config)


def test_squeezebert_blocks_called_without_hooks_fall_back_to_registration_order():
    model = squeezebert()
    names = [n for n, _ in model.named_parameters()]
    anat = anatomy(model)
    assert not anat.traced
    assert anat.trace == (
        "registration order: the blocks of transformer.encoder.layers were never "
        "entered through their module call during the dummy forward"
    )
    head = {
        "transformer.pooler.dense.weight",
        "transformer.pooler.dense.bias",
        "classifier.weight",
        "classifier.bias",
    }
    assert set(anat.head) == head and anat.shared == []
    assert set(anat.embeddings) == {n for n in names if n.startswith("transformer.embeddings.")}

    norms = {n for n in names if ".layernorm." in n or ".LayerNorm." in n}
    assert get_policy("norm_only").apply(model) == norms | head
    biases = {n for n in names if n.endswith(".bias")}
    assert get_policy("bitfit").apply(model) == biases | head
    assert get_policy("all_but_head").apply(model) == head


class OutOfOrder(nn.Module):
    """Blocks registered 0, 1, 2 but run 0, 2, 1: the forward contradicts the registration."""

    def __init__(self):
        super().__init__()
        self.config = transformers.PretrainedConfig(num_hidden_layers=3, vocab_size=10)
        self.embed = nn.Embedding(10, 4)
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))
        self.out = nn.Linear(4, 2)

    def forward(self, input_ids):
        hidden = self.embed(input_ids)
        for i in (0, 2, 1):
            hidden = self.layers[i](hidden)
        return self.out(hidden)


def test_blocks_run_out_of_order_are_not_traced():
    anat = anatomy(OutOfOrder())
    assert not anat.traced
    assert anat.trace == (
        "registration order: the blocks of layers were entered [0, 2, 1] through "
        "their module call during the dummy forward"
    )
    assert anat.embeddings == ["embed.weight"] and anat.head == ["out.weight", "out.bias"]


class TwoTowers(nn.Module):
    """Two stacks whose forward the dummy input cannot run: refused, never guessed."""

    def __init__(self):
        super().__init__()
        self.config = transformers.PretrainedConfig(num_hidden_layers=2, num_layers=3)
        self.left = nn.ModuleList(nn.Linear(4, 4) for _ in range(2))
        self.right = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))

    def forward(self, something_else):
        return something_else


def test_several_stacks_without_a_trace_are_refused():
    with pytest.raises(
        FreezePolicyError,
        match=r"^TwoTowers has 2 stacks of blocks \(left \(2 "
        r"blocks\), right \(3 blocks\)\) but its forward could not be traced on a "
        r"dummy input \(registration order: the dummy forward failed .*\); stacks "
        r"are not guessed\. Pass blocks=\[module names, bottom first\]",
    ):
        anatomy(TwoTowers())
    anat = anatomy(TwoTowers(), blocks=["left.0", "left.1", "right.0"])
    assert anat.depth == 3 and anat.stack_names() == ["blocks"]


def test_clip_with_towers_of_different_depth_probes_only_the_head(models):
    """ViT-L/14-like shape (vision deeper than text): the linear probe trains no tower block."""
    model = models["clip"]
    got = get_policy("all_but_head").apply(model)
    total = sum(p.numel() for p in model.parameters())
    trained = sum(p.numel() for n, p in model.named_parameters() if n in got)
    assert not any(".encoder.layers." in n or ".embeddings." in n for n in got)
    assert trained / total < 0.1


def test_summary_shows_the_stacks_and_counts_each_part(models):
    model = models["whisper"]
    get_policy("freeze_parts", parts=["encoder"]).apply(model)
    summary = summarize(model)
    rows = {row.group: row for row in summary.rows}
    assert rows["encoder.block.1"].trainable == 0
    assert rows["decoder.block.2"].trainable == rows["decoder.block.2"].total > 0
    assert summary.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert summary.total == sum(p.numel() for p in model.parameters())
    text = str(summary)
    assert text.splitlines()[:2] == [
        "stack encoder: 2 blocks (model.encoder.layers.0 .. 1), feature encoder of 4 tensors, "
        "feeds decoder",
        "stack decoder: 3 blocks (model.decoder.layers.0 .. 2)",
    ]
    assert summary.as_dict()["stacks"] == {"encoder": 2, "decoder": 3}


def test_anatomy_of_a_stacked_model_leaves_mode_and_weights_alone(models):
    model = models["llava"]
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    anatomy(model)
    assert model.training
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
