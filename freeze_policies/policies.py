"""The named freezing policies.

A policy is a pure function of a model's ``Anatomy`` and a stage number to the set of parameter
names that train. Policies never touch a model themselves: ``Policy.apply`` hands the answer to
``apply.set_trainable``, the one place that sets ``requires_grad``.

Conventions shared by every policy:

- ``shared`` parameters (relative-position tables read by every block) train whenever at least
  one block trains, except under ``bitfit``, ``norm_only`` and ``custom``, which select by name.
- Tied weights: when a policy would train one name of a tied tensor and freeze another (say the
  head's ``lm_head.weight`` and the input embedding it is tied to), it raises, unless
  ``tied_weights="train"`` (train the tensor) or ``tied_weights="freeze"`` (freeze it) says which.
- ``blocks=`` overrides block discovery (see ``freeze_policies.anatomy``).
- A policy that leaves nothing trainable raises.

Scheduled policies (``gradual_unfreeze``, ``lisa``) move to the next stage every ``every`` steps
or epochs; ``stage_at(step, epoch)`` says which stage a point in training is in.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from freeze_policies.anatomy import Anatomy, anatomy, check_blocks_option
from freeze_policies.apply import set_trainable
from freeze_policies.errors import FreezePolicyError
from freeze_policies.registry import get_policy, register_policy

TIED_CHOICES = ("error", "train", "freeze")
UNITS = ("steps", "epochs")


@dataclass(kw_only=True)
class Policy:
    """Base class: subclasses implement ``select`` and register with ``@register_policy``."""

    name: ClassVar[str] = "policy"
    tied_weights: str = "error"
    blocks: str | list[str] | None = None

    def __post_init__(self):
        if self.tied_weights not in TIED_CHOICES:
            raise FreezePolicyError(
                f"tied_weights={self.tied_weights!r} is not one of {', '.join(TIED_CHOICES)}"
            )
        check_blocks_option(self.blocks)

    # -- what subclasses define -------------------------------------------------------------
    def select(self, anat: Anatomy, stage: int) -> set[str]:
        """Names that train at ``stage``; ``anat``'s groups include the tied aliases."""
        raise NotImplementedError

    def num_stages(self, anat: Anatomy) -> int | None:
        """How many distinct stages there are (None: unbounded). Fixed policies have one."""
        return 1

    @property
    def scheduled(self) -> bool:
        return False

    # -- shared machinery ---------------------------------------------------------------------
    def options(self) -> dict:
        """The policy's options as given to ``get_policy``."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def anatomy(self, model: nn.Module) -> Anatomy:
        return anatomy(model, blocks=self.blocks)

    def trainable_names(self, anat: Anatomy, stage: int = 0) -> frozenset[str]:
        """The parameter names (as ``named_parameters()`` lists them) that train at ``stage``."""
        view = _with_tied_aliases(anat)
        chosen = set(self.select(view, stage))
        for alias, listed in anat.tied.items():
            if (alias in chosen) == (listed in chosen):
                continue
            if self.tied_weights == "error":
                trained, frozen = (alias, listed) if alias in chosen else (listed, alias)
                raise FreezePolicyError(
                    f"policy {self.name!r} would train {trained} but freeze {frozen}, which is the "
                    "same tensor (tied weights); pass tied_weights='train' to train both or "
                    "tied_weights='freeze' to freeze both"
                )
            if self.tied_weights == "train":
                chosen.add(listed)
            else:
                chosen.discard(listed)
        chosen -= set(anat.tied)
        if not chosen:
            raise FreezePolicyError(
                f"policy {self.name!r} leaves nothing trainable in {anat.model_class} "
                f"at stage {stage}"
            )
        return frozenset(chosen)

    def apply(self, model: nn.Module, stage: int = 0, anat: Anatomy | None = None):
        """Set ``requires_grad`` on every parameter of ``model``; return the trainable names.

        Everything is checked before the model is touched.
        """
        names = self.trainable_names(anat or self.anatomy(model), stage)
        set_trainable(model, names)
        return names


@dataclass(kw_only=True)
class ScheduledPolicy(Policy):
    """A policy whose trainable set changes every ``every`` ``unit`` ("steps" or "epochs")."""

    every: int = 1
    unit: str = "epochs"

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.every, bool) or not isinstance(self.every, int) or self.every <= 0:
            raise FreezePolicyError(f"{self.name}: every={self.every!r} must be an integer > 0")
        if self.unit not in UNITS:
            raise FreezePolicyError(
                f"{self.name}: unit={self.unit!r} is not one of {', '.join(UNITS)}"
            )

    @property
    def scheduled(self) -> bool:
        return True

    def stage_at(self, step: int, epoch: float) -> int:
        """The stage at optimizer step ``step`` (0-based) during ``epoch`` (Trainer's float)."""
        count = step if self.unit == "steps" else int(epoch + 1e-9)
        return count // self.every


def _with_tied_aliases(anat: Anatomy) -> Anatomy:
    return anat.with_tied_aliases()


def _on_stack(policy: Policy, anat: Anatomy) -> tuple[Anatomy, frozenset[str]]:
    """The single-stack view a block policy acts on (its ``stack=`` option) and the names outside
    it; see ``Anatomy.stack_view``. A single-stack model gives itself and nothing outside."""
    return anat.stack_view(policy.stack, policy.name)


def _blocks_and_shared(anat: Anatomy, indices) -> set[str]:
    """The names of the given blocks, plus the shared parameters if any block trains."""
    names = {name for i in indices for name in anat.blocks[i]}
    return names | set(anat.shared) if names else names


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
        return _blocks_and_shared(view, range(self.n, view.depth)) | set(view.head) | outside


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
        return _blocks_and_shared(view, range(view.depth - self.n, view.depth)) | set(view.head)


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
        return _blocks_and_shared(view, range(view.depth - opened, view.depth)) | set(view.head)

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
        blocks = _blocks_and_shared(view, self.sampled_blocks(anat, stage))
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


# -- stacks and parts: presets for encoder-decoder, speech and vision-language models ----------

def _part_list(policy: str, parts) -> list[str] | None:
    if parts is None:
        return None
    parts = [parts] if isinstance(parts, str) else parts
    if not isinstance(parts, (list, tuple)) or not parts:
        raise FreezePolicyError(f"{policy}: parts={parts!r} must be a part name or a non-empty "
                                "list of them, e.g. parts=['encoder'] or ['vision_tower', "
                                "'projector']")
    return list(parts)


def _resolve_parts(policy: str, parts: list[str] | None, anat: Anatomy) -> set[str]:
    if parts is None:  # the model's only stack
        if len(anat.stacks) != 1:
            raise FreezePolicyError(
                f"{policy}: {anat.model_class} has {len(anat.stacks)} stacks "
                f"({', '.join(anat.stack_names())}); pass parts=[...] from: "
                f"{', '.join(anat.part_choices())}"
            )
        parts = [anat.stacks[0].name]
    return {name for part in parts for name in anat.part_names(part, policy)}


@register_policy("freeze_parts")
@dataclass(kw_only=True)
class FreezeParts(Policy):
    """Freezes the named parts of the model; everything else trains (or what ``policy`` trains).

    ``parts``: stack names (``encoder``, ``decoder``, ``vision_tower``, ``language_model``,
    ``text_model`` ...: the whole stack, its embeddings, blocks and top), ``<stack>.embeddings``,
    ``<stack>.blocks``, ``<stack>.top``, ``embeddings``, ``head``, ``projector`` and
    ``feature_encoder`` (see ``Anatomy.part_names``); default: the model's only stack. The
    recipes: ``parts=['encoder']`` (Whisper's ``freeze_encoder()``), ``['feature_encoder']``
    (wav2vec2's ``freeze_feature_encoder()``), ``['vision_tower']`` (ms-swift's ``freeze_vit``),
    ``['language_model', 'head']`` (``freeze_llm``), ``['projector']`` (``freeze_aligner``).

    ``policy`` composes: a policy spec (``{"name": "bottom_n", "n": 2, "stack":
    "language_model"}``) whose trainable set, at every stage of its schedule, is cut by the
    frozen parts. ``tied_weights`` and ``blocks`` are given here, not inside ``policy``.
    """

    parts: list[str] | str | None = None
    policy: dict | None = None

    def __post_init__(self):
        super().__post_init__()
        self.parts = _part_list("freeze_parts", self.parts)
        self.inner = None
        if self.policy is None:
            return
        spec = dict(self.policy) if isinstance(self.policy, dict) else None
        name = spec.pop("name", None) if spec else None
        if not isinstance(name, str):
            raise FreezePolicyError(f"freeze_parts: policy={self.policy!r} must be a mapping with "
                                    "a 'name' and that policy's options, e.g. {'name': "
                                    "'bottom_n', 'n': 2, 'stack': 'language_model'}")
        if name in ("freeze_parts", "train_parts", "auto_freeze"):
            raise FreezePolicyError(f"freeze_parts: policy {name!r} cannot be nested in "
                                    "freeze_parts; give its parts or options directly")
        passed = sorted(set(spec) & {"tied_weights", "blocks"})
        if passed:
            raise FreezePolicyError(f"freeze_parts: give {', '.join(passed)} to freeze_parts "
                                    "itself, not inside policy=")
        self.inner = get_policy(name, **spec)

    @property
    def scheduled(self) -> bool:
        return self.inner is not None and self.inner.scheduled

    def stage_at(self, step: int, epoch: float) -> int:
        return self.inner.stage_at(step, epoch) if self.scheduled else 0

    def num_stages(self, anat):
        return self.inner.num_stages(anat) if self.inner is not None else 1

    def select(self, anat, stage):
        frozen = _resolve_parts("freeze_parts", self.parts, anat)
        base = self.inner.select(anat, stage) if self.inner else set(anat.names())
        return set(base) - frozen


@register_policy("train_parts")
@dataclass(kw_only=True)
class TrainParts(Policy):
    """Trains only the named parts (names as for ``freeze_parts``); default: the head.

    ``parts=['projector']`` is LLaVA's first stage (the projector alone);
    ``['projector', 'language_model', 'head']`` its second (vision tower frozen).
    """

    parts: list[str] | str = field(default_factory=lambda: ["head"])

    def __post_init__(self):
        super().__post_init__()
        self.parts = _part_list("train_parts", self.parts)

    def select(self, anat, stage):
        return _resolve_parts("train_parts", self.parts, anat)
