"""Named layer-freezing policies for Hugging Face models.

>>> policy = get_policy("bottom_n", n=4)
>>> policy.apply(model)          # sets requires_grad on every parameter
>>> print(summarize(model))      # per-group trainable / total table
>>> trainer = FreezeTrainer(model=model, args=args, train_dataset=ds, freeze_policy=policy)

``FreezeTrainer``, ``FreezeScheduleCallback`` and the optimizer helpers import ``transformers``'
``Trainer``; they are loaded on first use, so ``import freeze_policies`` stays light.
"""

from freeze_policies.anatomy import Anatomy, anatomy
from freeze_policies.apply import AuditResult, FrozenAudit, set_trainable, trainable_names
from freeze_policies.errors import FreezePolicyError, FrozenWeightsMovedError
from freeze_policies.policies import Policy, ScheduledPolicy
from freeze_policies.registry import get_policy, list_policies, policy_options, register_policy
from freeze_policies.summary import Summary, summarize

_LAZY = {
    "FreezeTrainer": "freeze_policies.trainer",
    "FreezeScheduleCallback": "freeze_policies.callbacks",
    "FREEZE_MODES": "freeze_policies.optim",
    "build_param_groups": "freeze_policies.optim",
    "create_optimizer": "freeze_policies.optim",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'freeze_policies' has no attribute {name!r}")


__all__ = [
    "FREEZE_MODES",
    "Anatomy",
    "AuditResult",
    "FreezePolicyError",
    "FreezeScheduleCallback",
    "FreezeTrainer",
    "FrozenAudit",
    "FrozenWeightsMovedError",
    "Policy",
    "ScheduledPolicy",
    "Summary",
    "anatomy",
    "build_param_groups",
    "create_optimizer",
    "get_policy",
    "list_policies",
    "policy_options",
    "register_policy",
    "set_trainable",
    "summarize",
    "trainable_names",
]

# Cost preview (FLOP model and byte counts) and the measurements the benchmark uses.
from freeze_policies.costs import (  # noqa: E402
    CostPreview,
    gradient_bytes,
    optimizer_state_bytes,
    predict_cost,
    saved_for_backward_bytes,
)

__all__ += [
    "CostPreview",
    "gradient_bytes",
    "optimizer_state_bytes",
    "predict_cost",
    "saved_for_backward_bytes",
]
