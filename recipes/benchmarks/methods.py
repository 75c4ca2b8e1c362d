"""What ``recipes/bench.py`` measures: its methods, and how each one's model takes a step.

Every method is a ``recipes.launcher.results.MethodSpec`` (``Method``), the fields a
``results.json`` names its method with, so the report matches bench rows to runs by the same
label and descriptor. The PEFT rows are the baselines of
``recipes.launcher.peft_methods.PEFT_METHODS`` that have ``bench_options``, in the table's order;
the freeze rows are fixed here. Each ``Runner`` owns a deep copy of the base model with the method's
freezing or adapters and its own ``torch.optim.AdamW`` (lr 1e-5, weight decay 0.01) over the
groups ``freeze_policies.training.optim.build_param_groups`` makes, as ``FreezeTrainer`` does. The
freeze modes are the library's (``freeze_policies.training.modes``):

- ``requires_grad``: the frozen parameters are outside autograd and the optimizer;
- ``zero_lr``: every parameter requires grad, the frozen ones sit in lr=0 groups;
- ``zero_grad``: every parameter trains, the frozen ones' gradients are zeroed after backward by
  the library's post-accumulate-grad hooks.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import nn

from freeze_policies import anatomy, get_policy, set_trainable
from freeze_policies.costs.measure import gradient_bytes
from freeze_policies.training.modes import zero_grad_hooks
from freeze_policies.training.optim import build_param_groups
from recipes.benchmarks.harness import LEARNING_RATE, WEIGHT_DECAY, synchronize
from recipes.launcher.peft_methods import PEFT_METHODS, added_tokens, build_peft_model
from recipes.launcher.results import MethodSpec
from recipes.report.aggregate import method_label


@dataclass(frozen=True)
class Method(MethodSpec):
    """One benchmarked method: the fields a ``results.json`` names its method with."""

    @property
    def label(self) -> str:
        return method_label(self)


def freeze(policy: str, freeze_mode: str = "requires_grad", **options) -> Method:
    return Method("freeze", policy, options, freeze_mode)


def peft_method(name: str, **options) -> Method:
    return Method("peft", peft_method=name, peft_options=options)

BOTTOM_4 = freeze("bottom_n", n=4)
METHODS = [
    Method("full"),
    freeze("embeddings"),
    freeze("bottom_n", n=2),
    BOTTOM_4,
    freeze("top_n", n=2),
    freeze("all_but_head"),
    freeze("bitfit"),
    freeze("norm_only"),
    freeze("lisa", k=2),
    *[peft_method(name, **entry.bench_options) for name, entry in PEFT_METHODS.items()
      if entry.bench_options is not None],
    freeze("bottom_n", "zero_lr", n=4),
    freeze("bottom_n", "zero_grad", n=4),
]


class Runner:
    """A method's model, optimizer and step, plus the bytes measured on its first step."""

    def __init__(
        self,
        spec: Method,
        model: nn.Module,
        optimizer,
        frozen: list[nn.Parameter],
        seq_len_priced: int,
    ):
        self.spec = spec
        self.model = model
        self.optimizer = optimizer
        self.frozen = frozen
        self.seq_len_priced = seq_len_priced
        self.gradient_bytes = 0
        self.cuda_step_peak = 0

    @property
    def label(self) -> str:
        return self.spec.label

    def step(self, batch: dict, measure: bool = False) -> None:
        loss = self.model(**batch).loss
        loss.backward()  # zero_grad: the library's hooks zero the frozen gradients here
        if measure:
            self.gradient_bytes = gradient_bytes(self.model)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def timed_step(self, batch: dict, device: torch.device) -> float:
        """Seconds for one step (the first also measures the gradient bytes)."""
        if device.type == "cuda":
            synchronize(device)
            before = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        synchronize(device)
        start = time.perf_counter()
        self.step(batch, measure=not self.gradient_bytes)
        synchronize(device)
        elapsed = time.perf_counter() - start
        if device.type == "cuda":
            increase = torch.cuda.max_memory_allocated(device) - before
            self.cuda_step_peak = max(self.cuda_step_peak, increase)
        return elapsed


def build_runner(spec: Method, base: nn.Module, batch_seq_len: int) -> Runner:
    """Deep-copy ``base`` and set up ``spec``'s freezing or adapters and its optimizer."""
    model = copy.deepcopy(base)
    seq_len_priced = batch_seq_len
    if spec.method == "peft":
        model = build_peft_model(model, "classification", spec.peft_method, spec.peft_options)
        seq_len_priced += added_tokens(spec.peft_method, spec.peft_options)
    params = dict(model.named_parameters())
    if spec.method == "freeze":
        trainable = get_policy(spec.policy, **spec.policy_options).trainable_names(
            anatomy(model), 0
        )
    else:
        trainable = {name for name, param in params.items() if param.requires_grad}
    frozen = [name for name in params if name not in trainable]

    # The freeze modes as the library sets them up (freeze_policies.training.modes and .optim):
    # zero_lr puts the frozen parameters in lr=0 groups, zero_grad zeroes their gradients by hooks.
    mode = spec.freeze_mode or "requires_grad"
    set_trainable(model, trainable if mode == "requires_grad" else list(params))
    in_groups = list(params) if mode == "zero_grad" else trainable
    groups = build_param_groups(model, in_groups, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY,
                                zero_lr_names=frozen if mode == "zero_lr" else ())
    if mode == "zero_grad":
        zero_grad_hooks(model, set(frozen))
    optimizer = torch.optim.AdamW(groups, lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    model.train()
    return Runner(spec, model, optimizer, [params[name] for name in frozen], seq_len_priced)
