"""The cost axis: every optimizer step priced from measured step-time ratios, not from wall time.

The runs of a comparison share a machine with other work, so their wall times say as much about
the load as about the method. A step of each method is therefore priced as

    (its step time over full fine-tuning's, measured) x (full fine-tuning's seconds per step)

where the second factor is the mean over full fine-tuning's runs in the same table (training
time less in-training evaluation, over its steps): one number for every method of a table, so the
load it carries scales every method alike and the ranking comes from the ratios only. The ratios,
in order of preference:

- **cached cells** (``prefix_cache`` in results.json) whose method is in ``bench_cache.json``:
  a recording step at its epoch-1 ratio, a replaying step at its epochs-2+ ratio, any other step
  at the uncached ratio of the same benchmark, counted from the run's own hits and records. The
  same numbers give the cache's share of the time saved against full fine-tuning:
  ``hits x (uncached - replay) - records x (record - uncached)`` over that plus
  ``steps x (1 - uncached)`` (what freezing alone saves).
- **schedules** (the trainable set changes during the run: ``freeze_stage`` entries in
  ``log_history``): each step at the ratio of its stage, interpolated linearly in trainable
  parameters between ``bench.json``'s frozen-bottom-prefix rows (full, embeddings, bottom_n,
  all_but_head), which is exact where the stage is one of them. A schedule's cache replay is not
  priced, so its cost is an upper bound.
- **fixed methods** in ``bench.json`` (same method, policy, options, freeze mode and PEFT method;
  interleaved steps in one process): that ratio.
- **otherwise** (a model the benchmark did not cover): the run's own seconds per step over full
  fine-tuning's, measured under the same load; marked ``runs`` wherever it is shown.
"""

from __future__ import annotations

import statistics

from recipes.launcher.results import MethodSpec, RunResults
from recipes.report.aggregate import Cell, Table, descriptor, method_label, stage_timeline

PREFIX_POLICIES = ("bottom_n", "embeddings", "all_but_head")


def bench_rows(bench: dict | None, table: Table) -> dict[tuple, dict]:
    """bench.json's rows by descriptor, when the benchmark ran this table's model (a row names
    its method with the fields of a run's results.json: ``MethodSpec``)."""
    if bench is None or bench.get("model") not in (None, table.model):
        return {}
    specs = [(MethodSpec.from_dict(row), row) for row in bench["methods"]]
    return {
        descriptor(spec): row
        for spec, row in specs
        if row.get("label") == method_label(spec)  # not the FreezeTrainer-vs-loop row
    }


def prefix_points(rows: dict[tuple, dict]) -> list[tuple[int, float]]:
    """(trainable parameters, step ratio) of the rows that freeze a bottom prefix."""
    points = {}
    for row in rows.values():
        prefix = row["method"] == "freeze" and row.get("policy") in PREFIX_POLICIES and (
            row.get("freeze_mode") in (None, "requires_grad"))
        if (row["method"] == "full" or prefix) and row.get("trainable_params"):
            points[int(row["trainable_params"])] = float(row["step_ratio"])
    return sorted(points.items())


def interpolate(points: list[tuple[int, float]], x: float) -> float:
    """Piecewise-linear through ``points``, flat beyond the ends."""
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def trainable_at(run: RunResults, step: int) -> int:
    """Trainable parameters during optimizer step ``step`` (1-based)."""
    count = run.trainable_params
    for start, value in stage_timeline(run):
        if start < step:
            count = value
    return count


def cache_rows(bench_cache: dict | None, label: str) -> tuple[dict, dict] | None:
    """bench_cache.json's (uncached, cached) rows of a method, by label."""
    if bench_cache is None:
        return None
    methods = bench_cache.get("methods") or {}
    if label in methods and f"{label} cached" in methods:
        return methods[label], methods[f"{label} cached"]
    return None


def _cached_pricing(cell: Cell, uncached: dict, cached: dict) -> None:
    plain = float(uncached["ratio_to_full"])
    record = float(cached["first_epoch_ratio_to_full"])
    replay = float(cached["ratio_to_full"])
    priced, saved_by_cache, saved = [], 0.0, 0.0
    for run in cell.runs:
        stats = run.prefix_cache or {}
        hits, records = int(stats.get("hits", 0)), int(stats.get("records", 0))
        steps = run.max_steps
        other = max(0, steps - hits - records)
        priced.append((records * record + hits * replay + other * plain) / steps)
        saved_by_cache += hits * (plain - replay) - records * (record - plain)
        saved += steps * (1 - plain)
    cell.priced_ratio = statistics.fmean(priced)
    cell.priced_source = "bench_cache"
    total = saved + saved_by_cache
    cell.cache_share = saved_by_cache / total if total > 0 else None

    def ratio_at(run: RunResults, step: int) -> float:
        stats = run.prefix_cache or {}
        return record if step <= int(stats.get("records", 0)) else replay

    cell.ratio_at = ratio_at


def price_table(table: Table, bench: dict | None, bench_cache: dict | None) -> None:
    """Set each cell's step ratio (bench.json), priced ratio and per-step pricing."""
    rows = bench_rows(bench, table)
    points = prefix_points(rows)
    full = table.full
    for cell in table.cells:
        row = rows.get(descriptor(cell.first))
        if row is not None:
            cell.step_ratio = float(row["step_ratio"])
            cell.bench_memory = row.get("memory_bytes")
        cache = cache_rows(bench_cache, cell.label) if rows else None
        if cell.cache_stats is not None and cache is not None and not cell.is_schedule:
            _cached_pricing(cell, *cache)
        elif cell.is_schedule and len(points) >= 2:
            def ratio_at(run: RunResults, step: int, points=points) -> float:
                return interpolate(points, trainable_at(run, step))

            cell.ratio_at = ratio_at
            cell.priced_ratio = statistics.fmean(
                statistics.fmean(ratio_at(run, s) for s in range(1, run.max_steps + 1))
                for run in cell.runs
            )
            cell.priced_source = "bench, by stage"
        elif cell.step_ratio is not None:
            cell.priced_ratio, cell.priced_source = cell.step_ratio, "bench"
        elif full is not None:
            cell.priced_ratio = cell.seconds_per_step / full.seconds_per_step
            cell.priced_source = "runs"
        if cell.ratio_at is None and cell.priced_ratio is not None:
            cell.ratio_at = lambda run, step, ratio=cell.priced_ratio: ratio


def seconds_per_full_step(table: Table) -> float | None:
    """Full fine-tuning's measured training seconds per step: the unit of the cost axis."""
    return table.full.seconds_per_step if table.full is not None else None


def priced_seconds(table: Table, cell: Cell) -> float | None:
    """A run of ``cell`` priced in seconds: mean priced ratio x steps x full's seconds/step."""
    unit = seconds_per_full_step(table)
    if unit is None or cell.priced_ratio is None:
        return None
    return unit * cell.priced_ratio * statistics.fmean(run.max_steps for run in cell.runs)


def cumulative_seconds(table: Table, cell: Cell, run: RunResults,
                       steps: list[int]) -> list[float]:
    """Priced seconds from the start of ``run`` to the end of each of ``steps``."""
    unit = seconds_per_full_step(table)
    out, total, done = [], 0.0, 0
    for step in sorted(steps):
        while done < step:
            done += 1
            total += cell.ratio_at(run, done)
        out.append(unit * total)
    return out
