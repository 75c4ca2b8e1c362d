"""Freezing as a ``TrainerCallback``: apply a policy's stages on schedule and audit frozen weights.

``FreezeScheduleCallback(policy)`` works in a plain ``Trainer`` (pass it in ``callbacks=[...]``),
in your own ``Trainer`` subclass, and inside ``FreezeTrainer`` (which adds it for you). It

1. **prepares the optimizer** (plain ``Trainer`` only, in ``on_init_end``, before ``Trainer``
   builds its optimizer from ``requires_grad``): every parameter the policy will ever train is
   made to require grad, every other one is frozen, so ``Trainer``'s optimizer holds exactly the
   parameters that will ever train. Without this, a schedule's later stages would train nothing.
   Under DDP this also makes DDP register every parameter a later stage opens (a plain
   ``Trainer`` never re-wraps; ``FreezeTrainer`` does, see ``freeze_policies.distributed``), and
   the distributed guards run here (FSDP / DeepSpeed limits, ``find_unused_parameters``).
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

``freeze_mode`` says how frozen parameters are kept still: ``requires_grad`` (default: they do not
require grad, have no gradient and, with ``FreezeTrainer``, no optimizer state), ``zero_lr`` (they
require grad and sit in lr=0 optimizer groups; needs ``FreezeTrainer`` or
``optim.create_optimizer``), ``zero_grad`` (they require grad and their gradients are zeroed after
backward by a post-accumulate-grad hook). The last two support fixed policies only; they make
every parameter require grad during ``train()`` and set the policy's ``requires_grad`` back at the
end.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping

from torch import nn
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from freeze_policies.adaptive import AutoFreezeController
from freeze_policies.anatomy import Anatomy
from freeze_policies.apply import AuditResult, FrozenAudit, set_trainable
from freeze_policies.costs import gradient_bytes, optimizer_state_bytes
from freeze_policies.distributed import (
    check_distributed,
    current_setup,
    policy_mixes,
    trainer_find_unused_parameters,
)
from freeze_policies.errors import FreezePolicyError, FrozenWeightsMovedError
from freeze_policies.optim import check_freeze_mode, ever_trainable_names
from freeze_policies.policies import Policy
from freeze_policies.registry import get_policy

logger = logging.getLogger("freeze_policies")

AUDIT_MODES = ("raise", "log", "off")


def resolve_policy(spec) -> Policy | None:
    """A ``Policy`` from a policy, a registered name, or a ``{"name": ..., **options}`` mapping."""
    if spec is None or isinstance(spec, Policy):
        return spec
    if isinstance(spec, str):
        return get_policy(spec)
    if isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        options = dict(spec)
        return get_policy(options.pop("name"), **options)
    raise FreezePolicyError(
        f"freeze_policy={spec!r} is not a policy: pass get_policy(...), a policy name, "
        "or a dict {'name': ..., **options}"
    )


def policy_spec(policy: Policy | None) -> dict | None:
    """The JSON form of a policy: ``{"name": ..., **options}`` (what ``resolve_policy`` takes)."""
    if policy is None:
        return None
    return json.loads(json.dumps({"name": policy.name, **policy.options()}, default=str))


def check_audit_mode(audit: str) -> None:
    if audit not in AUDIT_MODES:
        raise FreezePolicyError(f"audit={audit!r} is not one of {', '.join(AUDIT_MODES)}")


def is_peft_model(model: nn.Module) -> bool:
    """True for a ``peft.PeftModel`` or a transformers model with PEFT adapters loaded."""
    if getattr(model, "_hf_peft_config_loaded", False):
        return True
    try:
        from peft import PeftModel
    except ImportError:  # peft not installed: nothing can be a PeftModel
        return False
    return isinstance(model, PeftModel)


def check_not_peft(model: nn.Module, policy: Policy | None) -> None:
    if policy is not None and is_peft_model(model):
        raise FreezePolicyError(
            f"freeze_policy={policy.name!r} cannot be combined with a PEFT model "
            f"({type(model).__name__}): PEFT already decides what trains; pass freeze_policy=None "
            "or apply the policy to a model without adapters"
        )


def zero_grad_hooks(model: nn.Module, frozen: set[str]) -> list:
    """``freeze_mode="zero_grad"``: zero the gradients of ``frozen`` after each backward."""

    def zero(param):
        param.grad.zero_()

    return [
        param.register_post_accumulate_grad_hook(zero)
        for name, param in model.named_parameters()
        if name in frozen
    ]


class FreezeScheduleCallback(TrainerCallback, ExportableState):
    """Applies ``policy`` (and its schedule), keeps frozen weights still, and audits them.

    ``policy``: a policy from ``get_policy``, a registered name, a ``{"name": ..., **options}``
    dict, or None (keep whatever requires grad when training starts; audit the rest).
    ``audit``: "raise" (default), "log" (log an ERROR) or "off". ``freeze_mode``: "requires_grad"
    (default), "zero_lr" or "zero_grad" (fixed policies only). See the module docstring.
    """

    def __init__(self, policy=None, *, audit: str = "raise", freeze_mode: str = "requires_grad"):
        check_audit_mode(audit)
        check_freeze_mode(freeze_mode)
        self.policy = resolve_policy(policy)
        if freeze_mode != "requires_grad":
            if self.policy is None:
                raise FreezePolicyError(f"freeze_mode={freeze_mode!r} needs a freeze_policy")
            if self.policy.scheduled:
                raise FreezePolicyError(
                    f"freeze_mode={freeze_mode!r} supports fixed policies only, not the schedule "
                    f"{self.policy.name!r}; use freeze_mode='requires_grad'"
                )
        self.audit = audit
        self.freeze_mode = freeze_mode
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
        # it (FreezeTrainer's frozen_dtype moves, freeze_policies.precision)
        self.after_set_trainable = None

    # -- binding to a model -----------------------------------------------------------------
    def bind(self, model: nn.Module) -> Anatomy | None:
        """Read the anatomy of ``model`` and validate the policy against it (once per model)."""
        if model is self._model:
            return self.anat
        check_not_peft(model, self.policy)
        if self.policy is not None:
            self.anat = self.policy.anatomy(model)
            self._ever = ever_trainable_names(self.policy, self.anat)
            self.trainable_at(0)  # validates options that depend on the model
            if _is_adaptive(self.policy):
                self.controller = AutoFreezeController(self.policy, self.anat)
        self._model = model
        self._names_cache = {}
        return self.anat

    def trainable_at(self, stage: int) -> frozenset[str]:
        """The names the policy trains at ``stage`` (cached)."""
        if stage not in self._names_cache:
            self._names_cache[stage] = self.policy.trainable_names(self.anat, stage)
        return self._names_cache[stage]

    @property
    def ever_trainable(self) -> frozenset[str] | None:
        """Every name the policy trains at some stage (None without a policy)."""
        return self._ever

    @property
    def bound_model(self) -> nn.Module | None:
        """The model ``bind`` last read (None before)."""
        return self._model

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
        if self.freeze_mode == "zero_lr" and optimizer is None:
            raise FreezePolicyError(
                "freeze_mode='zero_lr' needs lr=0 optimizer groups, which Trainer does not build: "
                "use FreezeTrainer, or Trainer(optimizers=(freeze_policies.optim.create_optimizer("
                "model, args, policy, freeze_mode='zero_lr'), None))"
            )
        if self.freeze_mode == "requires_grad":
            set_trainable(model, self._ever)
        else:  # zero_lr / zero_grad: every parameter requires grad during train()
            set_trainable(model, [name for name, _ in model.named_parameters()])

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.bind(model)
        if self.policy is None:
            self._fixed = frozenset(n for n, p in model.named_parameters() if p.requires_grad)
        self._held = _held_names(optimizer, model)
        _check_saved_names(optimizer, model)
        self.audit_result, self.audit_metrics, self.resumed_stage = None, {}, None
        if self.controller is not None:  # a new train() starts a new series of decisions
            self.controller = AutoFreezeController(self.policy, self.anat)

        stage = self._restored_stage(state)
        if stage is None:
            stage = self._stage_now(state)
        self.stage = None
        self._gradient_bytes = 0
        # Trainer's checkpointing expects an entry for every stateful callback, also when the
        # checkpoint being resumed was written without this one.
        state.stateful_callbacks.setdefault(type(self).__name__, self.state())
        if self.freeze_mode == "requires_grad":
            self._apply(model, stage, state)
        else:
            self._apply_fixed_mode(model, optimizer, kwargs.get("lr_scheduler"))
        self._ensure_input_grads(model)
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
        self.controller.end_of_step(state.global_step)
        if len(self.controller.decisions) > decisions:  # the new depth applies from the next step
            state.log_history.append(dict(self.controller.decisions[-1]))

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
            metrics = {
                "frozen_audit_passed": self.audit_result.passed,
                "frozen_audit_checked": self.audit_result.checked,
                "frozen_audit_moved": len(self.audit_result.moved),
                "frozen_audit_max_abs_diff": self.audit_result.max_abs_diff,
            }
        metrics["optimizer_state_bytes"] = (
            optimizer_state_bytes(optimizer, include_scalars=True) if optimizer else 0
        )
        metrics["gradient_bytes"] = self._gradient_bytes
        self.audit_metrics = metrics
        state.log_history.append({**metrics, "step": state.global_step})
        result = self.audit_result
        if result is None or result.passed:
            if result is not None:
                logger.info("freeze audit passed: %d frozen parameters unchanged", result.checked)
            return
        message = (
            f"freeze audit failed: {len(result.moved)} of {result.checked} frozen parameters moved "
            f"during training (freeze_mode={self.freeze_mode!r}, max |diff| "
            f"{result.max_abs_diff:.3g}): {', '.join(result.moved[:3])}"
        )
        if self.audit == "raise":
            raise FrozenWeightsMovedError(message)
        logger.error(message)

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

    # -- internals ----------------------------------------------------------------------------
    @property
    def current_trainable(self) -> frozenset[str]:
        if self.policy is None:
            return self._fixed
        return self.trainable_at(self.stage if self.stage is not None else 0)

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
            self._apply(model, stage, state)

    def _apply(self, model: nn.Module, stage: int, state) -> None:
        """Open exactly the stage's parameters; drop the gradients of all others."""
        names = self.current_trainable if self.policy is None else self.trainable_at(stage)
        if self._held is not None:
            missing = sorted(names - set(self._held.values()))
            if missing:
                what = f"stage {stage} of {self.policy.name!r}" if self.policy else "training"
                raise FreezePolicyError(
                    f"{what} trains {len(missing)} parameters the "
                    f"optimizer does not hold ({', '.join(missing[:3])}): pass "
                    "FreezeScheduleCallback in Trainer(callbacks=[...]) so it prepares the model "
                    "before the optimizer is built, use FreezeTrainer, or build the optimizer with "
                    "freeze_policies.optim.create_optimizer"
                )
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
            count = sum(p.numel() for p in model.parameters() if p.requires_grad)
            state.log_history.append(
                {"freeze_stage": stage, "trainable_params": count, "step": state.global_step}
            )
            logger.info(
                "freeze policy %s: stage %d at step %d, %d trainable parameters",
                self.policy.name, stage, state.global_step, count,
            )

    def _apply_fixed_mode(self, model: nn.Module, optimizer, lr_scheduler) -> None:
        """zero_lr / zero_grad: every parameter requires grad; the frozen ones are held still by
        an lr=0 group or by zeroing their gradients."""
        trainable = self.trainable_at(0)
        frozen = {n for n, _ in model.named_parameters() if n not in trainable}
        set_trainable(model, [n for n, _ in model.named_parameters()])
        if self.freeze_mode == "zero_lr" and optimizer is not None:
            lr_of = {
                id(p): (group["lr"], group.get("initial_lr", group["lr"]))
                for group in optimizer.param_groups
                for p in group["params"]
            }
            wrong = [
                n for n, p in model.named_parameters()
                if n in frozen and id(p) in lr_of and lr_of[id(p)] != (0.0, 0.0)
            ]
            if wrong:
                raise FreezePolicyError(
                    f"freeze_mode='zero_lr' but {len(wrong)} frozen parameters sit in optimizer "
                    f"groups with lr != 0 ({', '.join(wrong[:3])}): build the optimizer with "
                    "FreezeTrainer or freeze_policies.optim.create_optimizer(freeze_mode='zero_lr')"
                )
            floors = [m for m in getattr(lr_scheduler, "min_lrs", None) or [] if m > 0]
            if floors:  # e.g. GreedyLR: max(lr * factor, min_lr) would lift lr=0 to min_lr
                raise FreezePolicyError(
                    f"freeze_mode='zero_lr' needs an LR scheduler that keeps lr=0 at 0, but "
                    f"{type(lr_scheduler).__name__} has a floor min_lr={floors[0]}; use another "
                    "lr_scheduler_type or freeze_mode='requires_grad'"
                )
        if self.freeze_mode == "zero_grad":
            self._hooks = zero_grad_hooks(model, frozen)
        self.stage = 0
        self._measure_grads = True

    def _restored_stage(self, state) -> int | None:
        """The stage saved in the checkpoint being resumed (None on a fresh start)."""
        if state.global_step == 0 or self.policy is None:
            return None
        saved = state.stateful_callbacks.get(type(self).__name__)
        if isinstance(saved, list):
            saved = saved[0]
        stage = (saved or {}).get("attributes", {}).get("stage")
        if stage is None:
            logger.warning(
                "resuming at step %d from a checkpoint without a saved freeze stage; "
                "using the schedule's stage for that step", state.global_step,
            )
            return None
        saved_args = saved.get("args", {})
        ours = self.state()["args"]
        for key in ("policy", "freeze_mode"):
            if saved_args.get(key) != ours[key]:
                raise FreezePolicyError(
                    f"the checkpoint at step {state.global_step} was trained with {key}="
                    f"{saved_args.get(key)!r}, this run has {key}={ours[key]!r}; "
                    "resume with the same one"
                )
        stage = int(stage)
        if self.controller is not None:  # adaptive: the decisions so far come from the checkpoint
            self.controller.load_state(saved["attributes"]["auto_freeze"])
            self.resumed_stage = stage
            return stage
        # The stage in effect during the last step before the checkpoint, by the schedule; a
        # fixed policy has one stage, 0, and no schedule to ask.
        expected = (
            self.policy.stage_at(state.global_step - 1, max((state.epoch or 0.0) - 1e-6, 0))
            if self.policy.scheduled
            else 0
        )
        if stage != expected:
            raise FreezePolicyError(
                f"the checkpoint at step {state.global_step} was saved in stage {stage}, but "
                f"{self.policy.name!r} puts that step in stage {expected}: the schedule or the "
                "steps per epoch changed since; resume with the same settings"
            )
        self.resumed_stage = stage
        return stage

    def _ensure_input_grads(self, model: nn.Module) -> None:
        if not _is_checkpointing(model):
            return
        if self.anat is not None:
            embeddings_frozen = not set(self.anat.embeddings) <= self.current_trainable
        else:
            embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") \
                else None
            embeddings_frozen = embeddings is not None and not all(
                p.requires_grad for p in embeddings.parameters()
            )
        hooked = getattr(model, "_require_grads_hooks", None) or getattr(
            model, "_require_grads_hook", None
        )
        if embeddings_frozen and not hooked and hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
            logger.info("gradient checkpointing with frozen embeddings: input grads enabled")


