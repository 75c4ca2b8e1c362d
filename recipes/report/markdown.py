"""The report's text: tables whose columns are declared once, and findings read off the numbers.

A table is a list of ``Column`` (title, alignment, how to render one cell); the header and the
rows come from the same declaration. ``findings`` states a difference from full fine-tuning only
where the paired 95% interval excludes zero; nothing in it is written in advance.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

from recipes.report import pricing
from recipes.report.aggregate import Cell, Results, Table, auto_freeze_decisions, validation_curve
from recipes.report.benches import format_bytes, verdict
from recipes.report.stats import PairedDifference, Stat, paired_difference, pareto_front, plateau

CONFIDENCE = 0.95
PLATEAU_THRESHOLD = 0.01  # one accuracy point (or 0.01 of loss): a third of the curve gaining
# less than that is a plateau at this validation size
MEMORY_KINDS = {"cuda": "CUDA", "cpu_max_rss": "RSS"}


# -- numbers ----------------------------------------------------------------------------------


def format_stat(stat: Stat, percent: bool) -> str:
    scale, digits = (100, 2) if percent else (1, 3)
    mean = f"{stat.mean * scale:.{digits}f}"
    return mean if stat.std is None else f"{mean} ± {stat.std * scale:.{digits}f}"


def format_difference(diff: PairedDifference, percent: bool) -> str:
    scale, digits = (100, 2) if percent else (1, 3)
    text = f"{diff.mean * scale:+.{digits}f}"
    if diff.low is None:
        return f"{text} (n={diff.n}, no interval)"
    return f"{text} [{diff.low * scale:+.{digits}f}, {diff.high * scale:+.{digits}f}]"


def share_text(cell: Cell) -> str:
    share = f"{100 * cell.trainable_share:.3g}"
    if cell.is_schedule:
        share += f" (mean over steps; {100 * cell.start_share:.3g} at start)"
    return share


# -- comparisons against full fine-tuning -----------------------------------------------------


def differences(table: Table, key: str) -> dict[str, PairedDifference]:
    """Cell label -> paired difference (cell - full) of test metric ``key`` over shared seeds."""
    full = table.full
    if full is None:
        return {}
    return {
        cell.label: paired_difference(cell.scores(key), full.scores(key), CONFIDENCE)
        for cell in table.cells
        if not cell.is_full
    }


def verdict_of(diff: PairedDifference | None, higher_is_better: bool) -> str:
    if diff is None:
        return "reference"
    if diff.low is None:
        return "no interval (1 seed)"
    if not diff.excludes_zero:
        return "indistinguishable"
    better = (diff.mean > 0) == higher_is_better
    return "better than full" if better else "worse than full"


# -- columns ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    title: str
    render: Callable[[Cell, Context], str]
    align: str = "---:"


@dataclass
class Context:
    """What a column may need beyond its cell."""

    table: Table
    diffs: dict[str, dict[str, PairedDifference]]  # metric -> label -> difference


def render(columns: list[Column], cells: list[Cell], context: Context) -> str:
    lines = ["| " + " | ".join(c.title for c in columns) + " |",
             "|" + "|".join(c.align for c in columns) + "|"]
    for cell in cells:
        lines.append("| " + " | ".join(c.render(cell, context) for c in columns) + " |")
    return "\n".join(lines)


def _metric_column(key: str, title: str) -> Column:
    return Column(title, lambda cell, ctx: format_stat(cell.test(key), cell.metrics.as_percent))


def _difference_column(key: str, title: str) -> Column:
    def show(cell: Cell, ctx: Context) -> str:
        diff = ctx.diffs[key].get(cell.label)
        return "—" if diff is None else format_difference(diff, cell.metrics.as_percent)

    return Column(title, show)


def result_columns(table: Table) -> list[Column]:
    """The results table: accuracy, its paired difference from full, and the verdict."""
    metrics = table.metrics
    unit = " points" if metrics.as_percent else ""
    primary_title = dict(metrics.reported)[metrics.primary]
    columns = [Column("method", lambda cell, ctx: cell.label, "---"),
               Column("trainable (%)", lambda cell, ctx: share_text(cell))]
    columns += [_metric_column(key, title) for key, title in metrics.reported]
    columns += [
        _difference_column(metrics.primary, f"{primary_title.split(' (')[0]} − full{unit}, "
                                            f"mean [{CONFIDENCE:.0%} CI]"),
        Column("paired seeds", lambda cell, ctx: str(len(cell.runs))),
        Column("vs full", lambda cell, ctx: verdict_of(
            ctx.diffs[metrics.primary].get(cell.label), metrics.higher_is_better), "---"),
        Column("lr", lambda cell, ctx: f"{cell.chosen_lr:g}"),
        Column("frozen audit", lambda cell, ctx: cell.audit, "---"),
    ]
    secondary = [key for key, _ in metrics.reported if key != metrics.primary]
    for key in secondary:
        title = dict(metrics.reported)[key].split(" (")[0]
        columns.insert(-4, _difference_column(key, f"{title} − full{unit} [CI]"))
    return columns


def _ratio(cell: Cell, ctx: Context) -> str:
    return "—" if cell.step_ratio is None else f"{cell.step_ratio:.2f}"


def _priced(cell: Cell, ctx: Context) -> str:
    if cell.priced_ratio is None:
        return "—"
    seconds = pricing.priced_seconds(ctx.table, cell)
    return f"{cell.priced_ratio:.2f} ({cell.priced_source}); {seconds:.0f} s"


def _measured(cell: Cell, ctx: Context) -> str:
    stat = cell.training_seconds
    text = f"{stat.mean:.0f}" if stat.std is None else f"{stat.mean:.0f} ± {stat.std:.0f}"
    return f"{text} ({cell.first['max_steps']} steps)"


def _memory(cell: Cell, ctx: Context) -> str:
    memory = cell.peak_memory
    if memory is None:
        return "—"
    return f"{format_bytes(memory[0])} ({MEMORY_KINDS.get(memory[1], memory[1])})"


def _cache(cell: Cell, ctx: Context) -> str:
    stats = cell.cache_stats
    if stats is None:
        return "—"
    runs = stats["runs"]
    text = (f"{stats['hits'] / runs:.0f} replayed / {stats['records'] / runs:.0f} recorded, "
            f"{stats['rebuilds'] / runs:.1f} rebuilds, {stats['record_seconds'] / runs:.0f} s "
            "recording")
    if cell.cache_share is not None:
        text += f"; {100 * cell.cache_share:.0f}% of the time saved"
    return text


COST_COLUMNS = [
    Column("method", lambda cell, ctx: cell.label, "---"),
    Column("trainable (%)", lambda cell, ctx: share_text(cell)),
    Column("step time vs full (bench)", _ratio),
    Column("priced step vs full (source); priced run", _priced),
    Column("training time per run (s, under load)", _measured),
    Column("peak memory", _memory),
    Column("optimizer state", lambda cell, ctx: format_bytes(cell.optimizer_state_bytes)),
    Column("prefix cache per run (mean)", _cache, "---"),
]


def _rates(cell: Cell, ctx: Context) -> str:
    selection, metrics = cell.selection, cell.metrics
    scale, digits = (100, 2) if metrics.as_percent else (1, 4)
    parts = []
    for lr in selection.rates:
        text = f"{lr:g}: {metrics.display(selection.scores[lr]) * scale:.{digits}f}"
        if lr in selection.added:
            text += "†"
        parts.append(f"**{text}**" if lr == selection.chosen_lr else text)
    return ", ".join(parts)


def _search(cell: Cell, ctx: Context) -> str:
    selection = cell.selection
    if selection.interior:
        place = "interior"
    else:
        edge = "top" if selection.chosen_lr == selection.rates[-1] else "bottom"
        reason = {"bounds": "the next rate would leave the bounds",
                  "max_extensions": "extension limit reached",
                  "interior": "no further extension"}[selection.stopped]
        place = f"at the {edge} edge: {reason}"
    return f"{place} ({selection.extensions} added)"


SELECTION_COLUMNS = [
    Column("method", lambda cell, ctx: cell.label, "---"),
    Column("starting grid", lambda cell, ctx: ", ".join(f"{lr:g}" for lr in cell.selection.grid)),
    Column("validation score per rate (chosen in bold, † added at an edge)", _rates, "---"),
    Column("chosen lr", lambda cell, ctx: f"{cell.chosen_lr:g}"),
    Column("search", _search, "---"),
    Column("short runs", lambda cell, ctx: _sweep_fields(cell)),
]


def _sweep_fields(cell: Cell) -> str:
    fields = cell.selection.sweep_fields
    key = "max_steps" if "max_steps" in fields else "num_train_epochs"  # max_steps wins
    shown = {key: fields[key]} if key in fields else {}
    runs = cell.selection.sweep_runs.values()
    steps = sorted({run.get("max_steps") for run in runs})
    text = ", ".join(f"{k}={v}" for k, v in shown.items())
    return f"{text} ({'/'.join(map(str, steps))} steps), seed {cell.selection.selection_seed}"


# -- sections -------------------------------------------------------------------------------


def context_of(table: Table) -> Context:
    return Context(table, {key: differences(table, key) for key, _ in table.metrics.reported})


def curve_markdown(table: Table) -> list[str]:
    """Full fine-tuning's validation curve as a table, and whether it plateaued."""
    full = table.full
    run = full.curve_run if full is not None else None
    if run is None:
        return [f"Full fine-tuning's run has no in-training validation: no curve for "
                f"{table.title}.", ""]
    metrics = table.metrics
    scale = 100 if metrics.as_percent else 1
    curve = validation_curve(run, metrics.select)
    unit = " (%)" if metrics.as_percent else ""
    lines = ["| step | " + " | ".join(str(step) for step, _ in curve) + " |",
             "|---|" + "---:|" * len(curve),
             f"| validation {metrics.select.removeprefix('eval_')}{unit} | "
             + " | ".join(f"{value * scale:.1f}" for _, value in curve) + " |", ""]
    lines += [plateau_sentence(table, curve), ""]
    return lines


