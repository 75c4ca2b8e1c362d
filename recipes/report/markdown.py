"""The report's text: its sections, and findings read off the numbers.

The tables' columns are ``recipes.report.columns``. ``findings`` states a difference from full
fine-tuning only where the paired 95% interval excludes zero; nothing in it is written in advance.
Every sentence reads the task's direction (a higher accuracy, a lower loss is better) and scale
(percentage points, or a loss's own units to 3 decimals). A task whose runs record generations
(``--task sft``) gets a section of them: each prompt's reference and every method's answer.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable

from recipes.report import pricing
from recipes.report.aggregate import (
    Cell,
    Results,
    Table,
    auto_freeze_decisions,
    recorded_hours,
    recorded_seconds,
    slow_runs,
    validation_curve,
)
from recipes.report.benches import verdict
from recipes.report.columns import (
    CONFIDENCE,
    COST_COLUMNS,
    SELECTION_COLUMNS,
    context_of,
    differences,
    format_stat,
    render,
    result_columns,
    search_text,
    verdict_of,
)
from recipes.report.stats import bonferroni, pareto_front, plateau

PLATEAU_THRESHOLD = 0.01  # one accuracy point (or 0.01 of loss): a third of the curve gaining
# less than that is a plateau at this validation size


def _places(percent: bool, places: int = 2) -> int:
    """Decimal places of a metric in the text: ``places`` for a percentage, 3 for a loss (0.01
    of a loss is a difference worth reading)."""
    return places if percent else 3


# -- sections -------------------------------------------------------------------------------


def curve_markdown(table: Table) -> list[str]:
    """Full fine-tuning's validation curve as a table, and whether it plateaued."""
    full = table.full
    run = full.curve_run if full is not None else None
    if run is None:
        return [f"Full fine-tuning's run has no in-training validation: no curve for "
                f"{table.title}.", ""]
    metrics = table.metrics
    scale = 100 if metrics.as_percent else 1
    places = _places(metrics.as_percent, 1)
    curve = validation_curve(run, metrics.select)
    unit = " (%)" if metrics.as_percent else ""
    lines = ["| step | " + " | ".join(str(step) for step, _ in curve) + " |",
             "|---|" + "---:|" * len(curve),
             f"| validation {metrics.select.removeprefix('eval_')}{unit} | "
             + " | ".join(f"{value * scale:.{places}f}" for _, value in curve) + " |", ""]
    lines += [plateau_sentence(table, curve), ""]
    return lines


