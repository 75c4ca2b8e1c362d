"""Freezing as a ``TrainerCallback``: apply a policy's stages on schedule and audit frozen weights.

``FreezeScheduleCallback(policy)`` works in a plain ``Trainer`` (pass it in ``callbacks=[...]``),
in your own ``Trainer`` subclass, and inside ``FreezeTrainer`` (which adds it for you). It

1. **prepares the optimizer** (plain ``Trainer`` only, in ``on_init_end``, before ``Trainer``
   builds its optimizer from ``requires_grad``): every parameter the policy will ever train is
   made to require grad, every other one is frozen, so ``Trainer``'s optimizer holds exactly the
   parameters that will ever train. Without this, a schedule's later stages would train nothing.
   Under DDP this also makes DDP register every parameter a later stage opens (a plain
   ``Trainer`` never re-wraps; ``FreezeTrainer`` does, see ``freeze_policies.distributed.guards``),
   and the distributed guards run here (FSDP / DeepSpeed limits, ``find_unused_parameters``).
2. **applies the stage** at the start of training and whenever ``policy.stage_at(global_step,
   epoch)`` changes (checked in ``on_step_begin`` and ``on_epoch_begin``): ``set_trainable`` with
   the stage's names, and ``grad = None`` on every parameter that is not trainable in the stage,
   so the optimizer skips it (no weight decay, no momentum step). A block that closes keeps its
   optimizer state and resumes its momentum when it opens again.
3. **checks the optimizer** holds every parameter a stage opens (a ``FreezePolicyError`` naming
   them otherwise), and, after a resume, that the optimizer state went to the parameters it was
   saved for (the optimizer groups carry ``param_names``).
4. **restores the stage from the checkpoint** on ``resume_from_checkpoint``: the stage and policy
   are saved in ``trainer_state.json`` (``stateful_callbacks``); a resume with another policy
   raises.
5. **audits** (``audit="raise"`` default, ``"log"``, ``"off"``): snapshots every parameter that is
   frozen when training starts, drops those a stage opens later, and at the end compares the rest
   with ``torch.equal``. The result (``frozen_audit_passed``, ``frozen_audit_checked``,
   ``frozen_audit_moved``, ``frozen_audit_max_abs_diff``) and the cost (``optimizer_state_bytes``
   at the end, step counters included; ``gradient_bytes`` = most gradient bytes held at an
   optimizer step) are appended to
   ``state.log_history`` and kept in ``callback.audit_result`` / ``callback.audit_metrics``; with
   ``audit="raise"`` a moved weight raises ``FrozenWeightsMovedError`` after training.
6. **keeps gradient checkpointing working** with frozen embeddings: when the model checkpoints
   activations and its input embeddings are frozen, it calls ``model.enable_input_require_grads()``
   (unless already hooked), so reentrant checkpointing neither fails with "element 0 of tensors
   does not require grad" nor silently trains nothing.

Each job past the schedule has its module, which the callback calls at its events:
``freeze_policies.training.modes`` (the freeze modes), ``resume`` (3 and 4), ``audit`` (5) and
``checkpointing`` (6). The options (``freeze_mode``, ``audit``) come as a ``FreezeOptions``
(``freeze_options=``) or as the keyword arguments of those names.
"""

from __future__ import annotations

import logging

from torch import nn
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from freeze_policies.costs.measure import gradient_bytes, optimizer_state_bytes
from freeze_policies.distributed.guards import (
    check_distributed,
    current_setup,
    trainer_find_unused_parameters,
)
from freeze_policies.policies.adaptive import AutoFreezeController
from freeze_policies.policies.base import ever_trainable_names, policy_mixes
from freeze_policies.policies.registry import policy_spec, resolve_policy
from freeze_policies.policies.trainable import check_not_peft, set_trainable
from freeze_policies.structure.discover import Anatomy
from freeze_policies.training.audit import AuditResult, FrozenAudit, audit_metrics, report_audit
from freeze_policies.training.checkpointing import ensure_input_grads
from freeze_policies.training.modes import prepare_plain_trainer, start_fixed_mode
from freeze_policies.training.options import (
    FreezeOptions,
    freeze_options_from,
    warn_option_keywords,
)
from freeze_policies.training.resume import (
    check_optimizer_holds,
    check_saved_names,
    held_names,
    restored_stage,
    saved_callback_state,
)
from freeze_policies.training.schedule_events import announce, decision_entry, stage_entry

logger = logging.getLogger("freeze_policies")

