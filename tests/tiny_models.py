"""The table of tiny architectures every parametrized test uses, with a hand-written oracle.

Each case builds a random model from a config (no download, milliseconds) and says, by name
patterns written independently of the discovery code, where its blocks, embeddings and shared
parameters are; everything else is head.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoConfig  # noqa: E402

DEPTH = 3
TINY = dict(
    hidden_size=32, num_hidden_layers=DEPTH, num_attention_heads=2, intermediate_size=37,
    vocab_size=99,
)
DECODER = dict(TINY, num_key_value_heads=1, pad_token_id=0, bos_token_id=1, eos_token_id=2)
NORM_NAME = re.compile(r"(norm|ln_)", re.IGNORECASE)


@dataclass(frozen=True)
class Case:
    id: str
    model_type: str
    auto_class: str
    config: dict
    block_pattern: str  # regex with one group: the block index
    embeddings: tuple[str, ...]  # name prefixes
    shared: tuple[str, ...] = ()
    tied: bool = False
    extra: dict = field(default_factory=dict)

    def build(self):
        config = AutoConfig.for_model(self.model_type, **self.config)
        if self.auto_class == "AutoModelForSequenceClassification":
            config.num_labels = 3
        return getattr(transformers, self.auto_class).from_config(config)

    def expected_groups(self, names: list[str]) -> dict[str, set[str]]:
        groups = {"embeddings": set(), "shared": set(), "head": set()}
        groups.update({f"block.{i}": set() for i in range(DEPTH)})
        for name in names:
            match = re.match(self.block_pattern, name)
            if match:
                groups[f"block.{int(match.group(1))}"].add(name)
            elif name.startswith(self.embeddings):
                groups["embeddings"].add(name)
            elif name in self.shared:
                groups["shared"].add(name)
            else:
                groups["head"].add(name)
        return groups


CLS, LM = "AutoModelForSequenceClassification", "AutoModelForCausalLM"
GPT2 = dict(n_embd=32, n_layer=DEPTH, n_head=2, vocab_size=99, bos_token_id=1, eos_token_id=2,
            pad_token_id=0)
TEST_CASES = [
    Case("bert-cls", "bert", CLS, TINY, r"bert\.encoder\.layer\.(\d+)\.", ("bert.embeddings.",)),
    Case("roberta-cls", "roberta", CLS, dict(TINY, pad_token_id=1),
         r"roberta\.encoder\.layer\.(\d+)\.", ("roberta.embeddings.",)),
    Case("distilbert-cls", "distilbert", CLS,
         dict(dim=32, n_layers=DEPTH, n_heads=2, hidden_dim=37, vocab_size=99),
         r"distilbert\.transformer\.layer\.(\d+)\.", ("distilbert.embeddings.",)),
    Case("electra-cls", "electra", CLS, dict(TINY, embedding_size=16),
         r"electra\.encoder\.layer\.(\d+)\.",
         ("electra.embeddings.", "electra.embeddings_project.")),
    Case("deberta-v2-cls", "deberta-v2", CLS,
         dict(TINY, relative_attention=True, position_buckets=8, max_relative_positions=16),
         r"deberta\.encoder\.layer\.(\d+)\.", ("deberta.embeddings.",),
         shared=("deberta.encoder.rel_embeddings.weight",)),
    Case("mpnet-cls", "mpnet", CLS, TINY, r"mpnet\.encoder\.layer\.(\d+)\.", ("mpnet.embeddings.",),
         shared=("mpnet.encoder.relative_attention_bias.weight",)),
    Case("gpt2-cls", "gpt2", CLS, GPT2, r"transformer\.h\.(\d+)\.",
         ("transformer.wte.", "transformer.wpe.")),
    Case("gpt2-lm", "gpt2", LM, GPT2, r"transformer\.h\.(\d+)\.",
         ("transformer.wte.", "transformer.wpe."), tied=True),
    Case("llama-lm", "llama", LM, DECODER, r"model\.layers\.(\d+)\.", ("model.embed_tokens.",)),
    Case("llama-cls", "llama", CLS, DECODER, r"model\.layers\.(\d+)\.", ("model.embed_tokens.",)),
    Case("qwen2-lm", "qwen2", LM, DECODER, r"model\.layers\.(\d+)\.", ("model.embed_tokens.",)),
    Case("mistral-cls", "mistral", CLS, DECODER, r"model\.layers\.(\d+)\.",
         ("model.embed_tokens.",)),
    Case("gemma-lm", "gemma", LM, dict(DECODER, head_dim=16), r"model\.layers\.(\d+)\.",
         ("model.embed_tokens.",), tied=True),
    Case("vit-img", "vit", "AutoModelForImageClassification",
         dict(TINY, image_size=8, patch_size=4, num_labels=3),
         r"vit\.(?:encoder\.layer|layers)\.(\d+)\.", ("vit.embeddings.",)),
]
CASE_IDS = [case.id for case in TEST_CASES]


# -- several stacks of blocks: encoder-decoder, speech, dual encoders, vision-language ----------

ENCODER_DEPTH, DECODER_DEPTH = 2, 3  # different on purpose: no stack may borrow another's depth
TEXT_TOWER = dict(hidden_size=32, num_hidden_layers=ENCODER_DEPTH, num_attention_heads=2,
                  intermediate_size=37, vocab_size=99, max_position_embeddings=16)
VISION_TOWER = dict(hidden_size=32, num_hidden_layers=DECODER_DEPTH, num_attention_heads=2,
                    intermediate_size=37, image_size=8, patch_size=4)
SPECIAL = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
SEQ2SEQ = dict(SPECIAL, d_model=32, encoder_layers=ENCODER_DEPTH, decoder_layers=DECODER_DEPTH,
               encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=37,
               decoder_ffn_dim=37, vocab_size=99)


@dataclass(frozen=True)
class StackCase:
    """A model with its stacks and parts written by hand.

    ``stacks``: stack name -> regex whose group is the block index, in forward order.
    ``parts``: part name -> parameter name prefixes; every other parameter is ``head``.
    ``tied``: alias -> listed name. ``feeds``: stack -> the stacks its output reaches.
    ``features``: prefixes of the convolutional feature encoder.
    """

    id: str
    model_type: str
    auto_class: str
    config: dict
    stacks: dict[str, str]
    depths: dict[str, int]
    parts: dict[str, tuple[str, ...]]
    tied: dict[str, str] = field(default_factory=dict)
    feeds: dict[str, tuple[str, ...]] = field(default_factory=dict)
    features: tuple[str, ...] = ()
    presets: dict[str, tuple[str, ...]] = field(default_factory=dict)
    traced: bool = True

    def build(self):
        config = AutoConfig.for_model(self.model_type, **self.config)
        return getattr(transformers, self.auto_class).from_config(config)

    def expected_parts(self, names: list[str]) -> dict[str, set[str]]:
        """Part -> names, keyed as ``Anatomy.parts()`` (no stack prefix with a single stack)."""
        groups: dict[str, set[str]] = {}
        for name in names:
            for stack, pattern in self.stacks.items():
                match = re.match(pattern, name)
                if match:
                    prefix = f"{stack}." if len(self.stacks) > 1 else ""
                    # a pattern whose group takes no part names the stack's last block
                    index = self.depths[stack] - 1 if match.group(1) is None else match.group(1)
                    groups.setdefault(f"{prefix}block.{int(index)}", set()).add(name)
                    break
            else:
                part = next((p for p, prefixes in self.parts.items()
                             if name.startswith(prefixes)), "head")
                groups.setdefault(part, set()).add(name)
        return groups


STACK_CASES = [
    StackCase(
        "t5", "t5", "AutoModelForSeq2SeqLM",
        dict(d_model=32, d_ff=37, num_layers=ENCODER_DEPTH, num_decoder_layers=DECODER_DEPTH,
             num_heads=2, d_kv=16, vocab_size=99, decoder_start_token_id=0),
        stacks={"encoder": r"encoder\.block\.(\d+)\.", "decoder": r"decoder\.block\.(\d+)\."},
        depths={"encoder": ENCODER_DEPTH, "decoder": DECODER_DEPTH},
        parts={"embeddings": ("shared.",), "encoder.top": ("encoder.final_layer_norm.",),
               "decoder.top": ("decoder.final_layer_norm.",)},
        tied={"encoder.embed_tokens.weight": "shared.weight",
              "decoder.embed_tokens.weight": "shared.weight", "lm_head.weight": "shared.weight"},
        feeds={"encoder": ("decoder",)},
    ),
    StackCase(
        "bart", "bart", "AutoModelForSeq2SeqLM",
        dict(SEQ2SEQ, max_position_embeddings=64, decoder_start_token_id=2),
        stacks={"encoder": r"model\.encoder\.layers\.(\d+)\.",
                "decoder": r"model\.decoder\.layers\.(\d+)\."},
        depths={"encoder": ENCODER_DEPTH, "decoder": DECODER_DEPTH},
        parts={"embeddings": ("model.shared.",),
               "encoder.embeddings": ("model.encoder.embed_positions.",
                                      "model.encoder.layernorm_embedding."),
               "decoder.embeddings": ("model.decoder.embed_positions.",
                                      "model.decoder.layernorm_embedding.")},
        tied={"model.encoder.embed_tokens.weight": "model.shared.weight",
              "model.decoder.embed_tokens.weight": "model.shared.weight",
              "lm_head.weight": "model.shared.weight"},
        feeds={"encoder": ("decoder",)},
    ),
    StackCase(
        "whisper", "whisper", "AutoModelForSpeechSeq2Seq",
        dict(SEQ2SEQ, num_mel_bins=8, max_source_positions=16, max_target_positions=32,
             decoder_start_token_id=1),
        stacks={"encoder": r"model\.encoder\.layers\.(\d+)\.",
                "decoder": r"model\.decoder\.layers\.(\d+)\."},
        depths={"encoder": ENCODER_DEPTH, "decoder": DECODER_DEPTH},
        parts={"encoder.embeddings": ("model.encoder.conv", "model.encoder.embed_positions."),
               "encoder.top": ("model.encoder.layer_norm.",),
               "decoder.embeddings": ("model.decoder.embed_tokens.",
                                      "model.decoder.embed_positions."),
               "decoder.top": ("model.decoder.layer_norm.",)},
        tied={"proj_out.weight": "model.decoder.embed_tokens.weight"},
        feeds={"encoder": ("decoder",)},
        features=("model.encoder.conv1.", "model.encoder.conv2."),
    ),
    StackCase(
        "wav2vec2", "wav2vec2", "AutoModelForCTC",
        dict(hidden_size=32, num_hidden_layers=DECODER_DEPTH, num_attention_heads=2,
             intermediate_size=37, vocab_size=99, conv_dim=(16, 16), conv_stride=(2, 2),
             conv_kernel=(3, 3), num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2),
        stacks={"encoder": r"wav2vec2\.encoder\.layers\.(\d+)\."},
        depths={"encoder": DECODER_DEPTH},
        parts={"embeddings": ("wav2vec2.masked_spec_embed", "wav2vec2.feature_extractor.",
                              "wav2vec2.feature_projection.", "wav2vec2.encoder.pos_conv_embed.",
                              "wav2vec2.encoder.layer_norm.")},
        features=("wav2vec2.feature_extractor.",),
    ),
    StackCase(
        "clip", "clip", "AutoModel",
        dict(text_config=TEXT_TOWER, vision_config=VISION_TOWER, projection_dim=16),
        stacks={"vision_model": r"vision_model\.encoder\.layers\.(\d+)\.",
                "text_model": r"text_model\.encoder\.layers\.(\d+)\."},
        depths={"vision_model": DECODER_DEPTH, "text_model": ENCODER_DEPTH},
        parts={"vision_model.embeddings": ("vision_model.embeddings.",
                                           "vision_model.pre_layrnorm."),
               "vision_model.top": ("vision_model.post_layernorm.",),
               "text_model.embeddings": ("text_model.embeddings.",),
               "text_model.top": ("text_model.final_layer_norm.",)},
        features=("vision_model.embeddings.patch_embedding.",),
    ),
    StackCase(
        "siglip", "siglip", "AutoModel",
        dict(text_config=TEXT_TOWER, vision_config=VISION_TOWER),
        stacks={"vision_model": r"vision_model\.encoder\.layers\.(\d+)\.",
                "text_model": r"text_model\.encoder\.layers\.(\d+)\."},
        depths={"vision_model": DECODER_DEPTH, "text_model": ENCODER_DEPTH},
        parts={"vision_model.embeddings": ("vision_model.embeddings.",),
               "vision_model.top": ("vision_model.post_layernorm.", "vision_model.head."),
               "text_model.embeddings": ("text_model.embeddings.",),
               "text_model.top": ("text_model.final_layer_norm.", "text_model.head.")},
        features=("vision_model.embeddings.patch_embedding.",),
    ),
    StackCase(
        "llava", "llava", "AutoModelForImageTextToText",
        dict(text_config=dict(DECODER, model_type="llama", num_hidden_layers=ENCODER_DEPTH),
             vision_config=dict(VISION_TOWER, model_type="clip_vision_model"),
             image_token_index=98, vision_feature_layer=-2),
        stacks={"vision_tower": r"model\.vision_tower\.encoder\.layers\.(\d+)\.",
                "language_model": r"model\.language_model\.layers\.(\d+)\."},
        depths={"vision_tower": DECODER_DEPTH, "language_model": ENCODER_DEPTH},
        parts={"vision_tower.embeddings": ("model.vision_tower.embeddings.",
                                           "model.vision_tower.pre_layrnorm."),
               "vision_tower.top": ("model.vision_tower.post_layernorm.",),
               "projector": ("model.multi_modal_projector.",),
               "language_model.embeddings": ("model.language_model.embed_tokens.",),
               "language_model.top": ("model.language_model.norm.",)},
        feeds={"vision_tower": ("language_model",)},
        features=("model.vision_tower.embeddings.patch_embedding.",),
    ),
]
STACK_CASE_IDS = [case.id for case in STACK_CASES]


# -- the families people fine-tune now: vision-language, speech, mixture of experts -------------
# Each written from the model's module tree by hand. ``traced=False``: the dummy forward cannot run
# (the model needs image grids, image sizes, pixel masks or tiles), so the anatomy comes from
# transformers' metadata (freeze_policies.structure.metadata).

LLM = dict(DECODER, num_hidden_layers=ENCODER_DEPTH, intermediate_size=40)
MOE = dict(LLM, intermediate_size=32, moe_intermediate_size=16, num_experts_per_tok=2)  # x8: CPU
VISION = dict(VISION_TOWER, intermediate_size=40)
MROPE = {"rope_type": "default", "mrope_section": [2, 2, 4]}
QWEN_VISION = dict(depth=DECODER_DEPTH, hidden_size=32, num_heads=2, patch_size=4,
                   spatial_merge_size=2, temporal_patch_size=2, in_channels=3)
QWEN_TOKENS = dict(image_token_id=98, video_token_id=97, vision_start_token_id=96)
VLM = "AutoModelForImageTextToText"
LM_PARTS = {"language_model.embeddings": ("model.language_model.embed_tokens.",),
            "language_model.top": ("model.language_model.norm.",)}
LM_PRESETS = {"language_model": ("model.language_model.",),
              "head": ("lm_head.", "model.language_model.norm.")}
LM_STACK = r"model\.language_model\.layers\.(\d+)\."


def _qwen_vl(case_id, model_type, vision):
    return StackCase(
        case_id, model_type, VLM,
        dict(text_config=dict(LLM, model_type=f"{model_type}_text", rope_parameters=MROPE),
             vision_config=vision, **QWEN_TOKENS),
        stacks={"visual": r"model\.visual\.blocks\.(\d+)\.", "language_model": LM_STACK},
        depths={"visual": DECODER_DEPTH, "language_model": ENCODER_DEPTH},
        parts={"visual.embeddings": ("model.visual.patch_embed.",),
               "visual.top": ("model.visual.merger.",), **LM_PARTS},
        feeds={"visual": ("language_model",)},
        features=("model.visual.patch_embed.",),
        presets={"vision_tower": ("model.visual.patch_embed.", "model.visual.blocks."),
                 "projector": ("model.visual.merger.",), **LM_PRESETS},
        traced=False,
    )


FAMILY_CASES = [
    _qwen_vl("qwen2-vl", "qwen2_vl", dict(QWEN_VISION, embed_dim=32, mlp_ratio=2)),
    _qwen_vl("qwen2.5-vl", "qwen2_5_vl",
             dict(QWEN_VISION, out_hidden_size=32, intermediate_size=40,
                  fullatt_block_indexes=[2], window_size=16)),
    StackCase(
        "llava-next", "llava_next", VLM,
        dict(text_config=dict(LLM, model_type="llama"),
             vision_config=dict(VISION, model_type="clip_vision_model"),
             image_token_index=98, vision_feature_layer=-2, image_grid_pinpoints=[[8, 8]]),
        stacks={"vision_tower": r"model\.vision_tower\.encoder\.layers\.(\d+)\.",
                "language_model": LM_STACK},
        depths={"vision_tower": DECODER_DEPTH, "language_model": ENCODER_DEPTH},
        parts={"vision_tower.embeddings": ("model.vision_tower.embeddings.",
                                           "model.vision_tower.pre_layrnorm."),
               "vision_tower.top": ("model.vision_tower.post_layernorm.",),
               "projector": ("model.multi_modal_projector.", "model.image_newline"),
               **LM_PARTS},
        feeds={"vision_tower": ("language_model",)},
        features=("model.vision_tower.embeddings.patch_embedding.",),
        presets={"vision_tower": ("model.vision_tower.",),
                 "projector": ("model.multi_modal_projector.", "model.image_newline"),
                 **LM_PRESETS},
        traced=False,
    ),
    StackCase(
        "idefics3", "idefics3", VLM,
        dict(text_config=dict(LLM, model_type="llama"), vision_config=VISION,
             image_token_id=98, scale_factor=2),
        stacks={"vision_model": r"model\.vision_model\.encoder\.layers\.(\d+)\.",
                "text_model": r"model\.text_model\.layers\.(\d+)\."},
        depths={"vision_model": DECODER_DEPTH, "text_model": ENCODER_DEPTH},
        parts={"vision_model.embeddings": ("model.vision_model.embeddings.",),
               "vision_model.top": ("model.vision_model.post_layernorm.",),
               "projector": ("model.connector.",),
               "text_model.embeddings": ("model.text_model.embed_tokens.",),
               "text_model.top": ("model.text_model.norm.",)},
        feeds={"vision_model": ("text_model",)},
        features=("model.vision_model.embeddings.patch_embedding.",),
        presets={"vision_tower": ("model.vision_model.",), "projector": ("model.connector.",),
                 "language_model": ("model.text_model.",),
                 "head": ("lm_head.", "model.text_model.norm.")},
        traced=False,
    ),
    StackCase(
        "gemma3", "gemma3", VLM,
        dict(text_config=dict(LLM, head_dim=16, model_type="gemma3_text", sliding_window=4),
             vision_config=dict(VISION, model_type="siglip_vision_model", vision_use_head=False),
             mm_tokens_per_image=4, image_token_index=98, boi_token_index=97,
             eoi_token_index=96),
        stacks={"vision_tower": r"model\.vision_tower\.encoder\.layers\.(\d+)\.",
                "language_model": LM_STACK},
        depths={"vision_tower": DECODER_DEPTH, "language_model": ENCODER_DEPTH},
        parts={"vision_tower.embeddings": ("model.vision_tower.embeddings.",),
               "vision_tower.top": ("model.vision_tower.post_layernorm.",),
               "projector": ("model.multi_modal_projector.",), **LM_PARTS},
        tied={"lm_head.weight": "model.language_model.embed_tokens.weight"},
        feeds={"vision_tower": ("language_model",)},
        features=("model.vision_tower.embeddings.patch_embedding.",),
        presets={"vision_tower": ("model.vision_tower.",),
                 "projector": ("model.multi_modal_projector.",),
                 "language_model": ("model.language_model.",),
                 "head": ("model.language_model.norm.",)},  # lm_head is tied: listed as embed
    ),
    StackCase(
        "mllama", "mllama", VLM,
        dict(text_config=dict(LLM, model_type="mllama_text_model", num_hidden_layers=3,
                              cross_attention_layers=[1]),
             vision_config=dict(hidden_size=32, num_hidden_layers=3, num_global_layers=1,
                                attention_heads=2, intermediate_size=40, image_size=8,
                                patch_size=4, max_num_tiles=1, intermediate_layers_indices=[0],
                                vision_output_dim=64, supported_aspect_ratios=[[1, 1]]),
             image_token_index=98),
        # One vision stack: the local transformer's 3 layers, then the global transformer's.
        stacks={"vision_model": r"model\.vision_model\.(?:transformer\.layers\.(\d+)\.|"
                                r"global_transformer\.layers\.0\.)",
                "language_model": LM_STACK},
        depths={"vision_model": 4, "language_model": 3},
        # layernorm_post runs between the two transformers but is registered before them:
        # without a trace it is placed by registration order, with the embeddings.
        parts={"vision_model.embeddings": ("model.vision_model.",),
               "projector": ("model.multi_modal_projector.",), **LM_PARTS},
        feeds={"vision_model": ("language_model",)},
        features=("model.vision_model.patch_embedding.",),
        presets={"vision_tower": ("model.vision_model.",),
                 "projector": ("model.multi_modal_projector.",), **LM_PRESETS},
        traced=False,
    ),
    StackCase(
        "speech2text", "speech_to_text", "AutoModelForSpeechSeq2Seq",
        dict(SEQ2SEQ, encoder_ffn_dim=40, decoder_ffn_dim=40, input_feat_per_channel=8,
             input_channels=1, conv_channels=16, conv_kernel_sizes=[5, 5],
             max_source_positions=64, max_target_positions=32, decoder_start_token_id=2),
        stacks={"encoder": r"model\.encoder\.layers\.(\d+)\.",
                "decoder": r"model\.decoder\.layers\.(\d+)\."},
        depths={"encoder": ENCODER_DEPTH, "decoder": DECODER_DEPTH},
        parts={"encoder.embeddings": ("model.encoder.conv.",),
               "encoder.top": ("model.encoder.layer_norm.",),
               "decoder.embeddings": ("model.decoder.embed_tokens.",),
               "decoder.top": ("model.decoder.layer_norm.",)},
        tied={"lm_head.weight": "model.decoder.embed_tokens.weight"},
        feeds={"encoder": ("decoder",)},
        features=("model.encoder.conv.",),
    ),
    *(
        StackCase(
            case_id, model_type, "AutoModelForCausalLM", dict(MOE, **experts),
            stacks={"model": r"model\.layers\.(\d+)\."}, depths={"model": ENCODER_DEPTH},
            parts={"embeddings": ("model.embed_tokens.",)},
        )
        for case_id, model_type, experts in (
            ("mixtral", "mixtral", dict(num_local_experts=4, intermediate_size=40)),
            ("qwen3-moe", "qwen3_moe", dict(num_experts=4, head_dim=16)),
            ("olmoe", "olmoe", dict(num_experts=4)),
            ("qwen2-moe", "qwen2_moe", dict(num_experts=4, shared_expert_intermediate_size=16)),
        )
    ),
]
FAMILY_CASE_IDS = [case.id for case in FAMILY_CASES]


def expected_block_parts(names: list[str], block_patterns: list[str]) -> dict[str, set[str]]:
    """The parts inside blocks, by the names these families give them (written by hand; BERT's
    ``output.dense`` is the second MLP layer, its ``attention.output.dense`` the attention's)."""
    out: dict[str, set[str]] = {}
    for name in names:
        match = next((re.match(p, name) for p in block_patterns if re.match(p, name)), None)
        if match is None:
            continue
        inside = name[match.end():].split(".")
        modules = inside[:-1]
        if not modules:  # a gate registered on the block itself (Mllama): no role
            continue
        if "norm" in modules[-1].lower() or modules[-1].startswith("ln_"):
            role = "norms"
        elif modules[0] in ("self_attn", "attn", "encoder_attn", "cross_attn", "attention"):
            role = "attention"
        else:
            assert modules[0] in ("mlp", "fc1", "fc2", "intermediate", "output", "ffn"), name
            role = "mlp"
            if len(modules) > 1 and modules[1] == "experts":
                out.setdefault("experts", set()).add(name)
            elif len(modules) > 1 and modules[1] == "gate":
                out.setdefault("router", set()).add(name)
            elif len(modules) > 1 and modules[1].startswith("shared_expert"):
                out.setdefault("shared_experts", set()).add(name)
        out.setdefault(role, set()).add(name)
    return out


def _ids(g, n, length, image_token=None, count=0):
    x = torch.randint(3, 90, (n, length), generator=g)
    if count:
        x = torch.cat([x[:, :1], torch.full((n, count), image_token), x[:, 1:]], 1)
    return x
def family_batch(case_id: str, model, n: int = 2, seed: int = 0) -> dict:
    """A batch of ``n`` tiny inputs of the shape each family's forward takes, with labels:
    images with their grid sizes (Qwen2-VL), image sizes (LLaVA-NeXT), tiles and aspect ratios
    (Mllama), filter-bank features (Speech2Text), image placeholders as many as the image gives
    rows."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    if case_id in ("qwen2-vl", "qwen2.5-vl"):
        v = cfg.vision_config
        grid = torch.tensor([[1, 2, 2]] * n)  # t, h, w patches per image
        patch = v.in_channels * v.temporal_patch_size * v.patch_size ** 2
        pv = torch.randn((int(grid.prod(-1).sum()), patch), generator=g)
        count = 4 // v.spatial_merge_size ** 2  # 2 x 2 patches merged 2 x 2: one token
        x = _ids(g, n, 6, cfg.image_token_id, count)
        return dict(input_ids=x, pixel_values=pv, image_grid_thw=grid, labels=x,
                    mm_token_type_ids=(x == cfg.image_token_id).long())
    if case_id == "llava-next":
        size = cfg.vision_config.image_size
        pv = torch.randn((n, 2, 3, size, size), generator=g)  # the base image and one tile
        sizes = torch.tensor([[size, size]] * n)
        with torch.no_grad():
            features = model.model.get_image_features(pixel_values=pv, image_sizes=sizes)
        features = getattr(features, "pooler_output", features)
        x = _ids(g, n, 6, cfg.image_token_index, features[0].shape[0])
        return dict(input_ids=x, pixel_values=pv, image_sizes=sizes, labels=x)
    if case_id == "idefics3":
        size = cfg.vision_config.image_size
        pv = torch.randn((n, 1, 3, size, size), generator=g)
        k = (size // cfg.vision_config.patch_size) ** 2 // cfg.scale_factor ** 2
        x = _ids(g, n, 6, cfg.image_token_id, k)
        return dict(input_ids=x, pixel_values=pv, labels=x)
    if case_id == "gemma3":
        size = cfg.vision_config.image_size
        pv = torch.randn((n, 3, size, size), generator=g)
        k = cfg.mm_tokens_per_image
        x = _ids(g, n, 6, cfg.image_token_index, k)
        return dict(input_ids=x, pixel_values=pv, labels=x,
                    token_type_ids=(x == cfg.image_token_index).long())
    if case_id == "mllama":
        v = cfg.vision_config
        pv = torch.randn((n, 1, 1, 3, v.image_size, v.image_size), generator=g)
        x = _ids(g, n, 6, cfg.image_token_index, 1)
        ones = dict(dtype=torch.long)
        return dict(input_ids=x, pixel_values=pv, aspect_ratio_ids=torch.ones((n, 1), **ones),
                    aspect_ratio_mask=torch.ones((n, 1, 1), **ones),
                    cross_attention_mask=torch.ones((n, x.shape[1], 1, 1), **ones), labels=x)
    if case_id == "speech2text":
        feats = torch.randn((n, 16, cfg.input_feat_per_channel * cfg.input_channels), generator=g)
        return dict(input_features=feats, labels=_ids(g, n, 5))
    x = _ids(g, n, 8)
    return dict(input_ids=x, labels=x)
