"""A budget instead of a guess: the shallowest frozen prefix whose step fits a time or memory goal.

    choice = choose_frozen_depth(model, max_step_ratio=0.5, seq_len=64, batch_size=32)
    print(choice)            # every candidate's predicted cost, the choice marked
    trainer = FreezeTrainer(..., freeze_policy=choice.policy)

Candidates, from shallowest to deepest: full fine-tuning (nothing frozen), then ``bottom_n``
with ``n = 0 .. depth`` (the embeddings and the lowest ``n`` blocks frozen). The first candidate
that meets every given target wins, so as little as possible is frozen:

- ``max_step_ratio``: the predicted step time over full fine-tuning's, from the FLOP model
  (``predict_cost``; uncached steps: ``cache_frozen_prefix`` only makes a step cheaper).
- ``max_memory_bytes``: the accounted training memory, parameters + gradients + optimizer
  state (``predict_cost``'s exact counts, AdamW's 2 state tensors by default). Saved activations
  are left out of the target (they depend on the batch, not on the depth alone); pass a
  ``batch`` to ``measure_candidate`` to see them.

``calibrate`` (a batch of inputs, and ``calibration_steps``) measures the chosen candidate and
full fine-tuning side by side on that batch (forward + backward, interleaved, median of the
rounds; no weight changes) and, while the measured ratio misses ``max_step_ratio``, moves one
block deeper. The predicted and measured figures are in ``BudgetChoice.rows``. A budget no
candidate meets is a one-line ``FreezePolicyError``.
"""

from __future__ import annotations

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
        for row in self.rows:
            measured = row.get("measured_step_ratio")
            extra = f", measured {measured:.2f}" if measured is not None else ""
            mark = "->" if row["label"] == self.label else "  "
            lines.append(
                f"  {mark} {row['label']:<22} step {row['step_ratio']:.2f} x full{extra}, "
                f"memory {format_bytes(row['memory_bytes'])}, "
                f"{row['trainable_share']:.1%} trainable"
            )
        return "\n".join(lines)


def candidates(anat: Anatomy) -> list[tuple[str, Policy | None]]:
    """Full fine-tuning, then bottom_n for n = 0 .. depth, shallowest first."""
    out: list[tuple[str, Policy | None]] = [("full fine-tuning", None)]
    for n in range(anat.depth + 1):
        out.append((f"bottom_n(n={n})", get_policy("bottom_n", n=n, tied_weights="freeze")))
    return out


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
) -> BudgetChoice:
    """The shallowest frozen prefix that meets the targets (see the module docstring)."""
    targets = {}
    for name, value in (("max_step_ratio", max_step_ratio), ("max_memory_bytes", max_memory_bytes)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise FreezePolicyError(f"budget: {name}={value!r} must be a number > 0")
        targets[name] = value
    if not targets:
        raise FreezePolicyError("budget: give max_step_ratio and/or max_memory_bytes")
    anat = anat or anatomy(model)
    params = dict(model.named_parameters())
    total = sum(p.numel() for p in params.values())
    rows = []
    for label, policy in candidates(anat):
        names = set(params) if policy is None else policy.trainable_names(anat)
        cost = predict_cost(model, names, anat, seq_len=seq_len, batch_size=batch_size,
                            state_slots=state_slots)
        memory = cost.parameter_bytes + cost.gradient_bytes + cost.optimizer_state_bytes
        rows.append({
            "label": label, "policy": policy, "names": names, "step_ratio": cost.step_ratio,
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
            f"budget {_describe(targets)} cannot be met: the deepest freeze, {deepest['label']} "
            f"(everything but the head), is predicted at {deepest['step_ratio']:.2f} x full "
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
                f"budget {_describe(targets)} cannot be met on this machine: even "
                f"{rows[-1]['label']} measured {rows[-1]['measured_step_ratio']:.2f} x full "
                "fine-tuning's step"
            )
    chosen = rows[index]
    public = [{k: v for k, v in row.items() if k not in ("policy", "names")} for row in rows]
    return BudgetChoice(chosen["policy"], chosen["label"], public, targets)


def _describe(targets: dict) -> str:
    return ", ".join(
        f"{k}={format_bytes(v) if k == 'max_memory_bytes' else f'{v:g}'}"
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
    for _ in range(max(1, steps)):
        if full_seconds is None:
            full_times.append(measure_step_seconds(model, full_names, batch))
        times.append(measure_step_seconds(model, names, batch))
    full = full_seconds if full_seconds is not None else statistics.median(full_times)
    return full, statistics.median(times)


__all__ = ["BudgetChoice", "candidates", "choose_frozen_depth", "measure_step_seconds"]
