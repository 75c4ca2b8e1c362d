"""Adaptive freezing: blocks freeze bottom-up during training once their gradients settle.

``get_policy("auto_freeze", every=20)`` starts with every parameter trainable (or with the lowest
``initial_depth`` blocks and the embeddings frozen) and lets the training itself decide how deep
the frozen prefix grows. Its stage is the frozen depth ``d``: the embeddings and blocks
``0..d-1`` are frozen, blocks ``d..L-1``, the shared parameters and the head train.

Two criteria, chosen with ``criterion=`` and evaluated every ``every`` optimizer steps (one
*window*). The default, ``"grad_norm_rate"``, is AutoFreeze's (Liu et al. 2021, "AutoFreeze:
Automatically Freezing Model Blocks to Accelerate Fine-tuning"):

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

``criterion="param_change"`` asks how far a block's weights still move, relative to where they
started: the layer-wise *relative weight change* of Agrawal et al. 2021 ("Investigating
Learning in Deep Neural Networks using Layer-Wise Weight Change"), measured per window against
the block's pretrained size:

1. **Measured.** At the end of each window (after its last optimizer step), block ``i``'s
   displacement over the window, ``D_i(w) = ||theta_i(end of w) - theta_i(end of w-1)||``
   (all of the block's parameters together; window 0 starts at the first step, so the first
   decision comes at the end of the *first* window).
2. **Relative.** ``u_i(w) = D_i(w) / ||theta_i(start of training)||``: the window's update
   as a share of the block's pretrained weights.
3. **Decision.** The lowest trainable block freezes when ``u_i(w) <= threshold``
   (no default: see below); then the next block up is judged the same way, at most
   ``max_per_decision`` per window, never above the floor. ``percentile`` and ``max_change``
   belong to the gradient criterion and are refused with this one.

The displacement is estimated, not computed in full: each parameter tensor contributes
``PARAM_SAMPLE`` entries at fixed pseudo-random positions (seeded by the parameter's name), and
``D_i^2`` is the sum over the block's tensors of ``numel / PARAM_SAMPLE`` times the sampled
squared change. The samples are what the checkpoint keeps (a few thousand floats per block), so
a resumed run measures exactly what the uninterrupted one did; the pretrained norms are exact.
The size of an update depends on the learning rate and on ``every``: ``threshold`` is tied to
them, as the rank-based gradient criterion is not, so it has no default and must be given. Under
AdamW with a linearly decaying rate, the blocks' relative updates measured on MiniLM fell with
the rate (5- to 9-fold over the first 100 steps) and stayed within a factor of 1.5 of each other at
every window (``docs/adaptive.md``): the
threshold mostly picks *when* in the schedule freezing starts. 0.012 was chosen on validation
for MiniLM at rate 3e-4 and ``every=10`` (``configs/experiments/default.yaml``).

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
``AutoFreezeController.decisions``. The controller's window (the gradient sums, or
``param_change``'s sampled weights and pretrained norms) goes into the checkpoint, so a resumed
run takes the same decisions as an uninterrupted one.

Under ``param_change`` the decisions do not need the gradients of every block at every step,
only the weights at window ends: the cost is ``PARAM_SAMPLE`` entries per tensor per window.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch
from torch import nn

from freeze_policies.errors import FreezePolicyError
from freeze_policies.policies.base import ScheduledPolicy, blocks_and_shared
from freeze_policies.policies.registry import register_policy
from freeze_policies.structure.discover import Anatomy

CRITERIA = ("grad_norm_rate", "param_change")
PARAM_SAMPLE = 256  # entries per parameter tensor that param_change's estimate follows



@register_policy("auto_freeze")
@dataclass(kw_only=True)
class AutoFreeze(ScheduledPolicy):
    """Freezes converged blocks bottom-up during training (see the module docstring).

    Stage ``d`` (the frozen depth): embeddings and blocks ``0..d-1`` frozen when ``d > 0``;
    stage 0 trains everything. Options: ``every`` (window length in optimizer steps, default
    20), ``percentile`` (0-100, default 50), ``max_change`` (absolute cap on the change rate,
    default None), ``max_per_decision`` (default 1), ``min_trainable_blocks`` (the floor,
    default 1), ``initial_depth`` (frozen depth at the start, default 0), ``criterion``
    (``"grad_norm_rate"``, default, or ``"param_change"``) and ``threshold`` (the largest
    relative update per window at which ``param_change`` calls a block done; required with
    it, since it scales with the learning rate and ``every``).
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
    criterion: str = "grad_norm_rate"
    threshold: float | None = None

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
        if self.criterion not in CRITERIA:
            raise FreezePolicyError(
                f"auto_freeze: criterion={self.criterion!r} is not one of {', '.join(CRITERIA)}"
            )
        if self.threshold is not None and (
            isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float))
            or self.threshold < 0
        ):
            raise FreezePolicyError(
                f"auto_freeze: threshold={self.threshold!r} must be a number >= 0 or None"
            )
        if self.criterion == "param_change" and self.threshold is None:
            raise FreezePolicyError(
                "auto_freeze: criterion='param_change' needs threshold= (the largest relative "
                "update per window at which a block is done; it scales with the learning rate and "
                "every, so choose it on validation: 0.012 for MiniLM at 3e-4, every=10)"
            )
        if self.criterion == "grad_norm_rate" and self.threshold is not None:
            raise FreezePolicyError(
                f"auto_freeze: threshold={self.threshold!r} belongs to criterion='param_change'; "
                "criterion='grad_norm_rate' ranks by percentile (and caps with max_change)"
            )
        if self.criterion == "param_change" and self.max_change is not None:
            raise FreezePolicyError(
                f"auto_freeze: max_change={self.max_change!r} belongs to "
                "criterion='grad_norm_rate'; criterion='param_change' uses threshold"
            )
        for option, low in (("max_per_decision", 1), ("min_trainable_blocks", 1),
                            ("initial_depth", 0)):
            value = getattr(self, option)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise FreezePolicyError(
                    f"auto_freeze: {option}={value!r} must be an integer >= {low}"
                )

    @property
    def done_below(self) -> float:
        """``param_change``'s threshold."""
        return float(self.threshold)

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
    if policy.criterion == "param_change":
        cut = policy.done_below
    else:
        cut = percentile(list(rates.values()), policy.percentile)
        if policy.max_change is not None:
            cut = min(cut, policy.max_change)
    new = depth
    while new < max_depth and new - depth < policy.max_per_decision:
        rate = rates.get(new)
        if rate is None or rate > cut:
            break
        new += 1
    return new


