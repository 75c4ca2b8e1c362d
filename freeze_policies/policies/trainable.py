"""The one place that sets ``requires_grad`` for training (``costs.budget.measure_step_seconds``
flips it only around a timed step and restores it); how a policy composes with a PEFT model, and the
trainer's guard against one.

A policy applied to a PEFT model (``Policy.apply``: a ``peft.PeftModel``, or a transformers model
with adapters loaded) chooses *which blocks' adapters* train: of the names the policy trains, only
PEFT's own parameters (LoRA's ``lora_A`` / ``lora_B``, IA3's vectors, the ``modules_to_save``
copies, prompt encoders: every parameter with an adapter's name in its path) require grad. The
base weights (``...base_layer.weight``) and PEFT's ``original_module`` copies never do, and a
``modules_to_save`` copy of the head trains when the policy trains the head. A policy whose blocks
hold no adapter parameter is an error. ``FreezeTrainer`` still refuses a policy beside PEFT
(``check_not_peft``): its optimizer groups, audit and schedules are built for base weights.
"""

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


def adapter_names(model: nn.Module) -> frozenset[str]:
    """The names of PEFT's own parameters in ``model``: those with one of its adapters' names
    (``peft_config``'s keys, e.g. ``default``) as a component of their path."""
    adapters = set(getattr(model, "peft_config", None) or {})
    return frozenset(
        name for name, _ in model.named_parameters() if adapters & set(name.split("."))
    )


def compose_with_peft(model: nn.Module, names: Collection[str], policy_name: str) -> frozenset[str]:
    """What a policy that trains ``names`` trains on a PEFT model: the adapter parameters among
    them (module docstring); a one-line error when there are none."""
    adapters = adapter_names(model)
    composed = frozenset(set(names) & adapters)
    if not composed:
        raise FreezePolicyError(
            f"policy {policy_name!r} on the PEFT model {type(model).__name__} trains no adapter "
            f"parameter: the {len(names)} parameters it chooses hold none of PEFT's "
            f"{len(adapters)} (base weights stay frozen under PEFT); choose blocks that have "
            "adapters, or target the adapters at the blocks the policy trains"
        )
    return composed


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