def plateau_sentence(table: Table, curve) -> str:
    metrics = table.metrics
    scale, unit = (100, " points") if metrics.as_percent else (1, "")
    result = plateau(curve, PLATEAU_THRESHOLD, metrics.higher_is_better)
    name = f"full fine-tuning's validation {metrics.select.removeprefix('eval_')}"
    if result is None:
        return f"{table.title}: {name} has fewer than 3 evaluations; no plateau can be judged."
    state = ("has plateaued" if result.reached else "is still improving")
    limit_unit = unit.rstrip("s") if PLATEAU_THRESHOLD * scale == 1 else unit
    return (
        f"{table.title}: {name} {state}: the mean of the last third of its "
        f"{len(curve)} evaluations is {result.last * scale:.2f}, the middle third's "
        f"{result.middle * scale:.2f} (gain {result.gain * scale:+.2f}{unit}; a plateau is a "
        f"gain under {PLATEAU_THRESHOLD * scale:g}{limit_unit}); best {result.best * scale:.2f} at "
        f"step {result.best_step} of {table.full.first['max_steps']}."
    )


def auto_freeze_markdown(table: Table) -> list[str]:
    """auto_freeze's decisions per run: final depth and the step of each freeze."""
    cells = [c for c in table.cells if any(auto_freeze_decisions(run) for run in c.runs)]
    if not cells:
        return []
    lines = ["| method | seed | decisions | final depth | depth reached at step |",
             "|---|---:|---:|---:|---|"]
    for cell in cells:
        for run in cell.runs:
            decisions = auto_freeze_decisions(run)
            freezes, depth = [], None
            for step, new in decisions:
                if depth is not None and new > depth or depth is None and new > 0:
                    freezes.append(f"{new} @ {step}")
                depth = new
            final = decisions[-1][1] if decisions else 0
            lines.append(f"| {cell.label} | {run['seed']} | {len(decisions)} | {final} | "
                         f"{', '.join(freezes) or 'never froze'} |")
    return ["Adaptive freezing's decisions (each window's depth is logged in `log_history` as "
            "`auto_freeze_depth`; a new depth applies from the next step):", "", *lines, ""]


