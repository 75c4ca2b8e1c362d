"""The schema of a run's ``results.json``: written by the launcher, read by everything else.

:class:`RunResults` describes the record once. ``recipes.launcher.main`` builds one and writes
``RunResults.as_dict()``; the report (``recipes.report``), the sweep and rerun
(``recipes.experiments``), the model card and the benchmarks read the file through
:func:`read_results` / :meth:`RunResults.from_dict` and use attributes, not key strings. The JSON
keys are the field names, flat, as before the schema existed, so a file written before it still
reads and a reader of the JSON sees the same keys.

Versions (``schema_version``):

- **0**: files written before this module (no ``schema_version`` key). They read: a field the
  file lacks takes its default (``data`` is None for runs made before split digests were
  recorded, ``frozen_audit_*`` are None when the audit was off).
- **1**: this schema; ``schema_version`` is written into every new file. ``generations``
  (``--task sft``'s greedy answers to a few test prompts: ``prompt``, ``reference``,
  ``generated``, ``stopped``; null for the other tasks) was added within version 1: a new
  optional key changes no existing key's meaning, so it needs no new version, and a reader that
  predates it keeps it in ``extra``.

A file from a newer version than :data:`SCHEMA_VERSION` is refused (:class:`ResultsError` naming
the file and both versions): a newer writer may have changed what a key means.

Unknown keys are **kept**, not refused (forward compatibility within a version, and room for the
library's ``freeze_metrics`` to grow): they land in :attr:`RunResults.extra` and are written back
unchanged by :meth:`RunResults.as_dict`, so reading and rewriting a file loses nothing. The
launcher itself never writes an unknown key: it builds the record with keyword arguments, so a
new figure needs a field here first (a ``TypeError`` otherwise).

The evaluation metrics are open-ended (``eval_accuracy``, ``eval_perplexity``, ``test_f1``, ...:
whatever the task's metrics produce); every key that starts with ``eval_`` or ``test_`` is kept
in :attr:`RunResults.metrics` and written flat beside the other keys.

The method's identity (``method``, ``policy``, ``policy_options``, ``freeze_mode``,
``peft_method``, ``peft_options``) is :class:`MethodSpec`, which a benchmark row uses too, so a
bench row and a run are labelled by the same code (``recipes.report.aggregate.method_label``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
"""The version :class:`RunResults` writes; 0 stands for files written before the schema."""

REQUIRED = ("method", "model", "task", "seed", "learning_rate")
"""The keys without which a file is no run record (every version has them)."""

METRIC_PREFIXES = ("eval_", "test_")
"""Keys with these prefixes are evaluation metrics (:attr:`RunResults.metrics`)."""


class ResultsError(ValueError):
    """A results.json that cannot be read as a run record (the message names the file)."""


@dataclass(frozen=True)
class MethodSpec:
    """What was trained and how: the fields naming a method in results.json and in a bench row."""

    method: str
    policy: str | None = None
    policy_options: dict = field(default_factory=dict)
    freeze_mode: str | None = None
    peft_method: str | None = None
    peft_options: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "method": self.method,
            "policy": self.policy,
            "policy_options": dict(self.policy_options or {}),
            "freeze_mode": self.freeze_mode,
            "peft_method": self.peft_method,
            "peft_options": dict(self.peft_options or {}),
        }

    @classmethod
    def from_dict(cls, data: dict) -> MethodSpec:
        """The method fields of ``data`` (a results.json or a bench row); absent ones default."""
        return cls(
            method=data["method"],
            policy=data.get("policy"),
            policy_options=dict(data.get("policy_options") or {}),
            freeze_mode=data.get("freeze_mode"),
            peft_method=data.get("peft_method"),
            peft_options=dict(data.get("peft_options") or {}),
        )


@dataclass
class RunResults:
    """One run's record (``results.json``); see the module docstring for versions and keys."""

    # identity: the method, the model and data, the seed and the rate
    method: str
    model: str
    task: str
    seed: Any
    learning_rate: float
    policy: str | None = None
    policy_options: dict = field(default_factory=dict)
    freeze_mode: str | None = None
    peft_method: str | None = None
    peft_options: dict = field(default_factory=dict)
    command: str | None = None
    dataset: str | None = None
    data: dict | None = None  # the rows each split held (digests); None in runs made before them
    rows_left_out: dict | None = None  # {"count", "reasons"}: data-file rows not used, and why
    # size of the run and what trained
    max_steps: int | None = None
    total_params: int | None = None
    trainable_params: int | None = None
    trainable_params_max: int | None = None
    groups: dict | None = None
    cost_preview: dict | None = None
    budget: dict | None = None
    # what it scored: eval_* / test_* metrics (written flat), the epoch reached, training figures
    metrics: dict = field(default_factory=dict)
    epoch: float | None = None
    train_loss: float | None = None
    train_runtime: float | None = None
    train_samples_per_second: float | None = None
    train_steps_per_second: float | None = None
    peak_memory_bytes: int | None = None
    peak_memory_kind: str | None = None
    # the freezing's own figures (FreezeTrainer.freeze_metrics)
    frozen_audit_passed: bool | None = None
    frozen_audit_checked: int | None = None
    frozen_audit_moved: int | None = None
    frozen_audit_max_abs_diff: float | None = None
    optimizer_state_bytes: int | None = None
    gradient_bytes: int | None = None
    parameter_bytes: int | None = None
    prefix_cache: dict | None = None
    frozen_audit: dict | None = None
    log_history: list = field(default_factory=list)
    schedule_events: list = field(default_factory=list)  # stage changes, auto_freeze decisions
    # sft: [{prompt, reference, generated, stopped}] for a few test prompts; None otherwise
    generations: list | None = None
    # how it was launched: processes, and the accelerate launcher and config file used
    world_size: int | None = None
    accelerate: dict | None = None
    # outputs and environment
    resumed_from: str | None = None
    saved: dict | None = None
    versions: dict = field(default_factory=dict)
    hardware: dict = field(default_factory=dict)
    python: str | None = None
    schema_version: int = SCHEMA_VERSION
    extra: dict = field(default_factory=dict)  # keys this version does not know, kept as read
    path: str | None = field(default=None, compare=False)  # the file it was read from; not written

    ABSENT_WHEN_NONE = ("frozen_audit_passed", "frozen_audit_checked", "frozen_audit_moved",
                        "frozen_audit_max_abs_diff")
    """Keys the launcher leaves out (rather than writing null) when they have no value: the
    audit's figures when the audit was off, as before the schema."""

    @property
    def spec(self) -> MethodSpec:
        """The method's identity (the fields a bench row shares)."""
        return MethodSpec(self.method, self.policy, dict(self.policy_options or {}),
                          self.freeze_mode, self.peft_method, dict(self.peft_options or {}))

    def as_dict(self) -> dict:
        """The JSON object: every field under its own name, the metrics and the kept unknown
        keys flat beside them; ``path`` is not written."""
        out: dict = {}
        for item in dataclasses.fields(self):
            if item.name in ("metrics", "extra", "path"):
                continue
            value = getattr(self, item.name)
            if value is None and item.name in self.ABSENT_WHEN_NONE:
                continue
            out[item.name] = value
        return {**self.extra, **self.metrics, **out}

    @classmethod
    def from_dict(cls, data: dict, path: str | Path | None = None) -> RunResults:
        """A record from a results.json object of any version up to :data:`SCHEMA_VERSION`.

        A missing required key or a version from the future is a :class:`ResultsError` naming
        ``path`` (when given); other missing keys take their defaults, unknown ones go to
        :attr:`extra`.
        """
        where = f"{path}: " if path is not None else ""
        if not isinstance(data, dict):
            raise ResultsError(f"{where}not a JSON object")
        missing = [key for key in REQUIRED if key not in data]
        if missing:
            raise ResultsError(f"{where}missing {', '.join(missing)}")
        version = data.get("schema_version", 0)
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ResultsError(f"{where}schema_version {version!r} is not a version number")
        if version > SCHEMA_VERSION:
            raise ResultsError(f"{where}schema_version {version} is newer than this code reads "
                               f"({SCHEMA_VERSION}); update freeze-policies")
        names = {item.name for item in dataclasses.fields(cls)} - {"metrics", "extra", "path"}
        known, metrics, extra = {}, {}, {}
        for key, value in data.items():
            if key in names:
                known[key] = value
            elif key.startswith(METRIC_PREFIXES):
                metrics[key] = value
            else:
                extra[key] = value
        for key in ("policy_options", "peft_options", "versions", "hardware"):
            if known.get(key) is None:
                known.pop(key, None)  # null in the file: the field's empty default
        if known.get("log_history") is None:
            known.pop("log_history", None)
        known["schema_version"] = version
        return cls(**known, metrics=metrics, extra=extra,
                   path=str(path) if path is not None else None)


def read_results(path: str | Path) -> RunResults:
    """Read one ``results.json``; an unreadable file is a :class:`ResultsError` naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ResultsError(f"{path}: not a readable JSON file ({reason})") from None
    return RunResults.from_dict(data, path)


__all__ = ["METRIC_PREFIXES", "REQUIRED", "SCHEMA_VERSION", "MethodSpec", "ResultsError",
           "RunResults", "read_results"]
