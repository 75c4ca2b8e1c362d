"""Named layer-freezing policies for Hugging Face models.

>>> policy = get_policy("bottom_n", n=4)
>>> policy.apply(model)          # sets requires_grad on every parameter
>>> print(summarize(model))      # per-group trainable / total table
"""

from freeze_policies.anatomy import Anatomy, anatomy
from freeze_policies.apply import AuditResult, FrozenAudit, set_trainable, trainable_names
from freeze_policies.errors import FreezePolicyError
from freeze_policies.policies import Policy, ScheduledPolicy
from freeze_policies.registry import get_policy, list_policies, policy_options, register_policy
from freeze_policies.summary import Summary, summarize

__all__ = [
    "Anatomy",
    "AuditResult",
    "FreezePolicyError",
    "FrozenAudit",
    "Policy",
    "ScheduledPolicy",
    "Summary",
    "anatomy",
    "get_policy",
    "list_policies",
    "policy_options",
    "register_policy",
    "set_trainable",
    "summarize",
    "trainable_names",
]