def environment_markdown(results: Results, bench: dict | None) -> list[str]:
    """Distinct hardware / versions in the results files, and the load under which they ran."""
    counts: dict[str, int] = defaultdict(int)
    for run in results.runs + results.sweep_runs:
        counts[_environment_line(run)] += 1
    lines = [f"- {count} runs: {text}" for text, count in counts.items()]
    if bench is not None:
        lines.append(f"- bench: {_environment_line(bench)}")
    threads = sorted({str((run.get("hardware") or {}).get("torch_threads", "?"))
                      for run in results.runs})
    lines += ["", f"The runs used {', '.join(threads)} torch thread(s) each on a machine shared "
              "with other work: their training times were measured under load and only set "
              "the unit of the cost axis (full fine-tuning's seconds per step); no method is "
              "ranked by wall time."]
    return lines


def _environment_line(data: dict) -> str:
    hardware = data.get("hardware") or {}
    versions = data.get("versions") or {}
    parts = [hardware.get("platform", "unknown platform")]
    if hardware.get("gpu"):
        parts.append(f"{hardware.get('gpu_count', 1)} x {hardware['gpu']}")
    parts.append(
        f"{hardware.get('cpu_count', '?')} CPUs, {hardware.get('torch_threads', '?')} torch threads"
    )
    parts.append("python " + str(data.get("python", "?")))
    parts.append(", ".join(f"{name} {version}" for name, version in sorted(versions.items())))
    return "; ".join(parts)


