"""Reading and aggregation: results folders -> checked cells -> tables, one per model and dataset.

The layout is ``recipes/sweep.py``'s. A cell is a folder holding ``selection.json``:

    <cell>/sweep/lr<rate>-seed<seed>/results.json   short runs, validation only (choose the rate)
    <cell>/lr<rate>-seed<seed>/results.json         full-length runs at the chosen rate (reported)
    <cell>/selection.json                           grid, validation scores, extensions, choice

Everything is cross-checked before anything is reported, and any mismatch is a ``ReportError``
naming the file: every score in ``selection.json`` must be the validation score of its short
run, the chosen rate must be the best of them, every full-length run must be at the chosen rate
and carry test metrics, and the full-length seeds must be the profile's seeds. A folder with runs
but no ``selection.json`` is a cell still running (``recipes/sweep.py`` writes the selection last):
it is listed as incomplete and left out of the tables. The reading and checking is
``recipes.report.reading``; this module holds what is read into (cells, tables) and the
quantities computed from a run.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from recipes.launcher.results import MethodSpec, RunResults
from recipes.launcher.tasks import TASKS as LAUNCHER_TASKS
from recipes.launcher.tasks import TaskMetrics
from recipes.report.stats import Stat

SCHEDULE_TIMING = ("every", "unit", "seed")


class ReportError(ValueError):
    """An input that cannot be reported; the message starts with the file's path."""


TASKS: dict[str, TaskMetrics] = {name: task.metrics for name, task in LAUNCHER_TASKS.items()}
"""Each task's selection and reported metrics, from its entry in ``recipes.launcher.tasks``."""


# -- labels and identity ----------------------------------------------------------------------


