"""Named layer-freezing policies for Hugging Face models.

>>> policy = get_policy("bottom_n", n=4)
>>> policy.apply(model)          # sets requires_grad on every parameter
>>> print(summarize(model))      # per-group trainable / total table
>>> print(predict_cost(model))   # what the current trainable set costs per step, predicted
>>> trainer = FreezeTrainer(model=model, args=args, train_dataset=ds, freeze_policy=policy,
...                         freeze_options=FreezeOptions(layer_lr_decay=0.8))

``FreezeTrainer``, ``FreezeScheduleCallback`` and the optimizer helpers import ``transformers``'
``Trainer``; they are loaded on first use, so ``import freeze_policies`` stays light.
"""

import importlib

from freeze_policies.costs.flops import CostPreview, predict_cost
from freeze_policies.costs.measure import (
    gradient_bytes,
    optimizer_state_bytes,
    saved_for_backward_bytes,
)
from freeze_policies.costs.summary import Summary, summarize
from freeze_policies.errors import FreezePolicyError, FrozenWeightsMovedError
from freeze_policies.policies import named, parts  # noqa: F401  (importing them registers their policies)
from freeze_policies.policies.adaptive import AutoFreeze, AutoFreezeController
from freeze_policies.policies.base import Policy, ScheduledPolicy
from freeze_policies.policies.registry import (
    get_policy,
    list_policies,
    policy_options,
    register_policy,
)
from freeze_policies.policies.trainable import set_trainable, trainable_names
from freeze_policies.structure.discover import Anatomy, anatomy
from freeze_policies.training.audit import AuditResult, FrozenAudit
from freeze_policies.training.modes import FREEZE_MODES
from freeze_policies.training.options import FreezeOptions

_LAZY = {
    "FreezeTrainer": "freeze_policies.training.trainer",
    "FreezeScheduleCallback": "freeze_policies.training.callbacks",
    "PrefixCache": "freeze_policies.training.prefix_cache",
    "build_param_groups": "freeze_policies.training.optim",
    "create_optimizer": "freeze_policies.training.optim",
    "apply_freeze_delta": "freeze_policies.training.delta",
    "load_freeze_delta": "freeze_policies.training.delta",
    "save_freeze_delta": "freeze_policies.training.delta",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'freeze_policies' has no attribute {name!r}")


__all__ = [
    "FREEZE_MODES",
    "Anatomy",
    "AuditResult",
    "AutoFreeze",
    "AutoFreezeController",
    "CostPreview",
    "FreezePolicyError",
    "FreezeOptions",
    "FreezeScheduleCallback",
    "FreezeTrainer",
    "FrozenAudit",
    "FrozenWeightsMovedError",
    "Policy",
    "PrefixCache",
    "ScheduledPolicy",
    "Summary",
    "anatomy",
    "apply_freeze_delta",
    "build_param_groups",
    "create_optimizer",
    "get_policy",
    "gradient_bytes",
    "list_policies",
    "load_freeze_delta",
    "optimizer_state_bytes",
    "policy_options",
    "predict_cost",
    "register_policy",
    "save_freeze_delta",
    "saved_for_backward_bytes",
    "set_trainable",
    "summarize",
    "trainable_names",
]
