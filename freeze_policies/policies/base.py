"""The ``Policy`` base classes, and what every consumer of a policy asks of it.

A policy is a pure function of a model's ``Anatomy`` and a stage number to the set of parameter
names that train. Policies never touch a model themselves: ``Policy.apply`` hands the answer to
``trainable.set_trainable``, the one place that sets ``requires_grad``.

Conventions shared by every policy:

- Tied weights: when a policy would train one name of a tied tensor and freeze another (say the
  head's ``lm_head.weight`` and the input embedding it is tied to), it raises, unless
  ``tied_weights="train"`` (train the tensor) or ``tied_weights="freeze"`` (freeze it) says which.
- ``blocks=`` overrides block discovery (see ``freeze_policies.structure.discover``).
- A policy that leaves nothing trainable raises, and so does one that trains only head
  parameters the model's output never reads (``Anatomy.head_unread``: a bare encoder's pooler
  under mean pooling), before any training.

Scheduled policies move to the next stage every ``every`` steps or epochs;
``stage_at(step, epoch)`` says which stage a point in training is in. ``ever_trainable_names``
is the union over all stages (who the optimizer holds); ``policy_mixes`` says whether some stage
leaves frozen and trainable parameters side by side (the FSDP1 guard).

This module imports neither the registry nor the named policies: ``registry`` imports it (to
recognise a policy), and ``policies`` / ``parts`` / ``adaptive`` subclass it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from freeze_policies.errors import FreezePolicyError
from freeze_policies.policies.trainable import compose_with_peft, is_peft_model, set_trainable
from freeze_policies.structure.discover import Anatomy, anatomy, check_blocks_option

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
        view = anat.with_tied_aliases()
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
        if chosen and chosen <= set(anat.head_unread):
            raise FreezePolicyError(
                f"policy {self.name!r} would train only {', '.join(sorted(chosen))} of "
                f"{anat.model_class} at stage {stage}, which its output never reads (a pooler "
                "that mean pooling skips), so no gradient could reach what trains; train blocks "
                "too (top_n, or train_parts with parts=['attention', 'mlp'])"
            )
        if not chosen:
            raise FreezePolicyError(
                f"policy {self.name!r} leaves nothing trainable in {anat.model_class} "
                f"at stage {stage}"
            )
        return frozenset(chosen)

    def apply(self, model: nn.Module, stage: int = 0, anat: Anatomy | None = None):
        """Set ``requires_grad`` on every parameter of ``model``; return the trainable names.

        Everything is checked before the model is touched. On a PEFT model the policy chooses
        which blocks' adapters train; base weights stay frozen
        (``freeze_policies.policies.trainable.compose_with_peft``).
        """
        names = self.trainable_names(anat or self.anatomy(model), stage)
        if is_peft_model(model):
            names = compose_with_peft(model, names, self.name)
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

# Stages scanned to find everything an unbounded schedule (lisa) can open; the scan stops as soon
# as every parameter has been seen, which for lisa takes a few dozen stages.
MAX_STAGES_SCANNED = 4096


def ever_trainable_names(policy: Policy, anat: Anatomy) -> frozenset[str]:
    """Every parameter name ``policy`` trains at some stage (the union over all its stages)."""
    stages = policy.num_stages(anat)
    everything = set(anat.names())
    union: set[str] = set()
    limit = stages if stages is not None else MAX_STAGES_SCANNED
    for stage in range(limit):
        union |= policy.trainable_names(anat, stage)
        if union >= everything:
            break
    return frozenset(union)


def policy_mixes(policy: Policy, anat: Anatomy) -> bool:
    """Whether some stage of ``policy`` trains some parameters of ``anat`` and freezes others."""
    everything = set(anat.names()) - set(anat.tied)
    stages = policy.num_stages(anat)
    for stage in range(min(stages or MAX_STAGES_SCANNED, MAX_STAGES_SCANNED)):
        if set(policy.trainable_names(anat, stage)) != everything:
            return True
        if stages is None:  # unbounded schedules (lisa) never train every block at once
            break
    return False


def blocks_and_shared(anat: Anatomy, indices) -> set[str]:
    """The names of the given blocks, plus the shared parameters if any block trains."""
    names = {name for i in indices for name in anat.blocks[i]}
    return names | set(anat.shared) if names else names
