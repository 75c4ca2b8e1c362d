"""The frozen-weights audit: a snapshot of what is frozen, compared bit for bit after training.

``audit`` says what a failed audit does: ``"raise"`` (default: ``FrozenWeightsMovedError`` after
training, the model left as trained), ``"log"`` (an ERROR in the ``freeze_policies`` logger) or
``"off"`` (no snapshot at all). ``audit_metrics`` turns a result into the ``frozen_audit_*``
entries that land in ``log_history`` and ``TrainOutput.metrics``.
"""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from freeze_policies.errors import FreezePolicyError, FrozenWeightsMovedError

logger = logging.getLogger("freeze_policies")

AUDIT_MODES = ("raise", "log", "off")


def check_audit_mode(audit: str) -> None:
    if audit not in AUDIT_MODES:
        raise FreezePolicyError(f"audit={audit!r} is not one of {', '.join(AUDIT_MODES)}")


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


def audit_metrics(result: AuditResult) -> dict:
    """The ``frozen_audit_*`` metrics of ``result``."""
    return {
        "frozen_audit_passed": result.passed,
        "frozen_audit_checked": result.checked,
        "frozen_audit_moved": len(result.moved),
        "frozen_audit_max_abs_diff": result.max_abs_diff,
    }


def report_audit(result: AuditResult | None, audit: str, freeze_mode: str) -> None:
    """Log a passed audit; raise ``FrozenWeightsMovedError`` (``audit="raise"``) or log an ERROR
    (``"log"``) for a failed one."""
    if result is None or result.passed:
        if result is not None:
            logger.info("freeze audit passed: %d frozen parameters unchanged", result.checked)
        return
    message = (
        f"freeze audit failed: {len(result.moved)} of {result.checked} frozen parameters moved "
        f"during training (freeze_mode={freeze_mode!r}, max |diff| "
        f"{result.max_abs_diff:.3g}): {', '.join(result.moved[:3])}"
    )
    if audit == "raise":
        raise FrozenWeightsMovedError(message)
    logger.error(message)
