"""Reading a results folder (``recipes/sweep.py``'s layout) into checked cells and tables.

Every file is checked before anything is reported, and any mismatch is a ``ReportError`` naming
the file (see ``recipes.report.aggregate`` for the layout and the checks): run files need their
keys and numeric metrics, ``selection.json`` needs its keys, a known stop reason, the validation
score of every short run and the best of them as the chosen rate; the full-length runs must be at
the chosen rate, with test metrics, on the profile's seeds.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from pathlib import Path

from recipes.launcher.results import ResultsError, RunResults, read_results
from recipes.report.aggregate import (
    TASKS,
    Cell,
    ReportError,
    Results,
    Selection,
    Table,
    method_label,
)
from recipes.report.aggregate import (
    cell_key as aggregate_cell_key,
)

REQUIRED_COUNTS = ("trainable_params", "total_params")  # beyond the schema's REQUIRED keys
SELECTION_KEYS = ("grid", "validation_scores", "extensions", "stopped", "chosen_lr", "seeds",
                  "selection_seed")
STOPPED = ("interior", "max_extensions", "bounds")


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


def read_run_file(path: Path) -> RunResults:
    """One ``results.json`` through the schema; an unreadable one is a ``ReportError``."""
    try:
        return read_results(path)
    except ResultsError as error:
        raise ReportError(str(error)) from None


def read_run(path: Path, test: bool) -> RunResults:
    """One ``results.json`` through the schema (``recipes.launcher.results``), checked: the
    identity keys, a known task and numeric metrics (validation always; the reported test
    metrics for a full-length run)."""
    run = read_run_file(path)
    missing = [key for key in REQUIRED_COUNTS if getattr(run, key) is None]
    if missing:
        raise ReportError(f"{path}: missing {', '.join(missing)}")
    metrics = TASKS.get(run.task)
    if metrics is None:
        raise ReportError(f"{path}: unknown task {run.task!r} (known: {', '.join(TASKS)})")
    needed = [metrics.select] + ([key for key, _ in metrics.reported] if test else [])
    absent = [key for key in needed if not _number(run.metrics.get(key))]
    if test:
        absent += [key for key in ("train_runtime", "max_steps")
                   if not _number(getattr(run, key))]
    if absent:
        raise ReportError(f"{path}: no numeric {', '.join(absent)}")
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
    runs: dict[float, RunResults] = {}
    for run_path in sweep_paths:
        run = read_run(run_path, test=False)
        lr = float(run.learning_rate)
        match = next((r for r in by_rate if _same_rate(r, lr)), None)
        if match is None:
            raise ReportError(f"{run_path}: lr {lr:g} is not among {path}'s validation scores; "
                              "a stale run? remove it or rerun the cell")
        if run.seed != seed:
            raise ReportError(f"{run_path}: seed {run.seed} but {path} selected on seed {seed}")
        if match in runs:
            raise ReportError(f"{run_path}: a second short run at lr {lr:g} (also "
                              f"{runs[match].path}); remove one")
        score = TASKS[run.task].score(run)
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
        path = run.path
        if not _same_rate(float(run.learning_rate), selection.chosen_lr):
            raise ReportError(f"{path}: lr {float(run.learning_rate):g} but {selection_path} "
                              f"chose {selection.chosen_lr:g}; a stale run? remove it")
        if run.seed in seen:
            raise ReportError(f"{path}: seed {run.seed} again (also {seen[run.seed]})")
        seen[run.seed] = path
    if sorted(seen, key=str) != sorted(selection.seeds, key=str):
        raise ReportError(f"{selection_path}: seeds {selection.seeds} but full-length runs for "
                          f"{sorted(seen, key=str)}")
    everything = runs + list(selection.sweep_runs.values())
    # A cell's short runs may set their own options (a schedule compressed to the short length,
    # recorded in selection.json's sweep_fields): those options are not part of the identity.
    own = [name for name in ("policy_options", "peft_options") if name in selection.sweep_fields]

    def cell_key(run: RunResults) -> tuple:
        return aggregate_cell_key(dataclasses.replace(run.spec, **{name: {} for name in own}))

    keys = {cell_key(run) for run in everything}
    tables = {_table_key(run) for run in everything}
    if len(keys) > 1 or len(tables) > 1:
        odd = next(r for r in everything if cell_key(r) != cell_key(everything[0])
                   or r.model != everything[0].model or r.dataset != everything[0].dataset)
        raise ReportError(f"{odd.path}: not the same method, model or dataset as "
                          f"{everything[0].path}; one cell folder holds one method")
    runs.sort(key=lambda run: str(run.seed))
    name = selection_path.parent.relative_to(root).as_posix()
    if name == ".":
        name = selection.name
    return Cell(name, method_label(runs[0]), TASKS[runs[0].task], selection, runs)


def _table_key(run: RunResults) -> tuple[str, str, str]:
    """(model, dataset, task): the table a run belongs to (no dataset recorded: "")."""
    return str(run.model), str(run.dataset if run.dataset is not None else ""), run.task


def load_results(*roots: Path, allow_empty: bool = False) -> Results:
    """Every cell under each of ``roots`` (one folder per profile; a folder per cell, as
    ``recipes/sweep.py`` writes them). Without a complete cell it is a ``ReportError``, unless
    ``allow_empty`` (a profile whose cells are all still running: no table, only ``incomplete``).
    """
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
    if not cells and not allow_empty:
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
        grouped[_table_key(cell.first)].append(cell)
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
        tables.append(Table(model, dataset, task, members, same_data(members)))
    return tables


def same_data(cells: list[Cell]) -> dict | None:
    """The split digests (``results.json``'s ``data``) that every full-length run of a table
    recorded, or None when none recorded them (runs made before digests were recorded).

    Methods are compared on the same test rows only if their runs saw the same splits: a run
    reused across a change in how splits are drawn, or a cell from another dataset size, is a
    ``ReportError`` naming two cells that differ, as is a table where only some runs recorded it.
    """
    seen: dict[str, tuple[str, dict]] = {}
    unrecorded = []
    for cell in cells:
        for run in cell.runs:
            if not isinstance(run.data, dict):
                unrecorded.append(cell.name)
                continue
            seen.setdefault(json.dumps(run.data, sort_keys=True), (cell.name, run.data))
    if not seen:
        return None
    if unrecorded:
        raise ReportError(f"cell {unrecorded[0]} has runs that record no split digest (`data`) "
                          f"where cell {next(iter(seen.values()))[0]} does: rerun it on the "
                          "current splits")
    if len(seen) > 1:
        (first, ours), (second, theirs) = list(seen.values())[:2]
        split = next((name for name in sorted(set(ours) | set(theirs))
                      if ours.get(name) != theirs.get(name)), "?")
        raise ReportError(f"cells {first} and {second} saw different {split} splits "
                          f"({ours.get(split)} against {theirs.get(split)}): rerun the stale one")
    return next(iter(seen.values()))[1]


def load_bench(path: Path | None, keys: tuple[str, ...] = ("methods", "targets")) -> dict | None:
    """A benchmark JSON file, or None when ``path`` is None or absent."""
    if path is None or not Path(path).is_file():
        return None
    data = read_json(Path(path))
    missing = [key for key in keys if key not in data]
    if missing:
        raise ReportError(f"{path}: missing {', '.join(missing)}")
    return data