def _profile_line(results: Results) -> str:
    steps = sorted({run["max_steps"] for run in results.runs})
    seeds = sorted({len(cell.runs) for t in results.tables for cell in t.cells})
    return (f"{len(results.runs)} full-length runs ({'/'.join(map(str, seeds))} seeds per method, "
            f"{'/'.join(map(str, steps))} steps) and {len(results.sweep_runs)} short runs in "
            f"{sum(len(t.cells) for t in results.tables)} cells")


# -- findings -------------------------------------------------------------------------------


def pareto_cells(table: Table, cost: Callable[[Cell], float | None]) -> list[Cell]:
    metrics = table.metrics
    sign = 1 if metrics.higher_is_better else -1
    points = [cell for cell in table.cells if cost(cell) is not None]
    return pareto_front(points, cost, lambda cell: sign * cell.test(metrics.primary).mean)


def findings(results: Results, bench: dict | None) -> list[str]:
    """Statements read off the numbers."""
    out = []
    for table in results.tables:
        metrics = table.metrics
        name = metrics.primary.removeprefix("test_")
        scale, unit = (100, " points") if metrics.as_percent else (1, "")
        full = table.full
        if full is None:
            out.append(f"{table.title}: no full fine-tuning cell; no paired comparison.")
        else:
            diffs = differences(table, metrics.primary)
            same, apart = [], []
            for cell in table.cells:
                diff = diffs.get(cell.label)
                if diff is None:
                    continue
                if diff.excludes_zero:
                    apart.append((cell, diff))
                else:
                    same.append(cell.label)
            for cell, diff in apart:
                word = verdict_of(diff, metrics.higher_is_better).replace(" than full", "")
                out.append(
                    f"{table.title}: {cell.label} is {word} than full fine-tuning on test {name}: "
                    f"{diff.mean * scale:+.2f}{unit}, {CONFIDENCE:.0%} CI "
                    f"[{diff.low * scale:+.2f}, {diff.high * scale:+.2f}] over {diff.n} paired "
                    "seeds."
                )
            if same:
                out.append(
                    f"{table.title}: indistinguishable from full fine-tuning "
                    f"({format_stat(full.test(metrics.primary), metrics.as_percent)}) on test "
                    f"{name} at this budget (the {CONFIDENCE:.0%} interval of the paired "
                    f"difference includes zero): {', '.join(same)}."
                )
        for axis, cost in (("trainable share", lambda c: c.trainable_share),
                           ("priced step time", lambda c: c.priced_ratio)):
            front = pareto_cells(table, cost)
            if len(front) > 0:
                out.append(f"{table.title}: Pareto front of test {name} (mean) against {axis}, "
                           f"cheapest first: {', '.join(c.label for c in front)}.")
        edges = [c for c in table.cells if not c.selection.interior]
        if edges:
            listing = "; ".join(f"{c.label} ({_search(c, None)})" for c in edges)
            out.append(f"{table.title}: learning rate interior for "
                       f"{len(table.cells) - len(edges)} of {len(table.cells)} methods; at an "
                       f"edge for {listing}.")
        else:
            out.append(f"{table.title}: the chosen learning rate is interior to the searched "
                       f"grid for all {len(table.cells)} methods.")
        if full is not None and full.curve_run is not None:
            out.append(plateau_sentence(table, validation_curve(full.curve_run, metrics.select)))
        failed = [c.label for c in table.cells if c.audit.startswith("FAILED")]
        audited = [c for c in table.cells if c.audit != "n/a"]
        if failed:
            out.append(f"{table.title}: the frozen-weights audit failed for {', '.join(failed)}.")
        elif audited:
            out.append(f"{table.title}: the frozen-weights audit passed in all "
                       f"{sum(len(c.runs) for c in audited)} full-length runs of the "
                       f"{len(audited)} methods that freeze weights.")
    if bench is not None:
        for target_name, result in bench["targets"].items():
            line = f"Benchmark target {target_name}: {verdict(result.get('passed'))}"
            value = result.get("value")
            if isinstance(value, float):
                line += f" (value {value:.3g}, threshold {result.get('threshold')})"
            out.append(line + ".")
    return out


