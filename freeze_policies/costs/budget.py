"""A budget instead of a guess: the shallowest frozen prefix whose step fits a time or memory goal.

    choice = choose_frozen_depth(model, max_step_ratio=0.5, seq_len=64, batch_size=32)
    print(choice)            # every candidate's predicted cost, the choice marked
    trainer = FreezeTrainer(..., freeze_policy=choice.policy)

Candidates, from shallowest to deepest: full fine-tuning (nothing frozen), then ``bottom_n``
with ``n = 0 .. depth`` (the embeddings and the lowest ``n`` blocks frozen). On a model with
several stacks of blocks (an encoder-decoder such as T5), ``stack=`` names the stack frozen from
the bottom (``bottom_n``'s own option); everything outside it trains. The first candidate
that meets every given target wins, so as little as possible is frozen:

- ``max_step_ratio``: the predicted step time over full fine-tuning's, from the FLOP model
  (``predict_cost``; uncached steps: ``cache_frozen_prefix`` only makes a step cheaper).
- ``max_memory_bytes``: the accounted training memory, parameters + gradients + optimizer
  state (``predict_cost``'s exact counts, AdamW's 2 state tensors by default). Saved activations
  are left out of the target (they depend on the batch, not on the depth alone);
  ``freeze_policies.costs.measure.saved_for_backward_bytes`` counts them on a real batch.

``calibrate`` (a batch of inputs, and ``calibration_steps``) measures the chosen candidate and
full fine-tuning side by side on that batch (forward + backward, interleaved, median of the
rounds; no weight changes) and, while the measured ratio misses ``max_step_ratio``, moves one
block deeper. The predicted and measured figures are in ``BudgetChoice.rows``. A budget no
candidate meets is a one-line ``FreezePolicyError``, and so is a bad argument: ``check_budget``
checks them without a model (the launcher calls it while parsing its flags), and ``names=`` makes
every message name the caller's own flags.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from freeze_policies.costs.flops import ADAMW_STATE_SLOTS, format_bytes, predict_cost
from freeze_policies.errors import FreezePolicyError
from freeze_policies.policies.named import Policy
from freeze_policies.policies.registry import get_policy
from freeze_policies.structure.discover import Anatomy, anatomy


@dataclass
class BudgetChoice:
    """The chosen policy (None: full fine-tuning fits) and every candidate's figures."""

    policy: Policy | None
    label: str
    rows: list[dict] = field(default_factory=list)
    targets: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"chosen": self.label, "targets": self.targets, "candidates": self.rows}

    def __str__(self) -> str:
        wanted = ", ".join(
            f"{k} {format_bytes(v) if k == 'max_memory_bytes' else f'{v:g}'}"
            for k, v in self.targets.items()
        )
        lines = [f"budget ({wanted}): {self.label}"]
        width = max([22, *(len(row["label"]) for row in self.rows)])
        for row in self.rows:
            measured = row.get("measured_step_ratio")
            extra = f", measured {measured:.2f}" if measured is not None else ""
            mark = "->" if row["label"] == self.label else "  "
            lines.append(
                f"  {mark} {row['label']:<{width}} step {row['step_ratio']:.2f} x full{extra}, "
                f"memory {format_bytes(row['memory_bytes'])}, "
                f"{row['trainable_share']:.1%} trainable"
            )
        return "\n".join(lines)


def candidates(anat: Anatomy, stack: str | None = None) -> list[tuple[str, Policy | None]]:
    """Full fine-tuning, then bottom_n for n = 0 .. depth, shallowest first; with several stacks
    of blocks (an encoder-decoder), bottom_n of the ``stack`` named (everything outside it
    trains)."""
    view, _ = anat.stack_view(stack, "budget")
    options = {"stack": stack} if stack is not None else {}
    extra = f", stack={stack!r}" if stack is not None else ""
    out: list[tuple[str, Policy | None]] = [("full fine-tuning", None)]
    for n in range(view.depth + 1):
        out.append((f"bottom_n(n={n}{extra})",
                    get_policy("bottom_n", n=n, tied_weights="freeze", **options)))
    return out


BUDGET_NAMES = {
    "max_step_ratio": "max_step_ratio",
    "max_memory_bytes": "max_memory_bytes",
    "calibration_steps": "calibration_steps",
    "stack": "stack",
}
"""How ``check_budget`` and ``choose_frozen_depth`` name their arguments in messages, unless the
caller says how its user typed them (``names=``: the launcher passes its flags)."""


