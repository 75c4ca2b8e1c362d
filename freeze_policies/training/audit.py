"""The frozen-weights audit: a snapshot of what is frozen, compared bit for bit after training.

Under sharding the audit compares whole values, gathered on every rank (``whole_values``): a
DeepSpeed ZeRO-3 parameter is an empty placeholder outside its forward (gathered one parameter at a
time with ``deepspeed.zero.GatheredParameters``), an FSDP1 parameter is a view of this rank's
shard (gathered with ``FullyShardedDataParallel.summon_full_params``, no write-back), an FSDP2
parameter is a DTensor (``full_tensor()``). Those snapshots are kept on the CPU, so the audit
holds no whole copy of the frozen weights in accelerator memory. The gathers are collectives:
every rank takes the snapshot and the check, as the callback does on every process. Names are
compared without FSDP1's and activation checkpointing's wrapper prefixes.

``audit`` says what a failed audit does: ``"raise"`` (default: ``FrozenWeightsMovedError`` after
training, the model left as trained), ``"log"`` (an ERROR in the ``freeze_policies`` logger) or
``"off"`` (no snapshot at all). ``audit_metrics`` turns a result into the ``frozen_audit_*``
entries that land in ``log_history`` and ``TrainOutput.metrics``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from freeze_policies.errors import FreezePolicyError, FrozenWeightsMovedError

logger = logging.getLogger("freeze_policies")

AUDIT_MODES = ("raise", "log", "off")


def check_audit_mode(audit: str) -> None:
    if audit not in AUDIT_MODES:
        raise FreezePolicyError(f"audit={audit!r} is not one of {', '.join(AUDIT_MODES)}")


# What FSDP1 and activation checkpointing add to parameter names outside a summon.
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def clean_name(name: str) -> str:
    """``name`` without the wrapper prefixes FSDP1 and activation checkpointing insert."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def _is_fsdp1(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # a torch built without distributed
        return False
    return any(isinstance(module, FullyShardedDataParallel) for module in model.modules())


@contextlib.contextmanager
def _fsdp1_unsharded(model: nn.Module) -> Iterator[None]:
    if not _is_fsdp1(model):
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(model, writeback=False):
        yield


def _copy(param: torch.Tensor) -> torch.Tensor:
    """A copy of ``param``'s whole value: ZeRO-3 gathered, a DTensor's full tensor (both moved
    to the CPU), any other tensor as it is, on its device."""
    if hasattr(param, "ds_id"):  # a DeepSpeed ZeRO-3 parameter: a placeholder until gathered
        import deepspeed

        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            return param.detach().clone().cpu()
    full_tensor = getattr(param, "full_tensor", None)
    if callable(full_tensor):  # an FSDP2 DTensor
        return full_tensor().detach().clone().cpu()
    return param.detach().clone()


def whole_values(model: nn.Module, names: Collection[str]) -> dict[str, torch.Tensor]:
    """Copies of the whole values of the parameters ``names`` (wrapper prefixes removed), gathered
    when sharded (see the module docstring; a collective there: call it on every rank)."""
    wanted = {clean_name(name) for name in names}
    with _fsdp1_unsharded(model):
        return {
            clean: _copy(param)
            for name, param in model.named_parameters()
            if (clean := clean_name(name)) in wanted
        }


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
        params = {clean_name(name): param for name, param in model.named_parameters()}
        if frozen is None:
            frozen = [name for name, param in params.items() if not param.requires_grad]
        frozen = {clean_name(name) for name in frozen}
        unknown = sorted(frozen - params.keys())
        if unknown:
            raise FreezePolicyError(
                f"{len(unknown)} frozen names are not parameters of {type(model).__name__}: "
                f"{', '.join(unknown[:3])}"
            )
        self.snapshot = whole_values(model, frozen)

    def opened(self, names: Collection[str]) -> None:
        for name in names:
            self.snapshot.pop(clean_name(name), None)

    def closed(self, model: nn.Module, names: Collection[str]) -> None:
        """Start auditing ``names`` from their values now (a schedule froze them)."""
        self.snapshot.update(whole_values(model, names))

    def check(self, model: nn.Module) -> AuditResult:
        now = whole_values(model, self.snapshot)
        moved, worst = [], 0.0
        for name, before in self.snapshot.items():
            after = now[name]
            if not torch.equal(after, before.to(after.device)):
                moved.append(name)
                diff = (after.float() - before.to(after.device).float()).abs().max().item()
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