def plateau_sentence(table: Table, curve) -> str:
    metrics = table.metrics
    scale, unit = (100, " points") if metrics.as_percent else (1, "")
    p = _places(metrics.as_percent)
    result = plateau(curve, PLATEAU_THRESHOLD, metrics.higher_is_better)
    name = f"full fine-tuning's validation {metrics.select.removeprefix('eval_')}"
    if result is None:
        return f"{table.title}: {name} has fewer than 3 evaluations; no plateau can be judged."
    state = result.state
    limit_unit = unit.rstrip("s") if PLATEAU_THRESHOLD * scale == 1 else unit
    return (
        f"{table.title}: {name} {state}: the mean of the last third of its "
        f"{len(curve)} evaluations is {result.last * scale:.{p}f}, the middle third's "
        f"{result.middle * scale:.{p}f} (gain {result.gain * scale:+.{p}f}{unit}; a plateau is a "
        f"gain under {PLATEAU_THRESHOLD * scale:g}{limit_unit}); best {result.best * scale:.{p}f} "
        f"at "
        f"step {result.best_step} of {table.full.first.max_steps}."
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
            lines.append(f"| {cell.label} | {run.seed} | {len(decisions)} | {final} | "
                         f"{', '.join(freezes) or 'never froze'} |")
    return ["Adaptive freezing's decisions (each window's depth is logged in `log_history` as "
            "`auto_freeze_depth`; a new depth applies from the next step):", "", *lines, ""]


def environment_markdown(results: Results, bench: dict | None) -> list[str]:
    """Distinct hardware / versions in the results files, and the load under which they ran."""
    counts: dict[str, int] = defaultdict(int)
    for run in results.runs + results.sweep_runs:
        counts[_environment_line(run.hardware, run.versions, run.python)] += 1
    lines = [f"- {count} runs: {text}" for text, count in counts.items()]
    if bench is not None:
        line = _environment_line(bench.get("hardware"), bench.get("versions"), bench.get("python"))
        lines.append(f"- bench: {line}")
    threads = sorted({str((run.hardware or {}).get("torch_threads", "?")) for run in results.runs})
    lines += ["", f"The runs used {', '.join(threads)} torch thread(s) each on a machine shared "
              "with other work: their training times were measured under load and only set "
              "the unit of the cost axis (full fine-tuning's seconds per step); no method is "
              "ranked by wall time."]
    return lines


def _environment_line(hardware: dict | None, versions: dict | None, python: str | None) -> str:
    hardware = hardware or {}
    versions = versions or {}
    parts = [hardware.get("platform", "unknown platform")]
    if hardware.get("gpu"):
        parts.append(f"{hardware.get('gpu_count', 1)} x {hardware['gpu']}")
    parts.append(
        f"{hardware.get('cpu_count', '?')} CPUs, {hardware.get('torch_threads', '?')} torch threads"
    )
    parts.append("python " + str(python if python is not None else "?"))
    parts.append(", ".join(f"{name} {version}" for name, version in sorted(versions.items())))
    return "; ".join(parts)


def _profile_line(results: Results) -> str:
    steps = sorted({run.max_steps for run in results.runs})
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
        p = _places(metrics.as_percent)
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
            compared = sum(1 for d in diffs.values() if d is not None and d.low is not None)
            for cell, diff in apart:
                word = verdict_of(diff, metrics.higher_is_better).replace(" than full", "")
                wide = bonferroni(diff, compared)
                holds = wide.low > 0 or wide.high < 0
                out.append(
                    f"{table.title}: {cell.label} is {word} than full fine-tuning on test {name}: "
                    f"{diff.mean * scale:+.{p}f}{unit}, {CONFIDENCE:.0%} CI "
                    f"[{diff.low * scale:+.{p}f}, {diff.high * scale:+.{p}f}] over {diff.n} paired "
                    f"seeds; with the {compared} methods compared at once (Bonferroni, "
                    f"{wide.confidence:.2%} each) the interval is [{wide.low * scale:+.{p}f}, "
                    f"{wide.high * scale:+.{p}f}]: "
                    + ("it still excludes zero." if holds else
                       "it includes zero, so this difference may be one of the chance "
                       "exclusions expected among that many intervals.")
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
            listing = "; ".join(f"{c.label} ({search_text(c, None)})" for c in edges)
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


# -- what to use when -----------------------------------------------------------------------


def _no_loss(diff, higher_is_better: bool) -> bool:
    """The paired interval includes zero or lies on the better side: no loss was measured."""
    return diff is not None and diff.low is not None and (
        not diff.excludes_zero or (diff.mean > 0) == higher_is_better)


def recommendations(results: Results) -> list[str]:
    """"What to use when", read off the paired intervals of each table: what beat full
    fine-tuning, the cheapest and the smallest method with no measured loss, what lost; with the
    evidence's limits (one task per table, its seeds, its interval widths)."""
    lines = ["## What to use when", ""]
    for table in results.tables:
        metrics = table.metrics
        full = table.full
        name = metrics.primary.removeprefix("test_")
        scale, unit = (100, " points") if metrics.as_percent else (1, "")
        p, wp = _places(metrics.as_percent), _places(metrics.as_percent, 1)
        # "a loss" of quality reads as the test loss itself where that is the metric
        if metrics.higher_is_better:
            unharmed, harmed, above = ("without a measured loss", "Measured a loss against",
                                       "Scored above")
            caveat = "\"no measured loss\" does not rule out a loss smaller than that."
        else:
            unharmed = f"without a measured rise in test {name}"
            harmed = f"Measured a higher test {name} than"
            above = f"Scored better (a lower test {name}) than"
            caveat = "\"no measured rise\" does not rule out a rise smaller than that."
        if full is None:
            lines += [f"**{table.title}**: no full fine-tuning cell, so no method is compared "
                      "with it here.", ""]
            continue
        diffs = differences(table, metrics.primary)
        compared = sum(1 for d in diffs.values() if d is not None and d.low is not None)
        cells = [c for c in table.cells if not c.is_full]
        fine = [c for c in cells if _no_loss(diffs.get(c.label), metrics.higher_is_better)]
        better = [c for c in fine if diffs[c.label].excludes_zero]
        worse = [c for c in cells if diffs.get(c.label) is not None and c not in fine
                 and diffs[c.label].low is not None]
        widths = sorted((d.high - d.low) * scale for d in diffs.values()
                        if d is not None and d.low is not None)
        seeds = sorted({len(c.runs) for c in table.cells})
        steps = sorted({run.max_steps for c in table.cells for run in c.runs})
        rows = (table.data or {}).get("train", {}).get("rows")

        def ci(cell, diffs=diffs, scale=scale, unit=unit, p=p):
            d = diffs[cell.label]
            return (f"{d.mean * scale:+.{p}f}{unit} [{d.low * scale:+.{p}f}, "
                    f"{d.high * scale:+.{p}f}]")

        items = []
        if better:
            wide = {c.label: bonferroni(diffs[c.label], compared) for c in better}
            held = [c for c in better if wide[c.label].low > 0 or wide[c.label].high < 0]
            items.append(
                f"{above} full fine-tuning on these seeds: "
                + "; ".join(f"{c.label} ({ci(c)})" for c in better) + ". "
                + f"Corrected for the {compared} comparisons at once (Bonferroni), "
                + (f"{_names(held)} still {'differs' if len(held) == 1 else 'differ'}"
                   if held else "none still differs")
                + ("." if len(held) == len(better) else
                   f": read {'them' if not held else 'the others'} as no worse than full "
                   "fine-tuning, not as better."))
        priced = [c for c in fine if c.priced_ratio is not None]
        if priced:
            cheap = min(priced, key=lambda c: c.priced_ratio)
            items.append(
                f"To train fastest {unharmed}: {cheap.label}, priced at "
                f"{cheap.priced_ratio:.2f} x full fine-tuning's step time "
                f"({cheap.priced_source}), {ci(cheap)} on test {name}.")
        if fine:
            small = min(fine, key=lambda c: c.trainable_share)
            items.append(
                f"To store the least (an adapter or a freeze delta) {unharmed}: "
                f"{small.label}, {100 * small.trainable_share:.3g}% of the parameters trained, "
                f"{ci(small)}.")
        if worse:
            items.append(f"{harmed} full fine-tuning at this budget: "
                         + "; ".join(f"{c.label} ({ci(c)})" for c in worse) + ".")
        if not fine:
            items.append("Every method compared lost against full fine-tuning here: use full "
                         "fine-tuning." if metrics.higher_is_better else
                         f"Every method compared had a higher test {name} than full fine-tuning "
                         "here: use full fine-tuning.")
        limits = (f"One task ({table.title}{f', {rows:,} training rows' if rows else ''}), "
                  f"{'/'.join(map(str, seeds))} seeds, {'/'.join(map(str, steps))} steps: "
                  "evidence for this setting, not a general ranking.")
        if widths:
            limits += (f" The paired 95% intervals are {widths[0]:.{wp}f} to "
                       f"{widths[-1]:.{wp}f}{unit} wide (median "
                       f"{widths[len(widths) // 2]:.{wp}f}), so {caveat}")
        lines += [f"**{table.title}** (the reference, full fine-tuning: "
                  f"{format_stat(full.test(metrics.primary), metrics.as_percent)} test {name}):",
                  "", *[f"- {item}" for item in items], f"- {limits}", ""]
    return lines


def _names(cells: list[Cell]) -> str:
    return ", ".join(cell.label for cell in cells)


def short_run_notes(table: Table) -> list[str]:
    """Short runs that trained exactly as full fine-tuning did: an adaptive policy that froze
    nothing before the short run ended scores what full fine-tuning scores, rate by rate."""
    full = table.full
    notes = []
    for cell in table.cells:
        runs = list(cell.selection.sweep_runs.values())
        if cell.is_full or not runs or not all(auto_freeze_decisions(run) for run in runs):
            continue
        if any(depth > 0 for run in runs for _, depth in auto_freeze_decisions(run)):
            continue
        steps = sorted({run.max_steps for run in runs})
        decided = sorted({step for run in runs for step, _ in auto_freeze_decisions(run)})
        same = full is not None and cell.selection.scores == full.selection.scores
        notes.append(
            f"{cell.label}: its short runs ({'/'.join(map(str, steps))} steps) froze nothing: "
            f"every decision (steps {', '.join(map(str, decided))}) kept depth 0 (the first "
            "decision needs two windows of `every` steps to compare). "
            "Until it freezes, auto_freeze trains exactly what full fine-tuning trains, "
            + ("so its validation scores equal full fine-tuning's at every rate and its chosen "
               "rate is full fine-tuning's; only the full-length runs tell them apart."
               if same else "so its short runs measure full fine-tuning's rate sensitivity."))
    return ["Notes on the short runs:", "", *[f"- {note}" for note in notes], ""] if notes \
        else []


# -- generations ----------------------------------------------------------------------------

ESCAPED = re.compile(r"([\\`*_\[\]<>|~&#])")
"""Characters a text is escaped of in a table cell: markdown's emphasis, code, links, HTML and
the table's own pipes."""


def inline(text: str) -> str:
    """A text as one markdown table cell: stripped, markdown's special characters (pipes
    included) escaped, line breaks as ``<br>``; empty text shows as *(empty)*."""
    text = text.strip()
    if not text:
        return "*(empty)*"
    return "<br>".join(ESCAPED.sub(r"\\\1", line) for line in text.splitlines())


def generation_run(cell: Cell):
    """The full-length run whose ``generations`` stand for ``cell``: the selection seed's when it
    recorded them, else the first seed's that did; None when none did."""
    runs = [run for run in cell.runs if run.generations]
    chosen = [run for run in runs if run.seed == cell.selection.selection_seed]
    return (chosen or runs or [None])[0]


def generations_markdown(table: Table) -> list[str]:
    """Each method's greedy answers to the test prompts its runs recorded (``generations``:
    ``--task sft``), beside the reference answers: one table per prompt, in the order the runs
    recorded them. Nothing for a table whose runs recorded none."""
    picked = [(cell, run) for cell in table.cells if (run := generation_run(cell)) is not None]
    if not picked:
        return []
    prompts: dict[str, str] = {}  # prompt -> its reference answer, in recorded order
    for _, run in picked:
        for example in run.generations:
            prompts.setdefault(example["prompt"], example["reference"])
    seeds = {str(run.seed) for _, run in picked}
    one_seed = len(seeds) == 1
    if one_seed:
        (seed,) = seeds
        selection = {str(cell.selection.selection_seed) for cell, _ in picked}
        which = (f"its full-length run with seed {seed}"
                 + (" (the selection seed)" if selection == {seed} else ""))
    else:
        which = "its full-length run with the seed in brackets"
    shown = {id(cell) for cell, _ in picked}
    missing = [cell.label for cell in table.cells if id(cell) not in shown]
    lines = [
        "### Generations", "",
        f"Each method's greedy answer to the first {len(prompts)} distinct test prompts "
        f"(`results.json`'s `generations`), from {which}, at its chosen rate, below the "
        "reference answer of the test split. *(cut)* marks an answer that reached "
        "`--max_new_tokens` before its end-of-sequence token. One run per method: the answers "
        "show what the numbers above mean, they do not rank the methods.", "",
    ]
    if missing:
        lines += [f"No generations recorded for {', '.join(missing)}.", ""]
    for number, (prompt, reference) in enumerate(prompts.items(), 1):
        lines += [f"**Prompt {number}:** {inline(prompt)}", "",
                  "| method | answer |", "|---|---|", f"| reference | {inline(reference)} |"]
        for cell, run in picked:
            example = next((e for e in run.generations if e["prompt"] == prompt), None)
            label = cell.label if one_seed else f"{cell.label} [seed {run.seed}]"
            if example is None:
                answer = "— (not among its generations)"
            else:
                answer = inline(example["generated"]) + ("" if example.get("stopped", True)
                                                         else " *(cut)*")
            lines.append(f"| {label} | {answer} |")
        lines.append("")
    return lines


# -- the document ---------------------------------------------------------------------------

CAPTIONS = {
    "pareto.png": "Test {test} against trainable share (log) and priced step time, with the "
                  "Pareto front",
    "time_to_accuracy.png": "Validation {validation} against cumulative priced training cost",
    "validation_curves.png": "Validation {validation} over optimizer steps",
    "memory.png": "Peak memory of the runs per method",
}
"""Each plot's caption, in the metrics of the report's tables (accuracy, loss)."""


def caption(name: str, tables: list[Table]) -> str:
    """``CAPTIONS[name]`` with the tables' test and validation metric (``metric`` where the
    tables have different ones)."""
    def metric(keys: set[str]) -> str:
        return keys.pop().split("_", 1)[1].replace("_", " ") if len(keys) == 1 else "metric"

    return CAPTIONS[name].format(test=metric({t.metrics.primary for t in tables}),
                                 validation=metric({t.metrics.select for t in tables}))


def data_line(table: Table) -> str:
    """Which rows every run of the table saw: each split's size and digest, or none known."""
    if table.data is None:
        return ("Splits: the runs record no digest of their splits (they predate it), so that "
                "they saw the same rows is not checked.")
    return "Splits, the same in every run: " + ", ".join(
        f"{name} {d['rows']:,} rows (sha256 `{d['sha256']}`)"
        for name, d in sorted(table.data.items())) + "."


def recorded_time_line(table: Table) -> str:
    """The core-hours the table's runs recorded, full-length and short, and each method's."""
    full_length = [run for cell in table.cells for run in cell.runs]
    short = [run for cell in table.cells for run in cell.short_runs]
    hours = {cell.label: recorded_hours(cell.all_runs) for cell in table.cells}
    return (
        f"Recorded time: {recorded_hours(full_length + short):.2f} core-hours in "
        f"{len(full_length) + len(short)} runs ({recorded_hours(full_length):.2f} in "
        f"{len(full_length)} full-length runs, {recorded_hours(short):.2f} in {len(short)} short "
        "runs); by method: "
        + ", ".join(f"{label} {h:.2f}" for label, h in sorted(hours.items(), key=lambda i: -i[1]))
        + ". A run's recorded time is its `train_runtime` (training and any evaluation inside "
        "it) plus the evaluations logged after it, times its torch threads; loading the model "
        "and tokenising are not recorded, and load from other work on the machine inflates it."
        + slow_runs_text(table)
    )


def slow_runs_text(table: Table) -> str:
    """The runs whose recorded time is not to be trusted: over 3x their cell's median."""
    slow = [pair for cell in table.cells for runs in (cell.runs, cell.short_runs)
            for pair in slow_runs(runs)]
    if not slow:
        return ""
    return (" Recorded more than 3x the median of their cell's runs of the same length (paused "
            "or crowded out: their times, not their scores, are suspect): " + "; ".join(
                f"`{run.path}` ({recorded_seconds(run):,.0f} s against {median:,.0f} s)"
                for run, median in slow) + ".")


def costs_bullet(bench: dict | None) -> str:
    """How the report prices runs: from the benchmark when it has one, else from the runs."""
    if bench is None:
        return ("- **Costs.** No benchmark was given (`--bench`), so every step-time ratio is "
                "the runs' own (`runs`): each method's mean training seconds per step over full "
                "fine-tuning's, measured under whatever load the machine had "
                "(`recipes/report/pricing.py`).")
    return (
        "- **Costs.** Step-time ratios come from the interleaved benchmark (`bench.json`, "
        "`bench_cache.json`), not from the runs' wall time: a run is priced as its steps x "
        "its priced step ratio x full fine-tuning's measured seconds per step "
        "(`recipes/report/pricing.py`). A cached run's recording and replaying steps are priced "
        "from `bench_cache.json` with the run's own counts; a schedule's steps by the trainable "
        "count of their stage, interpolated between the bench's frozen-prefix rows, without its "
        "cache's replay (an upper bound); `runs` marks a ratio taken from the runs' own times "
        "where the benchmark did not cover the model or method.")


def report_markdown(results: Results, command: str, bench: dict | None, plots: list[str],
                    bench_sections: list[tuple[str, str]], longer: list[str] = ()) -> str:
    parts = [
        "# Results: freezing policies compared with full fine-tuning and PEFT",
        "",
        f"Report: `{command}`, from {_profile_line(results)} under "
        f"{', '.join(f'`{root}`' for root in results.roots)} (written by `recipes/sweep.py`).",
        "",
        *recommendations(results),
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
        "excludes zero. Every method is compared with the same reference, so among m intervals "
        "about m/20 exclude zero by chance: each such finding also gives the Bonferroni interval "
        "over all m comparisons, and says whether it still excludes zero.",
        costs_bullet(bench),
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
            data_line(table), "",
            render(result_columns(table), table.cells, context), "",
            "### Costs", "",
            (f"Priced runs use full fine-tuning's measured {unit:.2f} s per step (its training "
             "time less in-training evaluation, over its steps, mean of its runs)."
             if unit else "No full fine-tuning cell: runs are not priced."), "",
            render(COST_COLUMNS, table.cells, context), "",
            recorded_time_line(table), "",
            "### Learning rates", "",
            render(SELECTION_COLUMNS, table.cells, context), "",
            *short_run_notes(table),
            "### Full fine-tuning's validation curve", "",
            *curve_markdown(table),
            *auto_freeze_markdown(table),
            *generations_markdown(table),
        ]
    parts += longer  # recipes/report/longer.py: the cells rerun at a longer budget, if any
    if plots:
        parts += ["## Plots", ""]
        for name in plots:
            parts += [f"![{caption(name, results.tables)}]({name})", ""]
    for title, text in bench_sections:
        parts += [f"## {title}", "", text, ""]
    parts += ["## Findings", "", *[f"- {line}" for line in findings(results, bench)], ""]
    return "\n".join(parts)
