"""``FreezeOptions``: every option of freezing but the policy, as one validated dataclass.

``FreezeTrainer``, ``FreezeScheduleCallback`` and ``optim.create_optimizer`` take it as
``freeze_options=`` (a ``FreezeOptions`` or a mapping of its fields); their older keyword
arguments (``freeze_mode=``, ``audit=``, ...) still work and build one. Each value is checked
once, in ``__post_init__``: a bad value raises ``FreezePolicyError`` naming the valid choices.

The policy is not a field: it is a ``Policy`` object (or a name / spec), chosen per run and
sometimes by code (``freeze_policies.costs.budget``), and it stays the ``freeze_policy`` argument.
``check_policy(policy)`` holds the checks that need both. Checks that need the ``Trainer``
(mixed precision, FSDP / DeepSpeed, the LR scheduler) stay where that is known.

The field names are the launcher's flag names and every field has ``metadata["help"]``, so
``HfArgumentParser`` can parse ``FreezeOptions`` itself, and ``FreezeOptions.from_dict(
vars(arguments), ignore_unknown=True)`` picks them out of a wider arguments object.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from freeze_policies.errors import FreezePolicyError
from freeze_policies.training.audit import AUDIT_MODES, check_audit_mode
from freeze_policies.training.modes import FREEZE_MODES, check_freeze_mode, check_mode_policy
from freeze_policies.training.precision import check_frozen_dtype, dtype_name


@dataclass
class FreezeOptions:
    """How a policy is applied: freeze mode, layer-wise learning rates, audit, prefix cache and
    the dtype of frozen weights. Defaults: plain freezing, one learning rate, audit raises."""

    freeze_mode: str = field(
        default="requires_grad",
        metadata={"help": " | ".join(FREEZE_MODES) + ": how frozen parameters are kept still"},
    )
    layer_lr_decay: float = field(
        default=1.0, metadata={"help": "lr factor per block downwards, in (0, 1]"}
    )
    head_lr_multiplier: float = field(default=1.0, metadata={"help": "lr factor for the head"})
    audit: str = field(
        default="raise",
        metadata={"help": "frozen-weights audit when a frozen weight moved: "
                  + " | ".join(AUDIT_MODES)},
    )
    cache_frozen_prefix: bool = field(
        default=False,
        metadata={"help": "cache the frozen prefix's output per example and train the top from "
                  "it (the prefix runs in eval mode); needs a policy with a frozen prefix"},
    )
    prefix_cache_dir: str | None = field(
        default=None, metadata={"help": "keep the prefix cache on disk here instead of in RAM"}
    )
    frozen_prefix_eval: bool = field(
        default=False,
        metadata={"help": "run the frozen prefix in eval mode without caching (the uncached "
                  "run a cached one matches)"},
    )
    frozen_dtype: str | None = field(
        default=None,
        metadata={"help": "bfloat16 | float16: store frozen weights in it, trainable ones in "
                  "float32 (needs bf16 or fp16 training); default: dtypes as loaded"},
    )

    def __post_init__(self):
        check_freeze_mode(self.freeze_mode)
        check_audit_mode(self.audit)
        check_lr_options(self.layer_lr_decay, self.head_lr_multiplier)
        for name in ("cache_frozen_prefix", "frozen_prefix_eval"):
            if not isinstance(getattr(self, name), bool):
                raise FreezePolicyError(f"{name}={getattr(self, name)!r} must be True or False")
        # a torch dtype is accepted too, and kept by name
        self.frozen_dtype = dtype_name(check_frozen_dtype(self.frozen_dtype))
        if self.cache_frozen_prefix and self.freeze_mode != "requires_grad":
            raise FreezePolicyError(
                f"cache_frozen_prefix needs freeze_mode='requires_grad', not "
                f"{self.freeze_mode!r}: the other modes compute gradients through every frozen "
                "weight"
            )

    @property
    def torch_frozen_dtype(self) -> torch.dtype | None:
        """``frozen_dtype`` as a torch dtype (None: dtypes as loaded)."""
        return check_frozen_dtype(self.frozen_dtype)

    @property
    def uses_prefix(self) -> bool:
        """Whether the frozen prefix runs in eval mode (cached or not)."""
        return self.cache_frozen_prefix or self.frozen_prefix_eval

    def check_policy(self, policy) -> None:
        """The checks that need the policy: ``zero_lr`` / ``zero_grad`` need a fixed one, the
        prefix options a policy with a frozen prefix."""
        check_mode_policy(self.freeze_mode, policy)
        if self.uses_prefix and policy is None:
            raise FreezePolicyError(
                "cache_frozen_prefix / frozen_prefix_eval need a freeze_policy with a frozen "
                "prefix (e.g. bottom_n, all_but_head, gradual_unfreeze)"
            )

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping, *, ignore_unknown: bool = False) -> FreezeOptions:
        """Build from a mapping of field names; unknown keys raise unless ``ignore_unknown``
        (for picking the freeze options out of a launcher's wider arguments)."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown and not ignore_unknown:
            raise FreezePolicyError(
                f"FreezeOptions has no option {', '.join(map(repr, unknown))}; its options: "
                f"{', '.join(names)}"
            )
        return cls(**{name: values[name] for name in names if name in values})


def freeze_options_from(freeze_options, **keywords) -> FreezeOptions:
    """The options a ``freeze_options=`` argument and the older keyword arguments describe.

    ``keywords`` are the keyword arguments as given, None meaning "not given". With
    ``freeze_options`` (a ``FreezeOptions`` or a mapping) none may be given as well: one source
    per run, never two that could disagree.
    """
    given = {name: value for name, value in keywords.items() if value is not None}
    if freeze_options is None:
        return FreezeOptions(**given)
    if isinstance(freeze_options, Mapping):
        freeze_options = FreezeOptions.from_dict(freeze_options)
    elif not isinstance(freeze_options, FreezeOptions):
        raise FreezePolicyError(
            f"freeze_options={freeze_options!r} must be a FreezeOptions or a mapping of its fields"
        )
    if given:
        raise FreezePolicyError(
            f"{', '.join(sorted(given))} given both as keyword and in freeze_options; give "
            "each option once, in freeze_options"
        )
    return freeze_options


def check_lr_options(layer_lr_decay: float, head_lr_multiplier: float) -> None:
    """Raise ``FreezePolicyError`` unless 0 < layer_lr_decay <= 1 and head_lr_multiplier > 0."""
    if (
        isinstance(layer_lr_decay, bool)
        or not isinstance(layer_lr_decay, (int, float))
        or not 0 < layer_lr_decay <= 1
    ):
        raise FreezePolicyError(
            f"layer_lr_decay={layer_lr_decay!r} must be a number in (0, 1] "
            "(1 = same rate for every layer; ULMFiT used 1/2.6)"
        )
    if (
        isinstance(head_lr_multiplier, bool)
        or not isinstance(head_lr_multiplier, (int, float))
        or not math.isfinite(head_lr_multiplier)
        or head_lr_multiplier <= 0
    ):
        raise FreezePolicyError(
            f"head_lr_multiplier={head_lr_multiplier!r} must be a finite number > 0"
        )


_WARNED: set[tuple[str, str]] = set()  # (class, keyword) already warned about in this process


def warn_option_keywords(owner: str, **keywords) -> None:
    """A ``FutureWarning``, once per process for each of ``owner``'s keyword arguments given
    (not None), that names its replacement: ``freeze_options=FreezeOptions(name=...)``. The
    keywords still work (they build the ``FreezeOptions``); ``FreezeOptions`` is the one way the
    docs teach, and the keywords will go."""
    for name, value in keywords.items():
        if value is None or (owner, name) in _WARNED:
            continue
        _WARNED.add((owner, name))
        warnings.warn(
            f"{owner}({name}=...) is deprecated; pass freeze_options=FreezeOptions({name}=...) "
            "instead",
            FutureWarning,
            stacklevel=3,
        )