def _short(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _canonical(value) -> str:
    return json.dumps(value or {}, sort_keys=True)


def _spec(run: RunResults | MethodSpec) -> MethodSpec:
    return run.spec if isinstance(run, RunResults) else run


def method_label(run: RunResults | MethodSpec) -> str:
    """``"full"``, ``"bottom_n (n=4)"``, ``"bottom_n (n=4) zero_lr"``, ``"lora"``."""
    spec = _spec(run)
    if spec.method == "peft":
        return spec.peft_method or "peft"
    if spec.method != "freeze":
        return spec.method
    options = spec.policy_options or {}
    label = spec.policy or "freeze"
    if options:
        label += " (" + ", ".join(f"{k}={_short(v)}" for k, v in sorted(options.items())) + ")"
    mode = spec.freeze_mode
    if mode and mode != "requires_grad":
        label += f" {mode}"
    return label


def descriptor(run: RunResults | MethodSpec) -> tuple:
    """What a benchmark row and a cell must share to cost the same per step. When a schedule
    changes stage (``every``, ``unit``) and its draw (``seed``) do not change a step's cost."""
    spec = _spec(run)
    mode = spec.freeze_mode if spec.method == "freeze" else None
    options = {k: v for k, v in (spec.policy_options or {}).items() if k not in SCHEDULE_TIMING}
    return (
        spec.method,
        spec.policy,
        _canonical(options),
        mode or ("requires_grad" if spec.method == "freeze" else None),
        spec.peft_method,
    )


def cell_key(run: RunResults | MethodSpec) -> tuple:
    spec = _spec(run)
    return (*descriptor(spec), _canonical(spec.policy_options), _canonical(spec.peft_options))


# -- per-run quantities ---------------------------------------------------------------------


def training_seconds(run: RunResults) -> float:
    """``train_runtime`` less the evaluations run inside the training loop (the log entries
    before the one that reports ``train_runtime``)."""
    evaluating = 0.0
    for entry in run.log_history:
        if "train_runtime" in entry:
            break
        evaluating += entry.get("eval_runtime", 0.0)
    return run.train_runtime - evaluating


def recorded_seconds(run: RunResults) -> float:
    """Core-seconds the run recorded: ``train_runtime`` (training and any evaluation inside it)
    plus the evaluations logged after it (final validation, test), times its torch threads.
    Loading the model and tokenising are not recorded."""
    seconds, after = float(run.train_runtime or 0.0), False
    for entry in run.log_history:
        if not isinstance(entry, dict):
            continue
        if "train_runtime" in entry:
            after = True
        elif after:
            seconds += float(entry.get("eval_runtime", 0.0)) + float(entry.get("test_runtime", 0.0))
    threads = (run.hardware or {}).get("torch_threads")
    return seconds * (threads if isinstance(threads, int) and threads > 0 else 1)


def recorded_hours(runs) -> float:
    """Core-hours ``runs`` recorded (:func:`recorded_seconds`, summed)."""
    return sum(recorded_seconds(run) for run in runs) / 3600


def slow_runs(runs: list[RunResults], factor: float = 3.0) -> list[tuple[RunResults, float]]:
    """The runs that recorded more than ``factor`` times the median of ``runs`` (runs of one
    length and method), with that median: a run paused or crowded out while it trained. Its
    score stands; its time does not. Needs 3 runs to have a median worth the name."""
    if len(runs) < 3:
        return []
    seconds = [recorded_seconds(run) for run in runs]
    median = statistics.median(seconds)
    return [(run, median) for run, s in zip(runs, seconds) if s > factor * median]


def stage_timeline(run: RunResults) -> list[tuple[int, int]]:
    """``(step, trainable parameters)`` from each stage change in ``log_history``, starting at
    step 0; a single entry for a method whose trainable set never changes."""
    changes = [
        (int(entry["step"]), int(entry["trainable_params"]))
        for entry in run.log_history
        if isinstance(entry, dict) and "freeze_stage" in entry and "trainable_params" in entry
    ]
    if not changes or changes[0][0] > 0:
        changes.insert(0, (0, int(run.trainable_params)))
    timeline: list[tuple[int, int]] = []
    for step, count in changes:  # the last entry of a step wins
        if timeline and timeline[-1][0] == step:
            timeline[-1] = (step, count)
        else:
            timeline.append((step, count))
    return timeline


def mean_trainable_share(run: RunResults) -> float:
    """Trainable share of the parameters, averaged over the run's optimizer steps."""
    timeline = stage_timeline(run)
    total_steps = int(run.max_steps or 0)
    if total_steps <= 0 or len(timeline) == 1:
        return timeline[0][1] / run.total_params
    weighted = 0.0
    for (step, count), (next_step, _) in zip(timeline, [*timeline[1:], (total_steps, 0)]):
        weighted += count * max(0, min(next_step, total_steps) - step)
    return weighted / total_steps / run.total_params


def validation_curve(run: RunResults, key: str) -> list[tuple[int, float]]:
    """``(step, validation metric)`` of the evaluations in ``log_history``, one per step."""
    points: dict[int, float] = {}
    for entry in run.log_history:
        if isinstance(entry, dict) and isinstance(entry.get(key), (int, float)) and "step" in entry:
            points.setdefault(int(entry["step"]), float(entry[key]))
    return sorted(points.items())


def auto_freeze_decisions(run: RunResults) -> list[tuple[int, int]]:
    """``(step, depth)`` of every ``auto_freeze`` decision window in ``log_history``."""
    return [
        (int(entry["step"]), int(entry["auto_freeze_depth"]))
        for entry in run.log_history
        if isinstance(entry, dict) and "auto_freeze_depth" in entry
    ]


# -- cells and tables -----------------------------------------------------------------------


@dataclass
class Selection:
    """``selection.json`` with its short runs, checked against each other."""

    path: Path
    name: str
    grid: list[float]
    scores: dict[float, float]  # lr -> selection score (higher is better)
    extensions: int
    stopped: str
    chosen_lr: float
    seeds: list
    selection_seed: object
    sweep_fields: dict
    sweep_runs: dict[float, RunResults]

    @property
    def rates(self) -> list[float]:
        return sorted(self.scores)

    @property
    def interior(self) -> bool:
        rates = self.rates
        return rates[0] < self.chosen_lr < rates[-1]

    @property
    def added(self) -> list[float]:
        """Rates the grid extension added, in the order of the grid's edges."""
        return [lr for lr in self.rates if not any(math.isclose(lr, g) for g in self.grid)]


@dataclass
class Cell:
    """One method of one table: its selection and its full-length runs (one per seed)."""

    name: str  # the cell's folder relative to the results root, e.g. tweets/minilm/bottom_n
    label: str
    metrics: TaskMetrics
    selection: Selection
    runs: list[RunResults]  # full-length, sorted by seed
    step_ratio: float | None = None  # bench.json's interleaved step time over full's
    priced_ratio: float | None = None  # mean priced step over full's (see pricing.py)
    priced_source: str = ""
    ratio_at: Callable[[RunResults, int], float] | None = None  # (run, step) -> priced step ratio
    cache_share: float | None = None  # the cache's share of the time saved vs full
    bench_memory: int | None = None

    @property
    def short(self) -> str:
        return self.name.rsplit("/", 1)[-1]

    @property
    def first(self) -> RunResults:
        return self.runs[0]

    @property
    def short_runs(self) -> list[RunResults]:
        """The selection's short runs, by rate."""
        return [self.selection.sweep_runs[lr] for lr in sorted(self.selection.sweep_runs)]

    @property
    def all_runs(self) -> list[RunResults]:
        """Full-length and short runs: everything the cell trained."""
        return [*self.runs, *self.short_runs]

    @property
    def is_full(self) -> bool:
        return self.first.method == "full"

    @property
    def is_schedule(self) -> bool:
        return any(len(stage_timeline(run)) > 1 for run in self.runs)

    @property
    def chosen_lr(self) -> float:
        return self.selection.chosen_lr

    def scores(self, key: str) -> dict:
        """seed -> test metric."""
        return {run.seed: run.metrics[key] for run in self.runs}

    def test(self, key: str) -> Stat:
        return Stat.of([run.metrics[key] for run in self.runs])

    @property
    def trainable_share(self) -> float:
        """Mean over seeds of the step-averaged trainable share (constant for fixed methods)."""
        return statistics.fmean(mean_trainable_share(run) for run in self.runs)

    @property
    def start_share(self) -> float:
        return self.first.trainable_params / self.first.total_params

    @property
    def training_seconds(self) -> Stat:
        return Stat.of([training_seconds(run) for run in self.runs])

    @property
    def seconds_per_step(self) -> float:
        return statistics.fmean(training_seconds(run) / run.max_steps for run in self.runs)

    @property
    def curve_run(self) -> RunResults | None:
        """The selection seed's run when it evaluated during training."""
        for run in self.runs:
            if run.seed == self.selection.selection_seed and len(
                    validation_curve(run, self.metrics.select)) > 1:
                return run
        return None

    @property
    def peak_memory(self) -> tuple[int, str] | None:
        values = [run for run in self.runs if run.peak_memory_bytes]
        if not values:
            return None
        worst = max(values, key=lambda run: run.peak_memory_bytes)
        return worst.peak_memory_bytes, worst.peak_memory_kind or ""

    @property
    def optimizer_state_bytes(self) -> int | None:
        values = [run.optimizer_state_bytes for run in self.runs
                  if isinstance(run.optimizer_state_bytes, int)]
        return max(values) if values else None

    @property
    def cache_stats(self) -> dict | None:
        """Summed ``prefix_cache`` stats over the runs, or None for uncached cells."""
        stats = [run.prefix_cache for run in self.runs if isinstance(run.prefix_cache, dict)]
        if not stats:
            return None
        keys = ("hits", "records", "rebuilds", "record_seconds")
        summed = {key: sum(s.get(key, 0) for s in stats) for key in keys} | {"runs": len(stats)}
        if all("rows_filled" in s for s in stats):  # counted since the cache fills by row
            summed["rows_filled"] = sum(s["rows_filled"] for s in stats)
        return summed

    @property
    def audit(self) -> str:
        checked = [run.frozen_audit for run in self.runs  # full fine-tuning checks none
                   if isinstance(run.frozen_audit, dict) and run.frozen_audit.get("checked", 1) > 0]
        if not checked:
            return "n/a"
        passed = sum(1 for result in checked if result.get("passed"))
        if passed == len(checked):
            return f"passed ({passed}/{len(checked)})"
        return f"FAILED ({len(checked) - passed}/{len(checked)} runs)"


@dataclass
class Table:
    model: str
    dataset: str
    task: str
    cells: list[Cell]
    data: dict | None = None  # the splits every run saw (results.json's "data"), when recorded

    @property
    def title(self) -> str:
        return f"{self.model} on {self.dataset} ({self.task})"

    @property
    def metrics(self) -> TaskMetrics:
        return TASKS[self.task]

    @property
    def full(self) -> Cell | None:
        return next((cell for cell in self.cells if cell.is_full), None)


@dataclass
class Results:
    roots: list[Path]
    tables: list[Table]
    incomplete: list[str]  # cell folders with runs but no selection.json

    @property
    def runs(self) -> list[RunResults]:
        return [run for table in self.tables for cell in table.cells for run in cell.runs]

    @property
    def sweep_runs(self) -> list[RunResults]:
        return [run for table in self.tables for cell in table.cells
                for run in cell.selection.sweep_runs.values()]
