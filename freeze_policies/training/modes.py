"""The freeze modes: how frozen parameters are kept still.

- ``requires_grad`` (default): frozen parameters do not require grad, have no gradient and, in
  optimizers built by ``freeze_policies.training.optim``, no optimizer state. The only mode that
  saves compute and memory; the only one that supports schedules.
- ``zero_lr``: every parameter requires grad; the frozen ones sit in ``lr = 0`` optimizer groups
  (the usual weight decay, scaled by the lr, is 0 too). Needs the groups ``create_optimizer``
  builds, and an LR scheduler that keeps 0 at 0 (no ``min_lr`` floor, so not ``greedy``).
- ``zero_grad``: every parameter requires grad and is in the ordinary groups; the frozen ones
  get their gradients zeroed after each backward by a post-accumulate-grad hook (weight decay
  and momentum still apply, which the audit catches).

``zero_lr`` and ``zero_grad`` are measurement baselines: fixed policies only, and they make every
parameter require grad for the duration of ``train()``; the callback sets the policy's
``requires_grad`` back at the end. Every check and every piece of machinery that depends on the
mode lives here; the callback, the optimizer builder and the trainer call into it.
"""

from __future__ import annotations

from torch import nn

from freeze_policies.errors import FreezePolicyError
from freeze_policies.policies.base import Policy, ever_trainable_names
from freeze_policies.policies.trainable import set_trainable

FREEZE_MODES = ("requires_grad", "zero_lr", "zero_grad")


def check_freeze_mode(freeze_mode: str) -> None:
    if freeze_mode not in FREEZE_MODES:
        raise FreezePolicyError(
            f"freeze_mode={freeze_mode!r} is not one of {', '.join(FREEZE_MODES)}"
        )


def check_mode_policy(freeze_mode: str, policy: Policy | None) -> None:
    """``zero_lr`` / ``zero_grad`` need a policy, and a fixed one."""
    if freeze_mode == "requires_grad":
        return
    if policy is None:
        raise FreezePolicyError(f"freeze_mode={freeze_mode!r} needs a freeze_policy")
    if policy.scheduled:
        raise FreezePolicyError(
            f"freeze_mode={freeze_mode!r} supports fixed policies only, not the schedule "
            f"{policy.name!r}; use freeze_mode='requires_grad'"
        )


def check_scheduler_type(freeze_mode: str, lr_scheduler_type) -> None:
    """``zero_lr`` cannot run under ``lr_scheduler_type="greedy"`` (its ``min_lr`` floor)."""
    scheduler = getattr(lr_scheduler_type, "value", lr_scheduler_type)
    if freeze_mode == "zero_lr" and scheduler == "greedy":
        raise FreezePolicyError(
            "freeze_mode='zero_lr' cannot use lr_scheduler_type='greedy': its min_lr floor "
            "would lift the lr=0 groups; use another lr_scheduler_type or "
            "freeze_mode='requires_grad'"
        )


def optimizer_membership(model: nn.Module, policy, anat, freeze_mode: str) -> dict:
    """``trainable`` and ``zero_lr_names`` for ``build_param_groups`` under ``freeze_mode``.

    ``requires_grad``: what the policy ever trains. ``zero_lr``: that, plus every other parameter
    in the lr=0 groups. ``zero_grad``: every parameter, in the ordinary groups.
    """
    every = [name for name, _ in model.named_parameters()]
    if policy is None:
        ever = {name for name, p in model.named_parameters() if p.requires_grad}
    else:
        ever = set(ever_trainable_names(policy, anat))
    if freeze_mode == "zero_lr":
        return {"trainable": ever, "zero_lr_names": [n for n in every if n not in ever]}
    if freeze_mode == "zero_grad":
        return {"trainable": set(every)}
    return {"trainable": ever}


def prepare_plain_trainer(model: nn.Module, freeze_mode: str, ever, optimizer) -> None:
    """Before a plain ``Trainer`` builds its optimizer from ``requires_grad``: the parameters
    that will ever train require grad (``requires_grad``), or all of them (the other modes);
    ``zero_lr`` needs an optimizer with lr=0 groups passed in."""
    if freeze_mode == "zero_lr" and optimizer is None:
        raise FreezePolicyError(
            "freeze_mode='zero_lr' needs lr=0 optimizer groups, which Trainer does not build: "
            "use FreezeTrainer, or Trainer(optimizers=("
            "freeze_policies.training.optim.create_optimizer(model, args, policy, "
            "freeze_options=FreezeOptions(freeze_mode='zero_lr')), None))"
        )
    if freeze_mode == "requires_grad":
        set_trainable(model, ever)
    else:  # zero_lr / zero_grad: every parameter requires grad during train()
        set_trainable(model, [name for name, _ in model.named_parameters()])


def start_fixed_mode(
    model: nn.Module, freeze_mode: str, trainable, optimizer, lr_scheduler
) -> list:
    """``zero_lr`` / ``zero_grad`` at the start of training: every parameter requires grad; the
    frozen ones are held still by an lr=0 group (checked here) or by zeroing their gradients.
    Returns the hooks to remove at the end of training."""
    frozen = {n for n, _ in model.named_parameters() if n not in trainable}
    set_trainable(model, [n for n, _ in model.named_parameters()])
    if freeze_mode == "zero_lr" and optimizer is not None:
        check_zero_lr_groups(model, frozen, optimizer, lr_scheduler)
    if freeze_mode == "zero_grad":
        return zero_grad_hooks(model, frozen)
    return []


def check_zero_lr_groups(model: nn.Module, frozen: set[str], optimizer, lr_scheduler) -> None:
    """Every frozen parameter the optimizer holds sits at lr 0, and the scheduler keeps it 0."""
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
            "FreezeTrainer or "
            "freeze_policies.training.optim.create_optimizer("
            "freeze_options=FreezeOptions(freeze_mode='zero_lr'))"
        )
    floors = [m for m in getattr(lr_scheduler, "min_lrs", None) or [] if m > 0]
    if floors:  # e.g. GreedyLR: max(lr * factor, min_lr) would lift lr=0 to min_lr
        raise FreezePolicyError(
            f"freeze_mode='zero_lr' needs an LR scheduler that keeps lr=0 at 0, but "
            f"{type(lr_scheduler).__name__} has a floor min_lr={floors[0]}; use another "
            "lr_scheduler_type or freeze_mode='requires_grad'"
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
