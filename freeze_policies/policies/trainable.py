"""The one place that sets ``requires_grad``, and the guard against freezing a PEFT model."""

from __future__ import annotations

from collections.abc import Collection

from torch import nn

from freeze_policies.errors import FreezePolicyError


def set_trainable(model: nn.Module, trainable: Collection[str]) -> None:
    """Make exactly the parameters named in ``trainable`` require grad; freeze every other one.

    Names are those ``model.named_parameters()`` gives. Unknown names raise before anything
    changes.
    """
    trainable = set(trainable)
    params = dict(model.named_parameters())
    unknown = sorted(trainable - params.keys())
    if unknown:
        raise FreezePolicyError(
            f"{len(unknown)} trainable names are not parameters of {type(model).__name__}: "
            f"{', '.join(unknown[:3])}"
        )
    for name, param in params.items():
        param.requires_grad_(name in trainable)


def trainable_names(model: nn.Module) -> frozenset[str]:
    """The names of the parameters of ``model`` that require grad now."""
    return frozenset(name for name, param in model.named_parameters() if param.requires_grad)


def is_peft_model(model: nn.Module) -> bool:
    """True for a ``peft.PeftModel`` or a transformers model with PEFT adapters loaded."""
    if getattr(model, "_hf_peft_config_loaded", False):
        return True
    try:
        from peft import PeftModel
    except ImportError:  # peft not installed: nothing can be a PeftModel
        return False
    return isinstance(model, PeftModel)


def check_not_peft(model: nn.Module, policy) -> None:
    """Refuse a freeze policy on a PEFT model: PEFT already decides what trains."""
    if policy is not None and is_peft_model(model):
        raise FreezePolicyError(
            f"freeze_policy={policy.name!r} cannot be combined with a PEFT model "
            f"({type(model).__name__}): PEFT already decides what trains; pass freeze_policy=None "
            "or apply the policy to a model without adapters"
        )