def _is_adaptive(policy) -> bool:
    return bool(getattr(policy, "adaptive", False))


def _is_checkpointing(model: nn.Module) -> bool:
    """Whether ``model`` checkpoints activations (transformers 5 and 4 spell it differently)."""
    for attribute in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), attribute):
            return bool(getattr(model, attribute))
    return False


def _held_names(optimizer, model: nn.Module) -> dict[int, str] | None:
    """id(param) -> name for every parameter the optimizer holds (None without an optimizer)."""
    if optimizer is None:
        return None
    names = {id(p): n for n, p in model.named_parameters()}
    return {id(p): names.get(id(p), "?") for g in optimizer.param_groups for p in g["params"]}


def _check_saved_names(optimizer, model: nn.Module) -> None:
    """After a resume, the ``param_names`` loaded with the optimizer state name the parameters
    that state now belongs to; a mismatch means the state went into the wrong parameters."""
    if optimizer is None:
        return
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        saved = group.get("param_names")
        if saved is None:
            continue
        actual = [names.get(id(p)) for p in group["params"]]
        if list(saved) != actual:
            wrong = next((i for i, (s, a) in enumerate(zip(saved, actual)) if s != a),
                         min(len(saved), len(actual)))
            held = actual[wrong] if wrong < len(actual) else "nothing"
            meant = saved[wrong] if wrong < len(saved) else "nothing"
            raise FreezePolicyError(
                f"optimizer group {group.get('name', '?')!r} holds {held} where its "
                f"state was saved for {meant}: the checkpoint's optimizer groups do not "
                "match this model and policy"
            )


def find_freeze_callback(trainer) -> FreezeScheduleCallback | None:
    """The ``FreezeScheduleCallback`` registered with ``trainer`` (None if there is none)."""
    found = [c for c in trainer.callback_handler.callbacks if isinstance(c, FreezeScheduleCallback)]
    return found[-1] if found else None


__all__ = [
    "AUDIT_MODES",
    "FreezeScheduleCallback",
    "find_freeze_callback",
    "is_peft_model",
    "policy_spec",
    "resolve_policy",
]