class AutoFreezeController:
    """Measures the blocks and takes ``auto_freeze``'s decisions, for either criterion.

    ``observe(model)`` after each backward (before the optimizer step); ``end_of_step(step,
    model)`` after the step: at the end of a window it returns the new depth (or None when
    nothing changed). ``state()`` / ``load_state()`` carry the window through a checkpoint
    (plain JSON values: the gradient sums, or ``param_change``'s sampled weights).
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
        # param_change: each block's pretrained norm, and its sampled weights at the window start
        self.norms: list[float] | None = None
        self.reference: dict[int, list[list[float]]] | None = None
        self._positions: dict[str, torch.Tensor] = {}

    # -- measuring ---------------------------------------------------------------------------
    def observe(self, model: nn.Module) -> None:
        """Gradient criterion: add each trainable block's gradient norm at this step to the
        window sums. ``param_change``: at the first step, note the pretrained norms and where
        the first window starts."""
        params = dict(model.named_parameters())
        if self.policy.criterion == "param_change":
            if self.reference is None:
                self.norms = [
                    float(sum(params[n].detach().float().pow(2).sum() for n in names)) ** 0.5
                    for names in self.anat.blocks
                ]
                self.reference = self._sample(params)
            self.window_steps += 1
            return
        for index in range(self.depth, self.anat.depth):
            squares = 0.0
            for name in self.anat.blocks[index]:
                grad = params[name].grad
                if grad is not None:
                    squares += _squared_norm(grad)
            self.window_sums[index] += squares**0.5
        self.window_steps += 1

    def _sample(self, params: dict) -> dict[int, list[list[float]]]:
        """The sampled entries of every trainable block's parameters, as plain floats."""
        return {
            index: [self._entries(name, params[name]).tolist() for name in self.anat.blocks[index]]
            for index in range(self.depth, self.anat.depth)
        }

    def _entries(self, name: str, param: torch.Tensor) -> torch.Tensor:
        if name not in self._positions:
            generator = torch.Generator().manual_seed(zlib.crc32(name.encode()))
            count = param.numel()
            self._positions[name] = (
                torch.arange(count) if count <= PARAM_SAMPLE
                else torch.randint(0, count, (PARAM_SAMPLE,), generator=generator)
            )
        flat = param.detach().reshape(-1)
        return flat[self._positions[name].to(flat.device)].float().cpu()

    def relative_updates(self, model: nn.Module) -> dict[int, float]:
        """``param_change``: each trainable block's estimated displacement since the window
        started, over its pretrained norm (see the module docstring)."""
        params = dict(model.named_parameters())
        rates = {}
        for index in range(self.depth, self.anat.depth):
            squares = 0.0
            for name, before in zip(self.anat.blocks[index], self.reference[index]):
                now = self._entries(name, params[name])
                change = float((now - torch.tensor(before)).pow(2).sum())
                squares += change * params[name].numel() / now.numel()
            if self.norms[index] > 0:
                rates[index] = squares**0.5 / self.norms[index]
        return rates

    def end_of_step(self, global_step: int, model: nn.Module | None = None) -> int | None:
        """Close the window after every ``every`` steps; the new depth if it changed.
        ``model`` (the one observed) is needed by ``param_change``, which measures weights."""
        if self.window_steps < self.policy.every:
            return None
        rates = None
        new_depth = self.depth
        if self.policy.criterion == "param_change":
            if model is None:
                raise FreezePolicyError(
                    "auto_freeze: criterion='param_change' measures the weights; pass the model "
                    "to AutoFreezeController.end_of_step"
                )
            rates = self.relative_updates(model)
        else:
            means = [total / self.window_steps for total in self.window_sums]
            if self.previous is not None:
                rates = {
                    i: abs(means[i] - self.previous[i]) / self.previous[i]
                    for i in range(self.depth, self.anat.depth)
                    if self.previous[i] > 0
                }
            self.previous = means
            self.window_sums = [0.0] * self.anat.depth
        if rates is not None:
            new_depth = _broadcast(decide(self.policy, self.depth, self.policy.max_depth(self.anat),
                                          rates))
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
        if self.policy.criterion == "param_change":  # the next window starts here
            self.reference = self._sample(dict(model.named_parameters()))
        return new_depth if changed else None

    # -- checkpointing -----------------------------------------------------------------------
    def state(self) -> dict:
        saved = {
            "depth": self.depth,
            "window_sums": list(self.window_sums),
            "window_steps": self.window_steps,
            "previous": None if self.previous is None else list(self.previous),
            "decisions": list(self.decisions),
        }
        if self.policy.criterion == "param_change":
            saved["norms"] = None if self.norms is None else list(self.norms)
            saved["reference"] = None if self.reference is None else {
                str(index): rows for index, rows in self.reference.items()
            }
        return saved

    def load_state(self, saved: dict) -> None:
        self.depth = int(saved["depth"])
        self.window_sums = [float(x) for x in saved["window_sums"]]
        self.window_steps = int(saved["window_steps"])
        self.previous = None if saved["previous"] is None else [float(x) for x in saved["previous"]]
        self.decisions = list(saved.get("decisions", []))
        if self.policy.criterion == "param_change":
            norms, reference = saved.get("norms"), saved.get("reference")
            self.norms = None if norms is None else [float(x) for x in norms]
            self.reference = None if reference is None else {
                int(index): rows for index, rows in reference.items()
            }


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
