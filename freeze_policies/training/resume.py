"""Resume checks: the stage a checkpoint was saved in, and optimizer state in the right places.

A checkpoint keeps the callback's state in ``trainer_state.json`` (``stateful_callbacks``):
the policy spec, the freeze mode and the stage (plus ``auto_freeze``'s decisions). On resume,
``restored_stage`` gives the stage back after checking that the policy and freeze mode are the
same and that the schedule still puts the last step before the checkpoint in that stage; a
difference raises ``FreezePolicyError`` naming it, because training on would silently follow
another schedule. ``check_saved_names`` checks that the optimizer state loaded with the
checkpoint went to the parameters it was saved for (the groups carry ``param_names``), and
``check_optimizer_holds`` that the optimizer holds every parameter a stage opens.

``check_checkpoint_run`` reads a checkpoint folder before ``Trainer`` loads anything from it:
another policy (or policy options) or freeze mode than the checkpoint's is a one-line
``FreezePolicyError`` naming both (instead of torch's message about optimizer groups of another
size), and another number of processes than the one that saved it is a one-line warning (the
data order and the batches differ, so the run will not equal an uninterrupted one).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from torch import nn

from freeze_policies.errors import FreezePolicyError

logger = logging.getLogger("freeze_policies")


def saved_callback_state(state, name: str) -> dict | None:
    """The state a checkpoint saved for the callback registered as ``name`` (None if none)."""
    saved = state.stateful_callbacks.get(name)
    if isinstance(saved, list):
        saved = saved[0]
    return saved


def restored_stage(state, saved: dict | None, ours: dict, policy, controller=None) -> int | None:
    """The stage saved in the checkpoint being resumed (None on a fresh start or without one).

    ``saved`` is the checkpoint's callback state, ``ours`` this run's ``args`` (``policy`` and
    ``freeze_mode`` must match). An adaptive ``controller`` loads its decisions from the
    checkpoint; a schedule must put the checkpoint's last step in the saved stage.
    """
    if state.global_step == 0 or policy is None:
        return None
    stage = (saved or {}).get("attributes", {}).get("stage")
    if stage is None:
        logger.warning(
            "resuming at step %d from a checkpoint without a saved freeze stage; "
            "using the schedule's stage for that step", state.global_step,
        )
        return None
    saved_args = saved.get("args", {})
    for key in ("policy", "freeze_mode"):
        if saved_args.get(key) != ours[key]:
            raise FreezePolicyError(
                f"the checkpoint at step {state.global_step} was trained with {key}="
                f"{saved_args.get(key)!r}, this run has {key}={ours[key]!r}; "
                "resume with the same one"
            )
    stage = int(stage)
    if controller is not None:  # adaptive: the decisions so far come from the checkpoint
        controller.load_state(saved["attributes"]["auto_freeze"])
        # the depth the next step trains at: a decision taken at the checkpoint's own step
        # applies from the step after it, which is the first step of the resumed run (the
        # saved stage is the one that step ran in, and would be announced, then left at once)
        return controller.depth
    # The stage in effect during the last step before the checkpoint, by the schedule; a
    # fixed policy has one stage, 0, and no schedule to ask.
    expected = (
        policy.stage_at(state.global_step - 1, max((state.epoch or 0.0) - 1e-6, 0))
        if policy.scheduled
        else 0
    )
    if stage != expected:
        raise FreezePolicyError(
            f"the checkpoint at step {state.global_step} was saved in stage {stage}, but "
            f"{policy.name!r} puts that step in stage {expected}: the schedule or the "
            "steps per epoch changed since; resume with the same settings"
        )
    return stage


def held_names(optimizer, model: nn.Module) -> dict[int, str] | None:
    """id(param) -> name for every parameter the optimizer holds (None without an optimizer)."""
    if optimizer is None:
        return None
    names = {id(p): n for n, p in model.named_parameters()}
    return {id(p): names.get(id(p), "?") for g in optimizer.param_groups for p in g["params"]}


def check_optimizer_holds(names, held: dict[int, str] | None, what: str) -> None:
    """Every name a stage trains is in the optimizer (``held``; None: no optimizer to check)."""
    if held is None:
        return
    missing = sorted(set(names) - set(held.values()))
    if missing:
        raise FreezePolicyError(
            f"{what} trains {len(missing)} parameters the "
            f"optimizer does not hold ({', '.join(missing[:3])}): pass "
            "FreezeScheduleCallback in Trainer(callbacks=[...]) so it prepares the model "
            "before the optimizer is built, use FreezeTrainer, or build the optimizer with "
            "freeze_policies.training.optim.create_optimizer"
        )


def check_saved_names(optimizer, model: nn.Module) -> None:
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


CALLBACK = "FreezeScheduleCallback"
_RNG_PER_PROCESS = re.compile(r"^rng_state_(\d+)\.pth$")


def checkpoint_world_size(folder: str | os.PathLike) -> int | None:
    """How many processes saved the checkpoint in ``folder``: ``Trainer`` writes one
    ``rng_state_<rank>.pth`` per process under a launcher, ``rng_state.pth`` alone otherwise
    (None: no random state saved)."""
    names = os.listdir(folder)
    ranks = [m for name in names if (m := _RNG_PER_PROCESS.match(name))]
    if ranks:
        return len(ranks)
    return 1 if "rng_state.pth" in names else None


def saved_freeze_args(folder: str | os.PathLike) -> dict | None:
    """The freeze callback's ``args`` (policy spec, freeze mode) a checkpoint saved; None when
    it saved none (a run without ``FreezeScheduleCallback``)."""
    path = Path(folder) / "trainer_state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    saved = (state.get("stateful_callbacks") or {}).get(CALLBACK)
    if isinstance(saved, list):
        saved = saved[0] if saved else None
    return (saved or {}).get("args") if isinstance(saved, dict) else None


def describe_policy(spec: dict | None) -> str:
    """A policy spec as a person reads it: ``bottom_n {"n": 1}``, or "no policy"."""
    if not spec:
        return "no policy (full fine-tuning)"
    options = {k: v for k, v in spec.items() if k != "name"}
    return f"{spec['name']} {json.dumps(options, sort_keys=True)}"


def _normalised(spec: dict | None) -> dict | None:
    """A saved spec with the options a later version added filled with their defaults (as this
    version builds it); the spec itself when it no longer builds."""
    from freeze_policies.policies.registry import policy_spec, resolve_policy

    if not spec:
        return spec
    try:
        return policy_spec(resolve_policy(spec))
    except (ValueError, TypeError):
        return spec


def check_checkpoint_run(
    folder: str | os.PathLike,
    *,
    policy_spec: dict | None,
    freeze_mode: str,
    world_size: int | None = None,
    check_options: bool = True,
) -> str | None:
    """Refuse to resume from ``folder`` a run it cannot reproduce (module docstring); return the
    warning for another number of processes (None: nothing to say). ``policy_spec`` is this run's
    (``registry.policy_spec``); ``check_options=False`` compares the policy's name only (a
    policy that is picked after the model loads, by a budget)."""
    saved = saved_freeze_args(folder)
    if saved is not None:
        theirs = _normalised(saved.get("policy"))
        same = (theirs == policy_spec if check_options
                else (theirs or {}).get("name") == (policy_spec or {}).get("name"))
        if not same:
            raise FreezePolicyError(
                f"checkpoint {str(folder)!r} was trained with policy {describe_policy(theirs)}, "
                f"this run has {describe_policy(policy_spec)}: resume with the checkpoint's "
                "policy and options, or start a new run"
            )
        if saved.get("freeze_mode") != freeze_mode:
            raise FreezePolicyError(
                f"checkpoint {str(folder)!r} was trained with freeze_mode="
                f"{saved.get('freeze_mode')!r}, this run has freeze_mode={freeze_mode!r}: resume "
                "with the same freeze mode, or start a new run"
            )
    saved_world = checkpoint_world_size(folder)
    if world_size is not None and saved_world is not None and saved_world != world_size:
        return (
            f"checkpoint {str(folder)!r} was saved by {saved_world} process"
            f"{'es' if saved_world > 1 else ''}, this run has {world_size}: the batches and the "
            "data order differ from the run that saved it, so the resumed run will not equal an "
            "uninterrupted one"
        )
    return None
