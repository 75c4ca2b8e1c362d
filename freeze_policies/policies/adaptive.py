"""Adaptive freezing: blocks freeze bottom-up during training once their gradients settle.

``get_policy("auto_freeze", every=20)`` starts with every parameter trainable (or with the lowest
``initial_depth`` blocks and the embeddings frozen) and lets the training itself decide how deep
the frozen prefix grows. Its stage is the frozen depth ``d``: the embeddings and blocks
``0..d-1`` are frozen, blocks ``d..L-1``, the shared parameters and the head train.

The criterion, evaluated every ``every`` optimizer steps (one *window*):

1. **Measured.** After each backward (in ``on_pre_optimizer_step``, so after gradient
   accumulation and, under DDP, after the all-reduce), the L2 norm of each trainable block's
   gradient, all of the block's parameters together (under FSDP2, summed over every rank's
   shard).
2. **Smoothed.** Averaged over the window: ``G_i(w)`` is block ``i``'s mean gradient norm over
   the ``every`` steps of window ``w``.
3. **Change rate.** ``r_i(w) = |G_i(w) - G_i(w-1)| / G_i(w-1)``; the first decision comes at the
   end of the second window.
4. **Decision.** Ranked against the other trainable blocks: the lowest trainable block freezes
   when its change rate is at or below the ``percentile``-th percentile of all trainable
   blocks' rates (and at or below ``max_change``, when given). Then the next block up is judged
   the same way, at most ``max_per_decision`` blocks per window. Never above the floor: at least
   ``min_trainable_blocks`` blocks keep training; the head never freezes.

**Several stacks** (encoder and decoder, vision tower and language model): ``stack=`` names the
stack the controller measures and freezes, as for the other block policies, and a model with
several stacks and none named is refused with the list of its stacks. The depth then counts that
stack's blocks only: stage ``d`` freezes the stack's embeddings and its blocks ``0..d-1``; the
stack's other blocks, its shared parameters and top, the model's head and everything outside the
stack train at every stage (the rule of ``bottom_n(stack=...)``: it freezes the bottom of the
stack only). The decisions' depth and rate indices count within the stack. A table tied between
stacks (T5's and BART's ``shared``, read by both stacks' ``embed_tokens`` and the LM head; Whisper's
decoder tokens and ``proj_out``) follows ``tied_weights``: without it, the first stage that freezes
the stack's embeddings would train one use and freeze another, so the policy is refused when bound.

Freezing is bottom-up only, so the frozen prefix stays contiguous and the frozen-prefix cache
(``cache_frozen_prefix``) deepens with it; the cache works on single-stack models only and refuses
a model with several stacks in one line. Decisions are taken on the main process and broadcast,
so every DDP rank freezes the same blocks at the same step; each decision is appended to
``state.log_history`` (``auto_freeze_depth``, ``auto_freeze_rates``) and kept in
``AutoFreezeController.decisions``. The controller's window sums go into the checkpoint, so a
resumed run takes the same decisions as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from freeze_policies.errors import FreezePolicyError
from freeze_policies.policies.base import ScheduledPolicy, blocks_and_shared
from freeze_policies.policies.registry import register_policy
from freeze_policies.structure.discover import Anatomy


@register_policy("auto_freeze")
@dataclass(kw_only=True)
class AutoFreeze(ScheduledPolicy):
    """Freezes converged blocks bottom-up during training (see the module docstring).

    Stage ``d`` (the frozen depth): embeddings and blocks ``0..d-1`` frozen when ``d > 0``;
    stage 0 trains everything. Options: ``every`` (window length in optimizer steps, default
    20), ``percentile`` (0-100, default 50), ``max_change`` (absolute cap on the change rate,
    default None), ``max_per_decision`` (default 1), ``min_trainable_blocks`` (the floor,
    default 1), ``initial_depth`` (frozen depth at the start, default 0).
    With several stacks of blocks (encoder and decoder, vision tower and language model),
    ``stack=`` names the one it measures and freezes: its embeddings and blocks ``0..d-1`` are
    frozen at stage ``d``, everything outside the stack trains (as under ``bottom_n``); the
    depth, the floor and ``initial_depth`` count that stack's blocks.
    """

    every: int = 20
    unit: str = "steps"
    percentile: float = 50.0
    max_change: float | None = None
    max_per_decision: int = 1
    min_trainable_blocks: int = 1
    initial_depth: int = 0
    stack: str | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.unit != "steps":
            raise FreezePolicyError(
                f"auto_freeze: unit={self.unit!r} is not supported; decisions are taken every "
                "`every` optimizer steps (unit='steps')"
            )
        if isinstance(self.percentile, bool) or not isinstance(self.percentile, (int, float)) \
                or not 0 <= self.percentile <= 100:
            raise FreezePolicyError(
                f"auto_freeze: percentile={self.percentile!r} must be a number in [0, 100]"
            )
        if self.max_change is not None and (
            isinstance(self.max_change, bool) or not isinstance(self.max_change, (int, float))
            or self.max_change < 0
        ):
            raise FreezePolicyError(
                f"auto_freeze: max_change={self.max_change!r} must be a number >= 0 or None"
            )
        for option, low in (("max_per_decision", 1), ("min_trainable_blocks", 1),
                            ("initial_depth", 0)):
            value = getattr(self, option)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise FreezePolicyError(
                    f"auto_freeze: {option}={value!r} must be an integer >= {low}"
                )

    @property
    def adaptive(self) -> bool:
        """The stage is decided by the training signal, not by the step count."""
        return True

    def view(self, anat: Anatomy) -> tuple[Anatomy, frozenset[str]]:
        """The stack measured and frozen (``stack=``) as a single-stack anatomy, and the names
        outside it (none on a single-stack model); see ``Anatomy.stack_view``."""
        return anat.stack_view(self.stack, self.name)

    def max_depth(self, anat: Anatomy) -> int:
        """The deepest frozen depth, in blocks of the stack acted on (``anat``: that view)."""
        return anat.depth - self.min_trainable_blocks

    def num_stages(self, anat):
        view, _ = self.view(anat)
        self._check(view)
        return self.max_depth(view) + 1

    def stage_at(self, step: int, epoch: float) -> int:
        raise FreezePolicyError(
            "auto_freeze decides its stage from gradients during training; there is no stage "
            "for a step number (use AutoFreezeController)"
        )

    def select(self, anat, stage):
        view, outside = self.view(anat)
        self._check(view)
        depth = min(stage, self.max_depth(view))
        if depth == 0:
            return set(anat.names())
        return blocks_and_shared(view, range(depth, view.depth)) | set(view.head) | outside

    def _check(self, anat: Anatomy) -> None:
        if self.min_trainable_blocks > anat.depth:
            raise FreezePolicyError(
                f"auto_freeze: min_trainable_blocks={self.min_trainable_blocks} is larger than "
                f"the depth of {anat.model_class} ({anat.depth} blocks)"
            )
        if self.initial_depth > self.max_depth(anat):
            raise FreezePolicyError(
                f"auto_freeze: initial_depth={self.initial_depth} leaves fewer than "
                f"min_trainable_blocks={self.min_trainable_blocks} of {anat.model_class}'s "
                f"{anat.depth} blocks trainable"
            )


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` with linear interpolation (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def decide(policy: AutoFreeze, depth: int, max_depth: int, rates: dict[int, float]) -> int:
    """The new frozen depth, given the current ``depth`` and the change rate of every trainable
    block (``rates``: block index -> rate). A pure function: the criterion in one place."""
    if not rates or depth >= max_depth:
        return depth
    cut = percentile(list(rates.values()), policy.percentile)
    new = depth
    while new < max_depth and new - depth < policy.max_per_decision:
        rate = rates.get(new)
        if rate is None or rate > cut:
            break
        if policy.max_change is not None and rate > policy.max_change:
            break
        new += 1
    return new


class AutoFreezeController:
    """Accumulates per-block gradient norms and takes ``auto_freeze``'s decisions.

    ``observe(model)`` after each backward (before the optimizer step); ``end_of_step(step)``
    after the step: at the end of a window it returns the new depth (or None when nothing
    changed). ``state()`` / ``load_state()`` carry the window sums through a checkpoint.
    ``anat`` is the whole model's anatomy; the blocks measured are those of the policy's stack
    (``self.anat``, the single-stack view), indexed from that stack's bottom.
    """

    def __init__(self, policy: AutoFreeze, anat: Anatomy):
        # Every stage is checked now, not when training reaches it: the stack named (with several
        # stacks), the options against its depth, and tied weights split by a deeper stage.
        for stage in range(policy.num_stages(anat)):
            policy.trainable_names(anat, stage)
        self.policy = policy
        self.anat, _ = policy.view(anat)
        self.depth = policy.initial_depth
        self.window_sums: list[float] = [0.0] * self.anat.depth
        self.window_steps = 0
        self.previous: list[float] | None = None
        self.decisions: list[dict] = []

    # -- measuring ---------------------------------------------------------------------------
    def observe(self, model: nn.Module) -> None:
        """Add each trainable block's gradient norm at this step to the window sums."""
        params = dict(model.named_parameters())
        for index in range(self.depth, self.anat.depth):
            squares = 0.0
            for name in self.anat.blocks[index]:
                grad = params[name].grad
                if grad is not None:
                    squares += _squared_norm(grad)
            self.window_sums[index] += squares**0.5
        self.window_steps += 1

    def end_of_step(self, global_step: int) -> int | None:
        """Close the window after every ``every`` steps; the new depth if it changed."""
        if self.window_steps < self.policy.every:
            return None
        means = [total / self.window_steps for total in self.window_sums]
        rates = None
        new_depth = self.depth
        if self.previous is not None:
            rates = {
                i: abs(means[i] - self.previous[i]) / self.previous[i]
                for i in range(self.depth, self.anat.depth)
                if self.previous[i] > 0
            }
            new_depth = _broadcast(decide(self.policy, self.depth, self.policy.max_depth(self.anat),
                                          rates))
        self.previous = means
        self.window_sums = [0.0] * self.anat.depth
        self.window_steps = 0
        if rates is None:
            return None
        record = {
            "step": global_step,
            "auto_freeze_depth": new_depth,
            "auto_freeze_rates": {str(i): round(r, 6) for i, r in sorted(rates.items())},
        }
        self.decisions.append(record)
        changed = new_depth != self.depth
        self.depth = new_depth
        return new_depth if changed else None

    # -- checkpointing -----------------------------------------------------------------------
    def state(self) -> dict:
        return {
            "depth": self.depth,
            "window_sums": list(self.window_sums),
            "window_steps": self.window_steps,
            "previous": None if self.previous is None else list(self.previous),
            "decisions": list(self.decisions),
        }

    def load_state(self, saved: dict) -> None:
        self.depth = int(saved["depth"])
        self.window_sums = [float(x) for x in saved["window_sums"]]
        self.window_steps = int(saved["window_steps"])
        self.previous = None if saved["previous"] is None else [float(x) for x in saved["previous"]]
        self.decisions = list(saved.get("decisions", []))


def _squared_norm(grad: torch.Tensor) -> float:
    """The squared norm of the whole gradient: a DTensor's (FSDP2) summed over every shard, not
    this rank's shard only (one all-reduce of a scalar; a collective: every rank observes)."""
    squares = grad.detach().float().pow(2).sum()
    full_tensor = getattr(squares, "full_tensor", None)
    return float(full_tensor() if callable(full_tensor) else squares)


def _broadcast(depth: int) -> int:
    """The main process's decision, on every process (a no-op without torch.distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return depth
    box = [depth]
    torch.distributed.broadcast_object_list(box, src=0)
    return int(box[0])


__all__ = ["AutoFreeze", "AutoFreezeController", "decide", "percentile"]
