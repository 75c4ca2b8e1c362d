"""What a schedule did, as it happens: one console line and one ``log_history`` entry per event.

``FreezeScheduleCallback`` calls these for a scheduled policy (``gradual_unfreeze``, ``lisa``,
``auto_freeze``, ...): at the start of training and at every stage change (``stage_entry``), and
at every ``auto_freeze`` decision, also one that keeps the depth (``decision_entry``). A stage's
entry is the ``log_history`` entry the callback has always written (``freeze_stage``, ``step``)
with the keys a reader needs added; a decision's is a new entry after the controller's own
record (``auto_freeze_depth``, ``auto_freeze_rates``), which stays as it was:

- ``schedule_event``: ``"stage"`` or ``"auto_freeze"``, on the entries that were announced;
- ``trains`` (the first stage), ``opened`` / ``closed`` (a later stage) or ``froze`` (a
  decision, with its ``depth`` and ``rates``): anatomy groups (``embeddings``, ``block.3``,
  ``head``, ...) in forward order;
- ``trainable_share``: the fraction of the model's parameters that train from then on.

``announce`` prints the entry's line on the main process (``tqdm.write``, so a progress bar stays
whole, as the Trainer writes its own logs), e.g.
``[freeze schedule] step 40: gradual_unfreeze stage 2 opens block.4 (14.20% of parameters train)``.
``schedule_events(log_history)`` returns the announced entries, for a results file.
"""

from __future__ import annotations

from torch import nn

EVENT_KEY = "schedule_event"


def _groups(anat, names) -> list[str]:
    """Anatomy groups (forward order) holding any of ``names``."""
    names = set(names)
    return [group for group, members in anat.parts().items() if names.intersection(members)]


def _share(model: nn.Module, names) -> float:
    names = set(names)
    sizes = {name: param.numel() for name, param in model.named_parameters()}
    total = sum(sizes.values())
    return round(sum(sizes[n] for n in names if n in sizes) / total, 6) if total else 0.0


def stage_entry(policy, anat, model, stage: int, step: int, previous: frozenset[str] | None,
                names: frozenset[str], *, announced: bool) -> dict:
    """The ``log_history`` entry of a stage that starts at ``step`` (``previous``: the names the
    stage before trained; None at the start of training)."""
    count = sum(p.numel() for p in model.parameters() if p.requires_grad)
    entry = {"freeze_stage": stage, "trainable_params": count, "step": step}
    if not announced:
        return entry
    entry.update({EVENT_KEY: "stage", "policy": policy.name,
                  "trainable_share": _share(model, names)})
    if previous is None:
        entry["trains"] = _groups(anat, names)
    else:
        entry["opened"] = _groups(anat, names - previous)
        entry["closed"] = _groups(anat, previous - names)
    return entry


def decision_entry(policy, anat, model, record: dict, old_depth: int,
                   names: frozenset[str]) -> dict:
    """The announced entry of an ``auto_freeze`` decision, written to ``log_history`` after the
    controller's own record (``record``: ``step``, ``auto_freeze_depth``,
    ``auto_freeze_rates``): ``depth``, the blocks it ``froze`` (block indices within the
    measured stack), the ``rates`` and ``trainable_share``; ``names``: what trains at the
    decided depth."""
    depth = int(record["auto_freeze_depth"])
    return {"step": record["step"], EVENT_KEY: "auto_freeze", "policy": policy.name,
            "depth": depth, "froze": [f"block.{i}" for i in range(old_depth, depth)],
            "rates": dict(record.get("auto_freeze_rates") or {}),
            "trainable_share": _share(model, names)}


def describe(entry: dict) -> str:
    """The console line of an announced entry."""
    share = f"{100 * entry['trainable_share']:.2f}% of parameters train"
    head = f"[freeze schedule] step {entry['step']}: {entry['policy']}"
    if entry[EVENT_KEY] == "auto_freeze":
        froze = ", ".join(entry["froze"]) or "nothing"
        return f"{head} froze {froze} (depth {entry['depth']}; {share})"
    what = f"{head} stage {entry['freeze_stage']}"
    if "trains" in entry:
        trains = ("every group" if entry["trainable_share"] == 1.0
                  else ", ".join(entry["trains"]) or "nothing")
        return f"{what} trains {trains} ({share})"
    parts = [f"{verb} {', '.join(entry[key])}" for verb, key in
             (("opens", "opened"), ("closes", "closed")) if entry[key]]
    return f"{what} {' and '.join(parts) or 'changes nothing'} ({share})"


def announce(state, entry: dict) -> None:
    """Print ``entry``'s line on the main process (``state``: the ``TrainerState``)."""
    if getattr(state, "is_world_process_zero", True):
        from tqdm.auto import tqdm

        tqdm.write(describe(entry))


def schedule_events(log_history: list[dict]) -> list[dict]:
    """The announced schedule entries of a ``log_history``, in order."""
    return [dict(entry) for entry in log_history
            if isinstance(entry, dict) and EVENT_KEY in entry]


__all__ = ["announce", "decision_entry", "describe", "schedule_events", "stage_entry"]