# -- the document ---------------------------------------------------------------------------

CAPTIONS = {
    "pareto.png": "Test accuracy against trainable share (log) and priced step time, with the "
                  "Pareto front",
    "time_to_accuracy.png": "Validation accuracy against cumulative priced training cost",
    "validation_curves.png": "Validation accuracy over optimizer steps",
    "memory.png": "Peak memory of the runs per method",
}


def report_markdown(results: Results, command: str, bench: dict | None, plots: list[str],
                    bench_sections: list[tuple[str, str]]) -> str:
    parts = [
        "# Results: freezing policies compared with full fine-tuning and PEFT",
        "",
        f"Report: `{command}`, from {_profile_line(results)} under "
        f"{', '.join(f'`{root}`' for root in results.roots)} (written by `recipes/sweep.py`).",
        "",
        "How to read it:",
        "",
        "- **Rates chosen on validation.** Every rate of a method's grid trained a short run "
        "with the selection seed and was scored on validation; when the best rate sat at an "
        "edge of the grid the grid was extended one step beyond it. The chosen rate then "
        "trained every seed at full length; only those runs are scored on test.",
        f"- **Paired differences.** A seed fixes the data order and initialisation for every "
        f"method, so each method's test score is compared with full fine-tuning's of the same "
        f"seed: mean difference and its {CONFIDENCE:.0%} t-interval (t quantile for n − 1 "
        "degrees of freedom). A method differs from full fine-tuning only where that interval "
        "excludes zero.",
        "- **Costs.** Step-time ratios come from the interleaved benchmark (`bench.json`, "
        "`bench_cache.json`), not from the runs' wall time: a run is priced as its steps x "
        "its priced step ratio x full fine-tuning's measured seconds per step "
        "(`recipes/report/pricing.py`). A cached run's recording and replaying steps are priced "
        "from `bench_cache.json` with the run's own counts; a schedule's steps by the trainable "
        "count of their stage, interpolated between the bench's frozen-prefix rows, without its "
        "cache's replay (an upper bound); `runs` marks a ratio taken from the runs' own times "
        "where the benchmark did not cover the model or method.",
        "",
        "## Hardware and versions",
        "",
        *environment_markdown(results, bench),
        "",
    ]
    if results.incomplete:
        parts += ["Not reported (runs without `selection.json`: cells still running): "
                  + ", ".join(f"`{name}`" for name in results.incomplete) + ".", ""]
    for table in results.tables:
        context = context_of(table)
        unit = pricing.seconds_per_full_step(table)
        parts += [
            f"## {table.title}", "",
            render(result_columns(table), table.cells, context), "",
            "### Costs", "",
            (f"Priced runs use full fine-tuning's measured {unit:.2f} s per step (its training "
             "time less in-training evaluation, over its steps, mean of its runs)."
             if unit else "No full fine-tuning cell: runs are not priced."), "",
            render(COST_COLUMNS, table.cells, context), "",
            "### Learning rates", "",
            render(SELECTION_COLUMNS, table.cells, context), "",
            "### Full fine-tuning's validation curve", "",
            *curve_markdown(table),
            *auto_freeze_markdown(table),
        ]
    if plots:
        parts += ["## Plots", ""]
        for name in plots:
            parts += [f"![{CAPTIONS[name]}]({name})", ""]
    for title, text in bench_sections:
        parts += [f"## {title}", "", text, ""]
    parts += ["## Findings", "", *[f"- {line}" for line in findings(results, bench)], ""]
    return "\n".join(parts)
