"""The one place that sets ``requires_grad``, and the audit proving frozen weights stayed put."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import asdict, dataclass, field

import torch
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


@dataclass
class AuditResult:
    """Outcome of ``FrozenAudit.check``: ``passed`` is True when no checked tensor changed."""

    passed: bool
    checked: int
    moved: list[str] = field(default_factory=list)
    max_abs_diff: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


class FrozenAudit:
    """Snapshot of the parameters frozen at the start, compared bit for bit at the end.

    ``FrozenAudit(model)`` copies every parameter that does not require grad now;
    ``FrozenAudit(model, frozen=names)`` copies the named ones instead (for freeze modes in which
    frozen parameters still require grad, such as an lr=0 group). Call ``opened(names)`` whenever
    parameters start training (a schedule opened them): those are no longer frozen for the whole
    run and leave the audit. ``closed(model, names)`` starts auditing parameters a schedule froze
    during training, from their values at that step. ``check(model)`` compares with ``torch.equal``.
    """

    def __init__(self, model: nn.Module, frozen: Collection[str] | None = None):
        params = dict(model.named_parameters())
        if frozen is None:
            frozen = [name for name, param in params.items() if not param.requires_grad]
        unknown = sorted(set(frozen) - params.keys())
        if unknown:
            raise FreezePolicyError(
                f"{len(unknown)} frozen names are not parameters of {type(model).__name__}: "
                f"{', '.join(unknown[:3])}"
            )
        self.snapshot = {name: params[name].detach().clone() for name in frozen}

    def opened(self, names: Collection[str]) -> None:
        for name in names:
            self.snapshot.pop(name, None)

    def closed(self, model: nn.Module, names: Collection[str]) -> None:
        """Start auditing ``names`` from their values now (a schedule froze them)."""
        params = dict(model.named_parameters())
        for name in names:
            self.snapshot[name] = params[name].detach().clone()

    def check(self, model: nn.Module) -> AuditResult:
        params = dict(model.named_parameters())
        moved, worst = [], 0.0
        for name, before in self.snapshot.items():
            now = params[name].detach()
            if not torch.equal(now, before):
                moved.append(name)
                diff = (now.float() - before.to(now.device).float()).abs().max().item()
                worst = max(worst, diff)
        return AuditResult(not moved, len(self.snapshot), moved, worst)
