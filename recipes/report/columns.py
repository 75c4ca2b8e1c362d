"""The report's tables: columns declared once (title, alignment, how to render one cell), so the
header and the rows come from the same declaration; the numbers' formats and each method's paired
difference from full fine-tuning (95% interval) that several columns show.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from recipes.report import pricing
from recipes.report.aggregate import Cell, Table
from recipes.report.benches import format_bytes
from recipes.report.stats import PairedDifference, Stat, paired_difference

CONFIDENCE = 0.95
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
    return Column(title, lambda cell, ctx: format_stat(cell.test(key),
                                                       cell.metrics.is_percent(key)))


def _difference_column(key: str, title: str) -> Column:
    def show(cell: Cell, ctx: Context) -> str:
        diff = ctx.diffs[key].get(cell.label)
        return "—" if diff is None else format_difference(diff, cell.metrics.is_percent(key))

    return Column(title, show)


def result_columns(table: Table) -> list[Column]:
    """The results table: the reported metrics, their paired differences from full, and the
    verdict on the primary metric. Each metric is a percentage or not by itself
    (``TaskMetrics.is_percent``): sft's token accuracy beside its loss."""
    metrics = table.metrics

    def unit(key: str) -> str:
        return " points" if metrics.is_percent(key) else ""

    primary_title = dict(metrics.reported)[metrics.primary]
    columns = [Column("method", lambda cell, ctx: cell.label, "---"),
               Column("trainable (%)", lambda cell, ctx: share_text(cell))]
    columns += [_metric_column(key, title) for key, title in metrics.reported]
    columns += [
        _difference_column(metrics.primary, f"{primary_title.split(' (')[0]} − full"
                                            f"{unit(metrics.primary)}, "
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
        columns.insert(-4, _difference_column(key, f"{title} − full{unit(key)} [CI]"))
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
    return f"{text} ({cell.first.max_steps} steps)"


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
    if "rows_filled" in stats:  # a step that fills a few rows and replays the rest is "recorded"
        text += f", {stats['rows_filled'] / runs:.0f} rows filled"
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


def search_text(cell: Cell, ctx: Context) -> str:
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
    Column("search", search_text, "---"),
    Column("short runs", lambda cell, ctx: _sweep_fields(cell)),
]


def _sweep_fields(cell: Cell) -> str:
    fields = cell.selection.sweep_fields
    key = "max_steps" if "max_steps" in fields else "num_train_epochs"  # max_steps wins
    shown = {key: fields[key]} if key in fields else {}
    runs = cell.selection.sweep_runs.values()
    steps = sorted({run.max_steps for run in runs})
    text = ", ".join(f"{k}={v}" for k, v in shown.items())
    return f"{text} ({'/'.join(map(str, steps))} steps), seed {cell.selection.selection_seed}"


def context_of(table: Table) -> Context:
    return Context(table, {key: differences(table, key) for key, _ in table.metrics.reported})
