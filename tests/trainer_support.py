"""Shared pieces of the trainer, optimizer and callback tests: tiny models, data, recorders
(a helper module, not a test file; its table is checked by test_trainer.py).

TEST_CASES is the one table of architectures every parametrized test uses: tiny BERT
(sequence classification), Llama (causal LM) and GPT-2 (sequence classification) built from
``AutoConfig.for_model`` in milliseconds, no download.
"""

from __future__ import annotations

import os

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    TrainerCallback,
    TrainingArguments,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VOCAB = 99
SEQ_LEN = 12
TEST_CASES = {
    "bert": (
        AutoModelForSequenceClassification,
        dict(
            model_type="bert", hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
            intermediate_size=37, vocab_size=VOCAB, max_position_embeddings=64, num_labels=3,
        ),
    ),
    "llama": (
        AutoModelForCausalLM,
        dict(
            model_type="llama", hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
            num_key_value_heads=2, intermediate_size=37, vocab_size=VOCAB,
            max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        ),
    ),
    "gpt2": (
        AutoModelForSequenceClassification,
        dict(
            model_type="gpt2", n_embd=32, n_layer=3, n_head=2, vocab_size=VOCAB, n_positions=64,
            num_labels=3, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        ),
    ),
}
ARCHS = list(TEST_CASES)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread, and do not slow down on a busy machine (OpenMP
    threads spin while they wait for a core). Import this fixture into a test module to use it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(arch: str, layers: int = 3, seed: int = 0):
    cls, options = TEST_CASES[arch]
    options = dict(options)
    model_type = options.pop("model_type")
    depth_key = "n_layer" if model_type == "gpt2" else "num_hidden_layers"
    options[depth_key] = layers
    config = AutoConfig.for_model(model_type, **options)
    torch.manual_seed(seed)
    return cls.from_config(config)


class RandomTokens(torch.utils.data.Dataset):
    """``n`` rows of random token ids (3..VOCAB-1); labels are classes or the ids (causal LM)."""

    def __init__(self, arch: str, n: int = 32, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(3, VOCAB, (n, SEQ_LEN), generator=generator)
        self.classes = torch.randint(0, 3, (n,), generator=generator)
        self.causal = TEST_CASES[arch][0] is AutoModelForCausalLM

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        labels = self.ids[i] if self.causal else self.classes[i]
        return {"input_ids": self.ids[i], "labels": labels}


def make_args(tmp_path, **overrides) -> TrainingArguments:
    options = dict(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        weight_decay=0.1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=100,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    options.update(overrides)
    return TrainingArguments(**options)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def changed(before: dict, after: dict, names) -> list[str]:
    return [n for n in names if not torch.equal(before[n], after[n])]


def is_no_decay_name(name: str, anat) -> bool:
    """Bias or normalisation weight (the rule ``Trainer`` uses, plus the anatomy's norms)."""
    lowered = name.lower()
    return "bias" in lowered or "norm" in lowered or "ln_" in lowered or name in anat.norms


class Recorder(TrainerCallback):
    """Records, per optimizer step: names with a gradient, names with optimizer state, the lr of
    each named group; and after each step a snapshot of the parameters (``states=True``: of the
    optimizer state too)."""

    def __init__(self, states: bool = False):
        self.states = states
        self.grad_names: list[set[str]] = []
        self.state_names: list[set[str]] = []
        self.lrs: list[dict[str, float]] = []
        self.snapshots: list[dict[str, torch.Tensor]] = []
        self.optimizer_states: list[dict[str, dict]] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.snapshots.append(snapshot(model))

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        names = {id(p): n for n, p in model.named_parameters()}
        self.grad_names.append({n for n, p in model.named_parameters() if p.grad is not None})
        self.state_names.append({names[id(p)] for p in optimizer.state if optimizer.state[p]})
        groups = optimizer.param_groups
        self.lrs.append({g.get("name", str(i)): g["lr"] for i, g in enumerate(groups)})

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.snapshots.append(snapshot(model))
        if self.states:
            names = {id(p): n for n, p in model.named_parameters()}
            self.optimizer_states.append(
                {
                    names[id(p)]: {k: v.clone() if torch.is_tensor(v) else v for k, v in s.items()}
                    for p, s in optimizer.state.items()
                }
            )