class FreezeScheduleCallback(TrainerCallback, ExportableState):
    """Applies ``policy`` (and its schedule), keeps frozen weights still, and audits them.

    ``policy``: a policy from ``get_policy``, a registered name, a ``{"name": ..., **options}``
    dict, or None (keep whatever requires grad when training starts; audit the rest).
    ``freeze_options``: a ``FreezeOptions`` (or a mapping of its fields); the callback reads its
    ``audit`` ("raise" default, "log": an ERROR, "off") and ``freeze_mode`` ("requires_grad"
    default, "zero_lr" or "zero_grad", fixed policies only). The keyword arguments ``audit=`` and
    ``freeze_mode=`` still work in its place but are deprecated (a ``FutureWarning`` once per
    process names the replacement). See the module docstring.
    """

    def __init__(
        self,
        policy=None,
        *,
        freeze_options: FreezeOptions | dict | None = None,
        audit: str | None = None,
        freeze_mode: str | None = None,
    ):
        warn_option_keywords("FreezeScheduleCallback", audit=audit, freeze_mode=freeze_mode)
        self.options = freeze_options_from(freeze_options, audit=audit, freeze_mode=freeze_mode)
        self.policy = resolve_policy(policy)
        self.options.check_policy(self.policy)
        self.audit = self.options.audit
        self.freeze_mode = self.options.freeze_mode
        self.stage: int | None = None
        self.resumed_stage: int | None = None
        self.anat: Anatomy | None = None
        self.audit_result: AuditResult | None = None
        self.audit_metrics: dict = {}
        self._model: nn.Module | None = None
        self._ever: frozenset[str] | None = None
        self._fixed: frozenset[str] = frozenset()  # policy=None: what required grad at the start
        self._names_cache: dict[int, frozenset[str]] = {}
        self._held: dict[int, str] | None = None  # id(param) -> name, for params in the optimizer
        self._auditor: FrozenAudit | None = None
        self._hooks: list = []
        self._measure_grads = False
        self._gradient_bytes = 0
        self.controller: AutoFreezeController | None = None  # adaptive policies (auto_freeze)
        # called with the model after each change of the trainable set, before the audit reads
        # it (FreezeTrainer's frozen_dtype moves, freeze_policies.training.precision)
        self.after_set_trainable = None

    # -- binding to a model -----------------------------------------------------------------
    def bind(self, model: nn.Module, anat: Anatomy | None = None) -> Anatomy | None:
        """Read the anatomy of ``model`` and validate the policy against it (once per model).

        ``anat``: the policy's anatomy of ``model`` when the caller traced it already (it is
        then not traced again)."""
        if model is self._model:
            return self.anat
        check_not_peft(model, self.policy)
        if self.policy is not None:
            self.anat = anat if anat is not None else self.policy.anatomy(model)
            self._ever = ever_trainable_names(self.policy, self.anat)
            self.trainable_at(0)  # validates options that depend on the model
            if getattr(self.policy, "adaptive", False):
                self.controller = AutoFreezeController(self.policy, self.anat)
        self._model = model
        self._names_cache = {}
        return self.anat

    def trainable_at(self, stage: int) -> frozenset[str]:
        """The names the policy trains at ``stage`` (cached)."""
        if stage not in self._names_cache:
            self._names_cache[stage] = self.policy.trainable_names(self.anat, stage)
        return self._names_cache[stage]

    def forget_stage_names(self) -> None:
        """Drop the cached ``trainable_at`` answers: the policy computes them again on next use
        (a benchmark of the uncached path calls this)."""
        self._names_cache = {}

    @property
    def ever_trainable(self) -> frozenset[str] | None:
        """Every name the policy trains at some stage (None without a policy)."""
        return self._ever

    @property
    def bound_model(self) -> nn.Module | None:
        """The model ``bind`` last read (None before)."""
        return self._model

    @property
    def current_trainable(self) -> frozenset[str]:
        """The names that train in the current stage."""
        if self.policy is None:
            return self._fixed
        return self.trainable_at(self.stage if self.stage is not None else 0)

    # -- TrainerCallback events ---------------------------------------------------------------
    def on_init_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        """Plain ``Trainer``: make exactly the ever-trainable parameters require grad, so that
        the optimizer ``Trainer`` is about to build from ``requires_grad`` holds them all, and
        so that DDP (built in ``train()``) registers them all: under DDP a plain ``Trainer``
        never re-wraps, and a parameter DDP did not register would train unsynchronised on
        each rank. Refuses what cannot work under FSDP / DeepSpeed (``distributed``)."""
        if self.policy is None or model is None:
            return
        self.bind(model)
        check_distributed(
            current_setup(trainer_find_unused_parameters(args, model)),
            policy_name=self.policy.name,
            scheduled=self.policy.scheduled,
            mixed=policy_mixes(self.policy, self.anat),
            freeze_mode=self.freeze_mode,
            rewraps=False,
        )
        prepare_plain_trainer(model, self.freeze_mode, self._ever, optimizer)

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.bind(model)
        if self.policy is None:
            self._fixed = frozenset(n for n, p in model.named_parameters() if p.requires_grad)
        self._held = held_names(optimizer, model)
        check_saved_names(optimizer, model)
        self.audit_result, self.audit_metrics, self.resumed_stage = None, {}, None
        if self.controller is not None:  # a new train() starts a new series of decisions
            self.controller = AutoFreezeController(self.policy, self.anat)

        stage = restored_stage(
            state, saved_callback_state(state, type(self).__name__), self.state()["args"],
            self.policy, self.controller,
        )
        self.resumed_stage = stage
        if stage is None:
            stage = self._stage_now(state)
        self.stage = None
        self._gradient_bytes = 0
        # Trainer's checkpointing expects an entry for every stateful callback, also when the
        # checkpoint being resumed was written without this one.
        state.stateful_callbacks.setdefault(type(self).__name__, self.state())
        if self.freeze_mode == "requires_grad":
            self.apply_stage(model, stage, state)
        else:
            self._hooks = start_fixed_mode(
                model, self.freeze_mode, self.trainable_at(0), optimizer,
                kwargs.get("lr_scheduler"),
            )
            self.stage = 0
            self._measure_grads = True
        ensure_input_grads(model, self.anat, self.current_trainable)
        if self.audit != "off":
            frozen = [n for n, _ in model.named_parameters() if n not in self.current_trainable]
            self._auditor = FrozenAudit(model, frozen=frozen)

    def on_epoch_begin(self, args, state, control, model=None, **kwargs):
        self._follow_schedule(model, state)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self._follow_schedule(model, state)

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.controller is not None:  # gradients are complete (accumulated, all-reduced)
            self.controller.observe(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.controller is None:
            return
        decisions = len(self.controller.decisions)
        self.controller.end_of_step(state.global_step, model)
        if len(self.controller.decisions) > decisions:  # the new depth applies from the next step
            record = self.controller.decisions[-1]
            state.log_history.append(dict(record))
            entry = decision_entry(self.policy, self.anat, model, record, self.stage or 0,
                                   self.trainable_at(record["auto_freeze_depth"]))
            state.log_history.append(entry)  # and one console line (schedule_events)
            announce(state, entry)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self._measure_grads:  # the gradient set is fixed within a stage: measure it once
            self._gradient_bytes = max(self._gradient_bytes, gradient_bytes(model))
            self._measure_grads = False

    def on_train_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        if self.freeze_mode != "requires_grad":  # the policy's view again, for summaries
            set_trainable(model, self.trainable_at(0))
        metrics = {}
        if self._auditor is not None:
            self.audit_result = self._auditor.check(model)
            self._auditor = None
            metrics = audit_metrics(self.audit_result)
        metrics["optimizer_state_bytes"] = (
            optimizer_state_bytes(optimizer, include_scalars=True) if optimizer else 0
        )
        metrics["gradient_bytes"] = self._gradient_bytes
        self.audit_metrics = metrics
        state.log_history.append({**metrics, "step": state.global_step})
        report_audit(self.audit_result, self.audit, self.freeze_mode)

    # -- ExportableState: what a checkpoint keeps ---------------------------------------------
    def state(self) -> dict:
        return {
            "args": {
                "policy": policy_spec(self.policy),
                "audit": self.audit,
                "freeze_mode": self.freeze_mode,
            },
            "attributes": {
                "stage": self.stage,
                **({"auto_freeze": self.controller.state()} if self.controller else {}),
            },
        }

    # -- the schedule -------------------------------------------------------------------------
    def _stage_now(self, state) -> int:
        if self.policy is None or not self.policy.scheduled:
            return 0
        if self.controller is not None:
            return self.controller.depth
        return self.policy.stage_at(state.global_step, state.epoch or 0.0)

    def _follow_schedule(self, model, state):
        if self.freeze_mode != "requires_grad" or self.policy is None or not self.policy.scheduled:
            return
        stage = self._stage_now(state)
        if stage != self.stage:
            self.apply_stage(model, stage, state)

    def apply_stage(self, model: nn.Module, stage: int, state) -> None:
        """Open exactly the stage's parameters; drop the gradients of all others (the schedule
        calls this at each stage change; ``state`` is the ``TrainerState`` it logs to)."""
        names = self.current_trainable if self.policy is None else self.trainable_at(stage)
        what = f"stage {stage} of {self.policy.name!r}" if self.policy else "training"
        check_optimizer_holds(names, self._held, what)
        before = {n for n, p in model.named_parameters() if p.requires_grad}
        set_trainable(model, names)
        for name, param in model.named_parameters():
            if name not in names:
                param.grad = None
        if self.after_set_trainable is not None:
            self.after_set_trainable(model)
        if self._auditor is not None:
            self._auditor.opened(names)
            if self.stage is not None:  # frozen from now on: bit-identical from this step
                self._auditor.closed(model, before - names)
        previous, self.stage = self.stage, stage
        self._measure_grads = True
        if previous != stage and self.policy is not None:
            # a scheduled policy's start and stage changes print one line (an auto_freeze stage
            # change follows its decision, which printed it)
            shown = self.policy.scheduled and (previous is None or self.controller is None)
            entry = stage_entry(self.policy, self.anat, model, stage, state.global_step,
                                None if previous is None else self.trainable_at(previous), names,
                                announced=shown)
            state.log_history.append(entry)
            if shown:
                announce(state, entry)


def find_freeze_callback(trainer) -> FreezeScheduleCallback | None:
    """The ``FreezeScheduleCallback`` registered with ``trainer`` (None if there is none)."""
    found = [c for c in trainer.callback_handler.callbacks if isinstance(c, FreezeScheduleCallback)]
    return found[-1] if found else None


__all__ = ["FreezeScheduleCallback", "find_freeze_callback"]
