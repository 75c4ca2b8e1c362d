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
                    groups.setdefault(f"{prefix}block.{int(match.group(1))}", set()).add(name)
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
