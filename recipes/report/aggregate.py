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
it is listed as incomplete and left out of the tables.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from recipes.report.stats import Stat

REQUIRED_KEYS = ("method", "model", "task", "seed", "learning_rate", "trainable_params",
                 "total_params")
SELECTION_KEYS = ("grid", "validation_scores", "extensions", "stopped", "chosen_lr", "seeds",
                  "selection_seed")
STOPPED = ("interior", "max_extensions", "bounds")
SCHEDULE_TIMING = ("every", "unit", "seed")


class ReportError(ValueError):
    """An input that cannot be reported; the message starts with the file's path."""


@dataclass(frozen=True)
class TaskMetrics:
    """Which validation metric chose the rate, and which test metrics are reported."""

    select: str  # validation metric in results.json
    higher_is_better: bool
    primary: str  # the test metric of the statistics, plots and findings
    reported: tuple[tuple[str, str], ...]  # (key, column title)
    as_percent: bool

    def score(self, run: dict) -> float:
        """``recipes/sweep.py``'s selection score: higher is better."""
        value = run[self.select]
        return value if self.higher_is_better else -value

    def display(self, score: float) -> float:
        """A selection score back in the metric's own terms."""
        return score if self.higher_is_better else -score


TASKS = {
    "classification": TaskMetrics(
        "eval_accuracy", True, "test_accuracy",
        (("test_accuracy", "test accuracy (%)"), ("test_f1", "macro-F1 (%)")), True,
    ),
    "causal_lm": TaskMetrics(
        "eval_loss", False, "test_loss",
        (("test_loss", "test loss"), ("test_perplexity", "test perplexity")), False,
    ),
}


# -- labels and identity ----------------------------------------------------------------------