def _is_number(value) -> bool:
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and math.isfinite(value))


def check_budget(
    *,
    max_step_ratio=None,
    max_memory=None,
    calibration_steps=0,
    stack=None,
    names: Mapping[str, str] | None = None,
) -> None:
    """The budget's arguments alone, before any model exists: targets are numbers > 0, at least
    one is given when calibration steps or a stack are, ``calibration_steps`` is an integer >= 0
    and calibrates only a step target. ``max_memory`` is in whatever unit the caller's user
    typed (bytes for the library, GiB for the launcher); ``names`` maps ``max_step_ratio``,
    ``max_memory_bytes``, ``calibration_steps`` and ``stack`` to what the user typed."""
    named = {**BUDGET_NAMES, **(names or {})}
    for key, value in (("max_step_ratio", max_step_ratio), ("max_memory_bytes", max_memory)):
        if value is not None and not (_is_number(value) and value > 0):
            raise FreezePolicyError(f"budget: {named[key]}={value!r} must be a number > 0")
    if (isinstance(calibration_steps, bool) or not isinstance(calibration_steps, int)
            or calibration_steps < 0):
        raise FreezePolicyError(
            f"budget: {named['calibration_steps']}={calibration_steps!r} must be an integer >= 0 "
            "(0: no calibration)"
        )
    given = max_step_ratio is not None or max_memory is not None
    for key, value, unused in (("calibration_steps", calibration_steps, calibration_steps == 0),
                               ("stack", stack, stack is None)):
        if not unused and not given:
            raise FreezePolicyError(
                f"budget: {named[key]}={value!r} is given without a budget; add "
                f"{named['max_step_ratio']} and/or {named['max_memory_bytes']}, or drop it"
            )
    if calibration_steps and max_step_ratio is None:
        raise FreezePolicyError(
            f"budget: {named['calibration_steps']}={calibration_steps!r} measures step times, "
            f"which only {named['max_step_ratio']} limits; add {named['max_step_ratio']} or drop "
            "the calibration"
        )


