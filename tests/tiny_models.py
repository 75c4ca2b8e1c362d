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