def _short(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _canonical(value) -> str:
    return json.dumps(value or {}, sort_keys=True)


def method_label(run: dict) -> str:
    """``"full"``, ``"bottom_n (n=4)"``, ``"bottom_n (n=4) zero_lr"``, ``"lora"``."""
    if run["method"] == "peft":
        return run.get("peft_method") or "peft"
    if run["method"] != "freeze":
        return run["method"]
    options = run.get("policy_options") or {}
    label = run.get("policy") or "freeze"
    if options:
        label += " (" + ", ".join(f"{k}={_short(v)}" for k, v in sorted(options.items())) + ")"
    mode = run.get("freeze_mode")
    if mode and mode != "requires_grad":
        label += f" {mode}"
    return label


def descriptor(run: dict) -> tuple:
    """What a benchmark row and a cell must share to cost the same per step. When a schedule
    changes stage (``every``, ``unit``) and its draw (``seed``) do not change a step's cost."""
    mode = run.get("freeze_mode") if run["method"] == "freeze" else None
    options = {k: v for k, v in (run.get("policy_options") or {}).items()
               if k not in SCHEDULE_TIMING}
    return (
        run["method"],
        run.get("policy"),
        _canonical(options),
        mode or ("requires_grad" if run["method"] == "freeze" else None),
        run.get("peft_method"),
    )


def cell_key(run: dict) -> tuple:
    return (*descriptor(run), _canonical(run.get("policy_options")),
            _canonical(run.get("peft_options")))


# -- per-run quantities ---------------------------------------------------------------------


def training_seconds(run: dict) -> float:
    """``train_runtime`` less the evaluations run inside the training loop (the log entries
    before the one that reports ``train_runtime``)."""
    evaluating = 0.0
    for entry in run.get("log_history") or []:
        if "train_runtime" in entry:
            break
        evaluating += entry.get("eval_runtime", 0.0)
    return run["train_runtime"] - evaluating


def stage_timeline(run: dict) -> list[tuple[int, int]]:
    """``(step, trainable parameters)`` from each stage change in ``log_history``, starting at
    step 0; a single entry for a method whose trainable set never changes."""
    changes = [
        (int(entry["step"]), int(entry["trainable_params"]))
        for entry in run.get("log_history") or []
        if isinstance(entry, dict) and "freeze_stage" in entry and "trainable_params" in entry
    ]
    if not changes or changes[0][0] > 0:
        changes.insert(0, (0, int(run["trainable_params"])))
    timeline: list[tuple[int, int]] = []
    for step, count in changes:  # the last entry of a step wins
        if timeline and timeline[-1][0] == step:
            timeline[-1] = (step, count)
        else:
            timeline.append((step, count))
    return timeline


def mean_trainable_share(run: dict) -> float:
    """Trainable share of the parameters, averaged over the run's optimizer steps."""
    timeline = stage_timeline(run)
    total_steps = int(run.get("max_steps") or 0)
    if total_steps <= 0 or len(timeline) == 1:
        return timeline[0][1] / run["total_params"]
    weighted = 0.0
    for (step, count), (next_step, _) in zip(timeline, [*timeline[1:], (total_steps, 0)]):
        weighted += count * max(0, min(next_step, total_steps) - step)
    return weighted / total_steps / run["total_params"]


def validation_curve(run: dict, key: str) -> list[tuple[int, float]]:
    """``(step, validation metric)`` of the evaluations in ``log_history``, one per step."""
    points: dict[int, float] = {}
    for entry in run.get("log_history") or []:
        if isinstance(entry, dict) and isinstance(entry.get(key), (int, float)) and "step" in entry:
            points.setdefault(int(entry["step"]), float(entry[key]))
    return sorted(points.items())


def auto_freeze_decisions(run: dict) -> list[tuple[int, int]]:
    """``(step, depth)`` of every ``auto_freeze`` decision window in ``log_history``."""
    return [
        (int(entry["step"]), int(entry["auto_freeze_depth"]))
        for entry in run.get("log_history") or []
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
    sweep_runs: dict[float, dict]

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
    runs: list[dict]  # full-length, sorted by seed
    step_ratio: float | None = None  # bench.json's interleaved step time over full's
    priced_ratio: float | None = None  # mean priced step over full's (see pricing.py)
    priced_source: str = ""
    ratio_at: Callable[[dict, int], float] | None = None  # (run, step) -> priced step ratio
    cache_share: float | None = None  # the cache's share of the time saved vs full
    bench_memory: int | None = None

    @property
    def short(self) -> str:
        return self.name.rsplit("/", 1)[-1]

    @property
    def first(self) -> dict:
        return self.runs[0]

    @property
    def is_full(self) -> bool:
        return self.first["method"] == "full"

    @property
    def is_schedule(self) -> bool:
        return any(len(stage_timeline(run)) > 1 for run in self.runs)

    @property
    def chosen_lr(self) -> float:
        return self.selection.chosen_lr

    def scores(self, key: str) -> dict:
        """seed -> test metric."""
        return {run["seed"]: run[key] for run in self.runs}

    def test(self, key: str) -> Stat:
        return Stat.of([run[key] for run in self.runs])

    @property
    def trainable_share(self) -> float:
        """Mean over seeds of the step-averaged trainable share (constant for fixed methods)."""
        return statistics.fmean(mean_trainable_share(run) for run in self.runs)

    @property
    def start_share(self) -> float:
        return self.first["trainable_params"] / self.first["total_params"]

    @property
    def training_seconds(self) -> Stat:
        return Stat.of([training_seconds(run) for run in self.runs])

    @property
    def seconds_per_step(self) -> float:
        return statistics.fmean(training_seconds(run) / run["max_steps"] for run in self.runs)

    @property
    def curve_run(self) -> dict | None:
        """The selection seed's run when it evaluated during training."""
        for run in self.runs:
            if run["seed"] == self.selection.selection_seed and len(
                    validation_curve(run, self.metrics.select)) > 1:
                return run
        return None

    @property
    def peak_memory(self) -> tuple[int, str] | None:
        values = [run for run in self.runs if run.get("peak_memory_bytes")]
        if not values:
            return None
        worst = max(values, key=lambda run: run["peak_memory_bytes"])
        return worst["peak_memory_bytes"], worst.get("peak_memory_kind", "")

    @property
    def optimizer_state_bytes(self) -> int | None:
        values = [run["optimizer_state_bytes"] for run in self.runs
                  if isinstance(run.get("optimizer_state_bytes"), int)]
        return max(values) if values else None

    @property
    def cache_stats(self) -> dict | None:
        """Summed ``prefix_cache`` stats over the runs, or None for uncached cells."""
        stats = [run["prefix_cache"] for run in self.runs if isinstance(run.get("prefix_cache"),
                                                                          dict)]
        if not stats:
            return None
        keys = ("hits", "records", "rebuilds", "record_seconds")
        return {key: sum(s.get(key, 0) for s in stats) for key in keys} | {"runs": len(stats)}

    @property
    def audit(self) -> str:
        checked = [run["frozen_audit"] for run in self.runs  # full fine-tuning checks none
                   if isinstance(run.get("frozen_audit"), dict)
                   and run["frozen_audit"].get("checked", 1) > 0]
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
    def runs(self) -> list[dict]:
        return [run for table in self.tables for cell in table.cells for run in cell.runs]

    @property
    def sweep_runs(self) -> list[dict]:
        return [run for table in self.tables for cell in table.cells
                for run in cell.selection.sweep_runs.values()]


# -- reading --------------------------------------------------------------------------------


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ReportError(f"{path}: not a readable JSON file ({reason})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: not a JSON object")
    return data


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_run(path: Path, test: bool) -> dict:
    """One ``results.json``, checked: the identity keys, a known task and numeric metrics
    (validation always; the reported test metrics for a full-length run)."""
    run = read_json(path)
    missing = [key for key in REQUIRED_KEYS if key not in run]
    if missing:
        raise ReportError(f"{path}: missing {', '.join(missing)}")
    metrics = TASKS.get(run["task"])
    if metrics is None:
        raise ReportError(f"{path}: unknown task {run['task']!r} (known: {', '.join(TASKS)})")
    needed = [metrics.select] + ([key for key, _ in metrics.reported] if test else [])
    if test:
        needed += ["train_runtime", "max_steps"]
    absent = [key for key in needed if not _number(run.get(key))]
    if absent:
        raise ReportError(f"{path}: no numeric {', '.join(absent)}")
    run["_path"] = str(path)
    return run


def _rate(value, path: Path, what: str) -> float:
    try:
        rate = float(value)
    except (TypeError, ValueError):
        raise ReportError(f"{path}: {what} {value!r} is not a number") from None
    if not rate > 0:
        raise ReportError(f"{path}: {what} {value!r} is not a positive learning rate")
    return rate


def _same_rate(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9)


def read_selection(path: Path, sweep_paths: list[Path]) -> Selection:
    """``selection.json`` and the short runs under ``sweep/``, checked against each other."""
    data = read_json(path)
    missing = [key for key in SELECTION_KEYS if key not in data]
    if missing:
        raise ReportError(f"{path}: missing {', '.join(missing)}")
    if data["stopped"] not in STOPPED:
        raise ReportError(f"{path}: stopped is {data['stopped']!r}; expected one of "
                          f"{', '.join(STOPPED)}")
    scores = data["validation_scores"]
    if not isinstance(scores, dict) or not scores:
        raise ReportError(f"{path}: validation_scores is not a non-empty mapping")
    by_rate = {}
    for name, score in scores.items():
        if not _number(score):
            raise ReportError(f"{path}: validation score {score!r} of lr {name} is not a number")
        by_rate[_rate(name, path, "validation_scores rate")] = float(score)
    grid = [_rate(lr, path, "grid rate") for lr in data["grid"]]
    chosen = _rate(data["chosen_lr"], path, "chosen_lr")
    if not any(_same_rate(chosen, lr) for lr in by_rate):
        raise ReportError(f"{path}: chosen_lr {chosen:g} has no validation score "
                          f"(rates: {', '.join(f'{lr:g}' for lr in sorted(by_rate))})")
    best = min(by_rate, key=lambda lr: (-by_rate[lr], lr))
    if not _same_rate(best, chosen):
        raise ReportError(f"{path}: chosen_lr {chosen:g} is not the best validation score "
                          f"(lr {best:g} scored {by_rate[best]:.6g})")
    if not isinstance(data["seeds"], list) or not data["seeds"]:
        raise ReportError(f"{path}: seeds is not a non-empty list")
    seed = data["selection_seed"]
    runs: dict[float, dict] = {}
    for run_path in sweep_paths:
        run = read_run(run_path, test=False)
        lr = float(run["learning_rate"])
        match = next((r for r in by_rate if _same_rate(r, lr)), None)
        if match is None:
            raise ReportError(f"{run_path}: lr {lr:g} is not among {path}'s validation scores; "
                              "a stale run? remove it or rerun the cell")
        if run["seed"] != seed:
            raise ReportError(f"{run_path}: seed {run['seed']} but {path} selected on seed {seed}")
        if match in runs:
            raise ReportError(f"{run_path}: a second short run at lr {lr:g} (also "
                              f"{runs[match]['_path']}); remove one")
        score = TASKS[run["task"]].score(run)
        if not math.isclose(score, by_rate[match], rel_tol=1e-9, abs_tol=1e-12):
            raise ReportError(f"{run_path}: validation score {score:.6g} but {path} records "
                              f"{by_rate[match]:.6g} for lr {lr:g}")
        runs[match] = run
    absent = [lr for lr in sorted(by_rate) if lr not in runs]
    if absent:
        raise ReportError(f"{path}: no short run (sweep/lr<rate>-seed{seed}/results.json) for "
                          f"lr {', '.join(f'{lr:g}' for lr in absent)}")
    return Selection(
        path=path, name=str(data.get("cell") or path.parent.name), grid=sorted(grid),
        scores=by_rate, extensions=int(data["extensions"]), stopped=data["stopped"],
        chosen_lr=next(lr for lr in by_rate if _same_rate(lr, chosen)), seeds=data["seeds"],
        selection_seed=seed, sweep_fields=dict(data.get("sweep_fields") or {}), sweep_runs=runs,
    )


def read_cell(root: Path, selection_path: Path, run_paths: list[Path],
              sweep_paths: list[Path]) -> Cell:
    selection = read_selection(selection_path, sweep_paths)
    runs = [read_run(path, test=True) for path in run_paths]
    seen: dict = {}
    for run in runs:
        path = run["_path"]
        if not _same_rate(float(run["learning_rate"]), selection.chosen_lr):
            raise ReportError(f"{path}: lr {float(run['learning_rate']):g} but {selection_path} "
                              f"chose {selection.chosen_lr:g}; a stale run? remove it")
        if run["seed"] in seen:
            raise ReportError(f"{path}: seed {run['seed']} again (also {seen[run['seed']]})")
        seen[run["seed"]] = path
    if sorted(seen, key=str) != sorted(selection.seeds, key=str):
        raise ReportError(f"{selection_path}: seeds {selection.seeds} but full-length runs for "
                          f"{sorted(seen, key=str)}")
    everything = runs + list(selection.sweep_runs.values())
    keys = {cell_key(run) for run in everything}
    tables = {(str(run["model"]), str(run.get("dataset", "")), run["task"]) for run in everything}
    if len(keys) > 1 or len(tables) > 1:
        odd = next(r for r in everything if cell_key(r) != cell_key(everything[0])
                   or r["model"] != everything[0]["model"]
                   or r.get("dataset") != everything[0].get("dataset"))
        raise ReportError(f"{odd['_path']}: not the same method, model or dataset as "
                          f"{everything[0]['_path']}; one cell folder holds one method")
    runs.sort(key=lambda run: str(run["seed"]))
    name = selection_path.parent.relative_to(root).as_posix()
    if name == ".":
        name = selection.name
    return Cell(name, method_label(runs[0]), TASKS[runs[0]["task"]], selection, runs)


def load_results(*roots: Path) -> Results:
    """Every cell under each of ``roots`` (one folder per profile; a folder per cell, as
    ``recipes/sweep.py`` writes them)."""
    cells, incomplete = [], []
    roots = [Path(root) for root in roots]
    for root in roots:
        if not root.is_dir():
            raise ReportError(f"{root}: no such folder of runs")
        selections = sorted(root.rglob("selection.json"))
        results = sorted(root.rglob("results.json"))
        claimed: set[Path] = set()
        for selection_path in selections:
            folder = selection_path.parent
            run_paths = [p for p in results
                         if p.parent.parent == folder and p.parent.name != "sweep"]
            sweep_paths = [p for p in results if p.parent.parent == folder / "sweep"]
            claimed.update(run_paths, sweep_paths)
            cells.append(read_cell(root, selection_path, run_paths, sweep_paths))
        incomplete += sorted({
            (p.parent.parent.parent if p.parent.parent.name == "sweep" else p.parent.parent)
            .relative_to(root).as_posix()
            for p in results if p not in claimed
        })
    if not cells:
        raise ReportError(f"{', '.join(map(str, roots))}: no selection.json under it "
                          "(recipes/sweep.py writes one when a cell is complete)"
                          + (f"; incomplete: {', '.join(incomplete)}" if incomplete else ""))
    names = [cell.name for cell in cells]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ReportError(f"{', '.join(map(str, roots))}: cell {twice[0]} in more than one "
                          "folder of runs; report each profile's folder once")
    return Results(roots, build_tables(cells), incomplete)


def build_tables(cells: list[Cell]) -> list[Table]:
    """Group cells by (model, dataset, task); full fine-tuning first, then by trainable share."""
    grouped: dict[tuple, list[Cell]] = defaultdict(list)
    for cell in cells:
        run = cell.first
        grouped[(str(run["model"]), str(run.get("dataset", "")), run["task"])].append(cell)
    tables = []
    for (model, dataset, task), members in sorted(grouped.items()):
        labels = defaultdict(list)
        for cell in members:
            labels[cell.label].append(cell)
        for same in labels.values():
            if len(same) > 1:
                for cell in same:
                    cell.label = f"{cell.label} [{cell.short}]"
        members.sort(key=lambda c: (not c.is_full, -c.trainable_share, c.label))
        tables.append(Table(model, dataset, task, members))
    return tables


def load_bench(path: Path | None, keys: tuple[str, ...] = ("methods", "targets")) -> dict | None:
    """A benchmark JSON file, or None when ``path`` is None or absent."""
    if path is None or not Path(path).is_file():
        return None
    data = read_json(Path(path))
    missing = [key for key in keys if key not in data]
    if missing:
        raise ReportError(f"{path}: missing {', '.join(missing)}")
    return data