def choose_frozen_depth(
    model: nn.Module,
    *,
    max_step_ratio: float | None = None,
    max_memory_bytes: int | None = None,
    seq_len: int = 128,
    batch_size: int = 32,
    state_slots: int = ADAMW_STATE_SLOTS,
    anat: Anatomy | None = None,
    calibrate: Mapping[str, torch.Tensor] | None = None,
    calibration_steps: int = 3,
    stack: str | None = None,
    names: Mapping[str, str] | None = None,
    shown: Mapping[str, str] | None = None,
) -> BudgetChoice:
    """The shallowest frozen prefix that meets the targets (see the module docstring).

    ``stack``: on a model with several stacks of blocks (an encoder-decoder), the one frozen
    from the bottom. ``names`` (see ``check_budget``) and ``shown`` (a target as the user typed
    it, e.g. ``{"max_memory_bytes": "--budget_memory_gb 2"}``) let a caller's messages name its
    own flags."""
    named = {**BUDGET_NAMES, **(names or {})}
    check_budget(max_step_ratio=max_step_ratio, max_memory=max_memory_bytes,
                 calibration_steps=calibration_steps if calibrate is not None else 0,
                 stack=stack, names=names)
    targets = {key: value for key, value in (("max_step_ratio", max_step_ratio),
                                             ("max_memory_bytes", max_memory_bytes))
               if value is not None}
    if not targets:
        raise FreezePolicyError(
            f"budget: give {named['max_step_ratio']} and/or {named['max_memory_bytes']}"
        )
    if calibrate is not None and calibration_steps < 1:
        raise FreezePolicyError(
            f"budget: {named['calibration_steps']}={calibration_steps!r} must be >= 1 to calibrate"
        )
    anat = anat or anatomy(model)
    if len(anat.stacks) > 1 and stack is None:
        raise FreezePolicyError(
            f"budget: {anat.model_class} has {len(anat.stacks)} stacks of blocks "
            f"({', '.join(anat.stack_names())}); name the one to freeze from the bottom with "
            f"{named['stack']} (one of {', '.join(anat.stack_names())})"
        )
    try:
        options = candidates(anat, stack)
    except FreezePolicyError as error:  # an unknown stack: say it with the caller's name
        raise FreezePolicyError(
            str(error).replace("stack=", f"{named['stack']}=")
        ) from None
    described = _describe(targets, shown)
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    rows = []
    for label, policy in options:
        trainable = set(params) if policy is None else policy.trainable_names(anat)
        cost = predict_cost(model, trainable, anat, seq_len=seq_len, batch_size=batch_size,
                            state_slots=state_slots)
        memory = cost.parameter_bytes + cost.gradient_bytes + cost.optimizer_state_bytes
        rows.append({
            "label": label, "policy": policy, "names": trainable, "step_ratio": cost.step_ratio,
            "memory_bytes": memory, "trainable_share": cost.trainable_params / total,
        })

    def meets(row, ratio_key="step_ratio") -> bool:
        ratio = row.get(ratio_key, row["step_ratio"])
        return (max_step_ratio is None or ratio <= max_step_ratio) and (
            max_memory_bytes is None or row["memory_bytes"] <= max_memory_bytes
        )

    index = next((i for i, row in enumerate(rows) if meets(row)), None)
    if index is None:
        deepest = rows[-1]
        raise FreezePolicyError(
            f"budget {described} cannot be met: the deepest freeze, {deepest['label']} "
            f"({'the whole stack' if stack else 'everything but the head'}), is predicted at "
            f"{deepest['step_ratio']:.2f} x full "
            f"fine-tuning's step and {format_bytes(deepest['memory_bytes'])}"
        )
    if calibrate is not None and max_step_ratio is not None:
        full_seconds = None
        while index < len(rows):
            row = rows[index]
            full_seconds, seconds = _measure_pair(model, rows[0]["names"], row["names"],
                                                  calibrate, calibration_steps, full_seconds)
            row["measured_step_ratio"] = seconds / full_seconds
            if meets(row, "measured_step_ratio"):
                break
            index += 1
        else:
            raise FreezePolicyError(
                f"budget {described} cannot be met on this machine: even "
                f"{rows[-1]['label']} measured {rows[-1]['measured_step_ratio']:.2f} x full "
                "fine-tuning's step"
            )
    chosen = rows[index]
    public = [{k: v for k, v in row.items() if k not in ("policy", "names")} for row in rows]
    return BudgetChoice(chosen["policy"], chosen["label"], public, targets)


def _describe(targets: dict, shown: Mapping[str, str] | None = None) -> str:
    shown = shown or {}
    return ", ".join(
        shown.get(k) or f"{k}={format_bytes(v) if k == 'max_memory_bytes' else f'{v:g}'}"
        for k, v in targets.items()
    )


def measure_step_seconds(model: nn.Module, trainable: set[str],
                         batch: Mapping[str, torch.Tensor]) -> float:
    """Seconds of one forward + backward of ``batch`` with exactly ``trainable`` requiring grad.

    ``requires_grad`` and gradients are restored afterwards; no weight changes."""
    params = dict(model.named_parameters())
    before = {n: (p.requires_grad, p.grad) for n, p in params.items()}
    try:
        for name, param in params.items():
            param.requires_grad_(name in trainable)
            param.grad = None
        start = time.perf_counter()
        output = model(**batch)
        loss = getattr(output, "loss", None)
        loss = loss if loss is not None else output[0].float().mean()
        loss.backward()
        return time.perf_counter() - start
    finally:
        for name, param in params.items():
            param.requires_grad_(before[name][0])
            param.grad = before[name][1]


def _measure_pair(model, full_names, names, batch, steps, full_seconds):
    """Median seconds of full and ``names`` steps, interleaved; ``full_seconds`` reused if known."""
    full_times, times = [], []
    measure_step_seconds(model, names, batch)  # warm-up: first calls allocate
    if full_seconds is None:
        measure_step_seconds(model, full_names, batch)
    for _ in range(steps):
        if full_seconds is None:
            full_times.append(measure_step_seconds(model, full_names, batch))
        times.append(measure_step_seconds(model, names, batch))
    full = full_seconds if full_seconds is not None else statistics.median(full_times)
    return full, statistics.median(times)


__all__ = ["BudgetChoice", "candidates", "check_budget", "choose_frozen_depth",
           "measure_step_seconds"]
