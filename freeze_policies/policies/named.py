"""The named block and name-pattern policies (the part presets are in ``parts``).

Each policy's docstring says what stays trainable. Conventions they share, beyond the base
class's (``freeze_policies.policies.base``: tied weights, ``blocks=``, nothing-trainable raises):

- ``shared`` parameters (relative-position tables read by every block) train whenever at least
  one block trains, except under ``bitfit``, ``norm_only`` and ``custom``, which select by name.
- ``stack=`` (block policies) names the stack of blocks a policy acts on in a model with several
  (encoder and decoder, vision tower and language model).

Scheduled policies (``gradual_unfreeze``, ``lisa``) move to the next stage every ``every`` steps
or epochs.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field

from freeze_policies.errors import FreezePolicyError
from freeze_policies.policies.base import Policy, ScheduledPolicy, blocks_and_shared
from freeze_policies.policies.registry import register_policy
from freeze_policies.structure.discover import Anatomy


def _on_stack(policy: Policy, anat: Anatomy) -> tuple[Anatomy, frozenset[str]]:
    """The single-stack view a block policy acts on (its ``stack=`` option) and the names outside
    it; see ``Anatomy.stack_view``. A single-stack model gives itself and nothing outside."""
    return anat.stack_view(policy.stack, policy.name)


def _check_count(policy: str, option: str, value: int, anat: Anatomy, low: int) -> None:
    if not low <= value <= anat.depth:
        raise FreezePolicyError(
            f"{policy}: {option}={value} is out of range for {anat.model_class} with "
            f"{anat.depth} blocks (valid: {low}..{anat.depth})"
        )


def _check_int(policy: str, option: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FreezePolicyError(f"{policy}: {option}={value!r} must be a non-negative integer")


@register_policy("embeddings")
@dataclass(kw_only=True)
class FreezeEmbeddings(Policy):
    """Freezes the embeddings. Trainable: every block, shared parameters and the head."""

    def select(self, anat, stage):
        return set(anat.names()) - set(anat.embeddings)


@register_policy("bottom_n")
@dataclass(kw_only=True)
class BottomN(Policy):
    """Freezes the embeddings and the lowest ``n`` blocks (0..depth).

    Trainable: blocks n..L-1, shared parameters (while any block trains) and the head.
    With several stacks of blocks (encoder and decoder, vision tower and language model),
    ``stack=`` names the one it acts on: its embeddings and lowest ``n`` blocks are
    frozen, everything outside the stack trains.
    """

    n: int
    stack: str | None = None

    def __post_init__(self):
        super().__post_init__()
        _check_int("bottom_n", "n", self.n)

    def select(self, anat, stage):
        view, outside = _on_stack(self, anat)
        _check_count("bottom_n", "n", self.n, view, low=0)
        return blocks_and_shared(view, range(self.n, view.depth)) | set(view.head) | outside


@register_policy("top_n")
@dataclass(kw_only=True)
class TopN(Policy):
    """Trains only the top ``n`` blocks (1..depth) and the head (plus shared parameters).

    With several stacks of blocks (encoder and decoder, vision tower and language model),
    ``stack=`` names the one it acts on: its top ``n`` blocks, its shared parameters and top,
    and the model's head train; everything outside the stack is frozen.
    """

    n: int
    stack: str | None = None

    def __post_init__(self):
        super().__post_init__()
        _check_int("top_n", "n", self.n)

    def select(self, anat, stage):
        view, _ = _on_stack(self, anat)
        _check_count("top_n", "n", self.n, view, low=1)
        return blocks_and_shared(view, range(view.depth - self.n, view.depth)) | set(view.head)


@register_policy("all_but_head")
@dataclass(kw_only=True)
class AllButHead(Policy):
    """Freezes everything but the head: a linear probe. Trainable: the head only."""

    def select(self, anat, stage):
        return set(anat.head)


@register_policy("gradual_unfreeze")
@dataclass(kw_only=True)
class GradualUnfreeze(ScheduledPolicy):
    """ULMFiT's gradual unfreezing: the head first, then blocks from the top, embeddings last.

    Stage 0 trains the head; stage s opens the top ``s * blocks_per_stage`` blocks (and the shared
    parameters); the stage after the last block opens the embeddings, so everything trains.
    A new stage starts every ``every`` ``unit`` (default: one stage per epoch).
    With several stacks of blocks (encoder and decoder, vision tower and language model),
    ``stack=`` names the one it acts on: the head and the stack's top open first,
    then its blocks from the top, then its embeddings; everything outside the stack stays frozen
    until that last stage, which trains the whole model.
    """

    blocks_per_stage: int = 1
    stack: str | None = None

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.blocks_per_stage, bool) or not isinstance(self.blocks_per_stage, int) \
                or self.blocks_per_stage < 1:
            raise FreezePolicyError(
                f"gradual_unfreeze: blocks_per_stage={self.blocks_per_stage!r} must be an "
                "integer >= 1"
            )

    def num_stages(self, anat):
        view, _ = _on_stack(self, anat)
        self._check(view)
        return 2 + math.ceil(view.depth / self.blocks_per_stage)

    def select(self, anat, stage):
        if stage >= self.num_stages(anat) - 1:
            return set(anat.names())
        view, _ = _on_stack(self, anat)
        opened = min(stage * self.blocks_per_stage, view.depth)
        return blocks_and_shared(view, range(view.depth - opened, view.depth)) | set(view.head)

    def _check(self, anat):
        if self.blocks_per_stage > anat.depth:
            raise FreezePolicyError(
                f"gradual_unfreeze: blocks_per_stage={self.blocks_per_stage} is larger than the "
                f"depth of {anat.model_class} ({anat.depth} blocks)"
            )


@register_policy("lisa")
@dataclass(kw_only=True)
class Lisa(ScheduledPolicy):
    """LISA: ``k`` random blocks train, resampled every stage; embeddings and head always train.

    The draw depends only on ``seed`` and the stage number, so every process draws the same
    blocks. Shared parameters train too. Default: 2 blocks, resampled every 20 steps.
    With several stacks of blocks (encoder and decoder, vision tower and language model),
    ``stack=`` names the one it acts on: ``k`` of its blocks, its embeddings, its top and
    the model's head train; everything outside the stack is frozen.
    """

    k: int = 2
    every: int = 20
    unit: str = "steps"
    seed: int = 0
    stack: str | None = None

    def __post_init__(self):
        super().__post_init__()
        _check_int("lisa", "k", self.k)

    def num_stages(self, anat):
        return None

    def sampled_blocks(self, anat: Anatomy, stage: int) -> list[int]:
        """Indices (within the stack acted on) of the blocks that train at ``stage``."""
        view, _ = _on_stack(self, anat)
        _check_count("lisa", "k", self.k, view, low=1)
        return sorted(random.Random(f"lisa:{self.seed}:{stage}").sample(range(view.depth), self.k))

    def select(self, anat, stage):
        view, _ = _on_stack(self, anat)
        blocks = blocks_and_shared(view, self.sampled_blocks(anat, stage))
        return blocks | set(view.embeddings) | set(view.head)


@register_policy("bitfit")
@dataclass(kw_only=True)
class BitFit(Policy):
    """BitFit: trains every bias and the head; all other weights are frozen.

    A bias is a parameter registered as ``bias`` on its module (``...dense.bias``,
    ``...LayerNorm.bias``); parameters whose own name merely ends in "bias" (Funnel's
    ``r_w_bias``, relative-attention tables) are weights and stay frozen. Models without biases
    (Llama and most recent decoders) train only their head.
    """

    def select(self, anat, stage):
        biases = {name for name in anat.names() if name.rsplit(".", 1)[-1] == "bias"}
        return biases | set(anat.head)


@register_policy("norm_only")
@dataclass(kw_only=True)
class NormOnly(Policy):
    """Trains the normalisation parameters (LayerNorm, RMSNorm, ...) and the head."""

    def select(self, anat, stage):
        return {name for name in anat.names() if name in anat.norms} | set(anat.head)


@register_policy("custom")
@dataclass(kw_only=True)
class Custom(Policy):
    """Regular expressions (``re.search`` on parameter names) for what trains and what is frozen.

    Trainable: names matching any ``trainable`` pattern (every name if none is given) and no
    ``frozen`` pattern. Each pattern must match at least one parameter.
    """

    trainable: list[str] = field(default_factory=list)
    frozen: list[str] = field(default_factory=list)

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.trainable, str):
            self.trainable = [self.trainable]
        if isinstance(self.frozen, str):
            self.frozen = [self.frozen]
        for option in ("trainable", "frozen"):
            value = getattr(self, option)
            if not isinstance(value, (list, tuple)) or not all(isinstance(p, str) for p in value):
                raise FreezePolicyError(
                    f"custom: {option}={value!r} must be a regex or a list of regexes (strings), "
                    "e.g. trainable=['classifier', 'layer\\.5\\.']"
                )
            setattr(self, option, list(value))
        if not self.trainable and not self.frozen:
            raise FreezePolicyError("custom: give trainable=[regex, ...] and/or frozen=[...]")
        for pattern in [*self.trainable, *self.frozen]:
            try:
                re.compile(pattern)
            except re.error as error:
                raise FreezePolicyError(f"custom: invalid regex {pattern!r}: {error}") from None

    def select(self, anat, stage):
        names = anat.names()

        def matching(patterns):
            out = set()
            for pattern in patterns:
                hits = {name for name in names if re.search(pattern, name)}
                if not hits:
                    raise FreezePolicyError(
                        f"custom: regex {pattern!r} matches no parameter of {anat.model_class} "
                        f"(e.g. {', '.join(names[:3])})"
                    )
                out |= hits
            return out

        trainable = matching(self.trainable) if self.trainable else set(names)
        return trainable - matching(self.frozen)
