"""The frozen-depth curve: ``bottom_n`` at every depth n = 0..L against full fine-tuning.

Depth n freezes the embeddings and the lowest n of the model's L blocks and trains the rest and
the head: n=0 is the ``embeddings`` policy, n=L ``all_but_head``. The points come from two
folders of runs: the report's own (``--results``, the default profile, which holds full
fine-tuning and some depths) and ``--depth`` (``configs/experiments/depth.yaml``'s cells, the
depths in between). A cell is placed at depth n from what its runs recorded they trained
(``results.json``'s ``groups``: trainable and total parameters per group), never from its name:
every full-length run must have the embeddings and blocks 0..n-1 wholly frozen and everything
else wholly trained, with no schedule. Two cells at one depth are refused.

Each depth is paired by seed with full fine-tuning of the same table: the same seeds, the same
splits (``results.json``'s ``data``, checked across both folders by ``reading.same_data``: a
mismatch is a ``ReportError``), and recorded commands that differ only in ``PAIRED_ONLY`` (the
config, the rate, the output, the cache, the curve's evaluations); any other difference is named
in the row and the depth is left out of the comparison. The section gives per depth the paired
difference with its 95% t-interval over the seeds (uncorrected for the number of depths), the
quality as a percentage of full fine-tuning's mean (Lee et al.'s measure), the recorded
core-hours, a paragraph on Lee et al.'s shape read off those numbers, and ``depth.png``. Depths
not run yet (no folder, or a cell without its selection.json) are rows that say so.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from recipes.launcher.results import RunResults
from recipes.report.aggregate import (
    Cell,
    ReportError,
    Results,
    Table,
    recorded_hours,
    recorded_seconds,
    stage_timeline,
)
from recipes.report.columns import CONFIDENCE, format_stat
from recipes.report.longer import budget_mismatch
from recipes.report.plots import FULL_COLOR, pyplot
from recipes.report.reading import load_results, read_run_file, same_data
from recipes.report.stats import PairedDifference, paired_difference

PLOT = "depth.png"
PAIRED_ONLY = frozenset({"config", "learning_rate", "output_dir", "cache_frozen_prefix",
                         "eval_strategy", "eval_steps", "save_model", "overwrite_output_dir"})
LEE_SHARE = 90.0  # Lee et al. 2019: the top quarter of the layers keeps about 90% of the quality
MARGIN = 1.0  # points: the plot's dashed line below full fine-tuning
BLOCK = re.compile(r"block\.(\d+)")


# -- what a run trained ---------------------------------------------------------------------------


def frozen_depth(run: RunResults) -> tuple[int, int] | None:
    """``(n, L)`` when ``run`` trained exactly blocks n..L-1 and every non-block group but the
    embeddings (read off its ``groups``), with the embeddings and blocks 0..n-1 frozen and no
    schedule; ``None`` for anything else (full fine-tuning, a partial group, no ``groups``)."""
    groups = run.groups
    if run.method != "freeze" or not isinstance(groups, dict) or len(stage_timeline(run)) > 1:
        return None
    blocks = sorted(int(m.group(1)) for name in groups if (m := BLOCK.fullmatch(name)))
    if not blocks or blocks != list(range(len(blocks))) or "embeddings" not in groups:
        return None

    def state(name: str) -> str | None:
        try:
            trainable, total = groups[name]
        except (TypeError, ValueError):
            return None
        return "frozen" if trainable == 0 else "trained" if trainable == total else None

    if state("embeddings") != "frozen":
        return None
    others = set(groups) - {"embeddings"} - {f"block.{i}" for i in blocks}
    if any(state(name) != "trained" for name in others):
        return None
    states = [state(f"block.{i}") for i in blocks]
    n = next((i for i, s in enumerate(states) if s != "frozen"), len(states))
    if any(s != "trained" for s in states[n:]):
        return None
    return n, len(blocks)


def cell_depth(cell: Cell) -> tuple[int, int] | None:
    """The depth every full-length run of ``cell`` trained at, or None when they do not agree."""
    depths = {frozen_depth(run) for run in cell.runs}
    return depths.pop() if len(depths) == 1 else None


# -- the curve ----------------------------------------------------------------------------------


@dataclass
class Point:
    """One depth: a complete cell, or an incomplete cell (``incomplete``), or nothing."""

    n: int
    cell: Cell | None = None
    root: Path | None = None
    diff: PairedDifference | None = None
    unpaired: list[str] = field(default_factory=list)  # why it is not compared with full
    incomplete: str | None = None  # a cell folder with runs but no selection.json
    partial_runs: list[RunResults] = field(default_factory=list)

    @property
    def compared(self) -> bool:
        return self.diff is not None and self.diff.low is not None


@dataclass
class Curve:
    table: Table  # the report's table holding full fine-tuning
    blocks: int
    points: dict[int, Point]  # every n in 0..blocks
    full_root: Path
    depth_root: Path
    depth_runs: list[RunResults]  # every run under the depth folder, complete cells or not

    @property
    def full(self) -> Cell:
        return self.table.full

    @property
    def scale(self) -> float:
        return 100.0 if self.table.metrics.as_percent else 1.0

    @property
    def compared(self) -> list[Point]:
        return [p for n, p in sorted(self.points.items()) if p.compared]

    def share(self, value: float) -> float:
        """``value`` (a score) as a percentage of full fine-tuning's mean."""
        return 100.0 * value / self.full.test(self.table.metrics.primary).mean


def _root_of(run: RunResults, roots: list[Path]) -> Path:
    path = Path(run.path or "")
    return next((root for root in roots if path.is_relative_to(root)), roots[0])


def build_curve(depth_root: Path, results: Results) -> Curve | None:
    """The depth curve of the report's table that the depth folder's cells belong to; None when
    the folder holds no run at all."""
    depth_root = Path(depth_root)
    if not depth_root.is_dir():
        raise ReportError(f"{depth_root}: no such folder of runs")
    depth_runs = [read_run_file(path) for path in sorted(depth_root.rglob("results.json"))]
    if not depth_runs:
        return None
    extra = load_results(depth_root, allow_empty=True)
    key = _key(depth_runs[0])
    odd = next((run for run in depth_runs if _key(run) != key), None)
    if odd is not None:
        raise ReportError(f"{odd.path}: not the model, dataset and task of {depth_runs[0].path}; "
                          "a depth folder holds one model's curve")
    table = next((t for t in results.tables if (t.model, t.dataset, t.task) == key), None)
    if table is None or table.full is None:
        raise ReportError(f"{depth_root}: no full fine-tuning of {key[0]} on {key[1]} under "
                          f"{', '.join(map(str, results.roots))} to pair its depths with")
    ours = [cell for t in extra.tables for cell in t.cells]
    same_data([*table.cells, *ours])  # the same splits in both folders, or a ReportError

    placed: dict[int, Point] = {}
    blocks = set()
    for cell, root in [*((c, _root_of(c.first, results.roots)) for c in table.cells),
                       *((c, depth_root) for c in ours)]:
        depth = cell_depth(cell)
        if depth is None:
            continue
        n, count = depth
        blocks.add(count)
        if n in placed:
            raise ReportError(f"cells {placed[n].cell.name} ({placed[n].root}) and {cell.name} "
                              f"({root}) both train at frozen depth {n}: keep one")
        placed[n] = _paired(Point(n, cell, root), table.full)
    for name in extra.incomplete:
        runs = [read_run_file(p) for p in sorted((depth_root / name).rglob("results.json"))]
        depths = {frozen_depth(run) for run in runs} - {None}
        if len(depths) != 1:
            continue
        n, count = depths.pop()
        blocks.add(count)
        if n not in placed:
            placed[n] = Point(n, incomplete=name, partial_runs=runs)
    full_groups = table.full.first.groups or {}
    blocks.add(sum(1 for name in full_groups if BLOCK.fullmatch(name)) or max(blocks, default=0))
    if len(blocks) != 1:
        raise ReportError(f"{depth_root}: the runs record different numbers of blocks "
                          f"({', '.join(map(str, sorted(blocks)))}); one model per curve")
    count = blocks.pop()
    points = {n: placed.get(n, Point(n)) for n in range(count + 1)}
    return Curve(table, count, points, _root_of(table.full.first, results.roots), depth_root,
                 depth_runs)


def _key(run: RunResults) -> tuple[str, str, str]:
    return str(run.model), str(run.dataset if run.dataset is not None else ""), run.task


def _paired(point: Point, full: Cell) -> Point:
    key = point.cell.metrics.primary
    theirs = {run.seed: run for run in full.runs}
    ours = {run.seed: run for run in point.cell.runs}
    if set(ours) != set(theirs):
        point.unpaired.append(f"seeds {sorted(ours, key=str)} against full fine-tuning's "
                              f"{sorted(theirs, key=str)}")
    for seed in sorted(set(ours) & set(theirs), key=str):
        for what in budget_mismatch(ours[seed], theirs[seed], PAIRED_ONLY):
            if what not in point.unpaired:
                point.unpaired.append(what)
    if not point.unpaired:
        point.diff = paired_difference(point.cell.scores(key), full.scores(key), CONFIDENCE)
    return point


# -- the section ---------------------------------------------------------------------------------


def trains_text(n: int, blocks: int) -> str:
    k = blocks - n
    if k == 0:
        return "the head only"
    if k == blocks:
        return f"all {blocks} blocks and the head"
    return f"the top {'block' if k == 1 else f'{k} blocks'} and the head"


def _source(point: Point) -> str:
    return f"`{point.cell.name}` (`{point.root}`)"


def _seeds(curve: Curve) -> str:
    counts = sorted({len(p.cell.runs) for p in curve.compared} | {len(curve.full.runs)})
    return "/".join(map(str, counts))


def _lr(cell: Cell) -> str:
    return f"{cell.chosen_lr:g}" + ("" if cell.selection.interior else " (grid edge)")


def _row(curve: Curve, point: Point) -> str:
    n, scale = point.n, curve.scale
    head = f"| {n} | {trains_text(n, curve.blocks)} |"
    if point.cell is None:
        if point.incomplete is None:
            return head + " not run yet | — | — | — | — | — | — | — |"
        shorts = sum(1 for run in point.partial_runs
                     if Path(run.path).parent.parent.name == "sweep")
        longs = len(point.partial_runs) - shorts
        return (head + f" not run yet: `{point.incomplete}` (`{curve.depth_root}`) is incomplete, "
                f"{shorts} short and {longs} full-length run(s), no `selection.json` | — | — | — "
                f"| — | — | — | {recorded_hours(point.partial_runs):.2f} so far |")
    cell = point.cell
    stat = cell.test(curve.table.metrics.primary)
    if point.unpaired:
        difference, share = "not paired: differs in " + ", ".join(point.unpaired), "—"
    elif not point.compared:
        difference = f"{point.diff.mean * scale:+.2f} (1 seed, no interval)"
        share = f"{curve.share(stat.mean):.1f}"
    else:
        diff = point.diff
        difference = (f"{diff.mean * scale:+.2f} [{diff.low * scale:+.2f}, "
                      f"{diff.high * scale:+.2f}]")
        share = (f"{curve.share(stat.mean):.1f} [{100 + curve.share(diff.low):.1f}, "
                 f"{100 + curve.share(diff.high):.1f}]")
    return (head + f" {_source(point)} | {_lr(cell)} | {100 * cell.trainable_share:.3g} | "
            f"{format_stat(stat, cell.metrics.as_percent)} | {difference} | {share} | "
            f"{len(cell.runs)} | {recorded_hours(cell.all_runs):.2f} |")


def table_lines(curve: Curve) -> list[str]:
    name = curve.table.metrics.primary.removeprefix("test_")
    unit = " (%)" if curve.table.metrics.as_percent else ""
    points = " points" if curve.table.metrics.as_percent else ""
    full = curve.full
    stat = full.test(curve.table.metrics.primary)
    lines = [f"| frozen n of {curve.blocks} | trains | cell (folder) | chosen lr | trainable (%) | "
             f"test {name}{unit} | − full{points}, mean [{CONFIDENCE:.0%} CI] | % of full's mean "
             f"[CI] | seeds | recorded core-hours |",
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
             f"| full | everything | `{full.name}` (`{curve.full_root}`) | {_lr(full)} | "
             f"{100 * full.trainable_share:.3g} | {format_stat(stat, full.metrics.as_percent)} | "
             f"reference | 100 | {len(full.runs)} | {recorded_hours(full.all_runs):.2f} |"]
    return lines + [_row(curve, curve.points[n]) for n in sorted(curve.points)]


def _interval_share(curve: Curve, point: Point) -> str:
    diff = point.diff
    mean = curve.share(point.cell.test(curve.table.metrics.primary).mean)
    return (f"{mean:.1f}% of full fine-tuning's mean (interval {100 + curve.share(diff.low):.1f} "
            f"to {100 + curve.share(diff.high):.1f}%)")


def _diff_text(curve: Curve, point: Point) -> str:
    diff, scale = point.diff, curve.scale
    return f"{diff.mean * scale:+.2f} [{diff.low * scale:+.2f}, {diff.high * scale:+.2f}]"


def _depths(ns) -> str:
    ns = list(ns)
    return "n=" + ", ".join(map(str, ns)) if ns else "none"


def lee_paragraph(curve: Curve) -> list[str]:
    """Whether Lee et al.'s shape holds here, and where not, read off the compared depths."""
    blocks, points = curve.blocks, curve.points
    quarter = blocks / 4
    compared = {p.n: p for p in curve.compared}
    missing = [n for n in sorted(points) if n not in compared]
    near = sorted({blocks - math.ceil(quarter), blocks - math.floor(quarter)})

    def at(n: int) -> str:
        what = f"training only {trains_text(n, blocks)} (n={n})"
        if n in compared:
            return f"{what} keeps {_interval_share(curve, compared[n])}"
        return f"{what} is not run yet" if points[n].cell is None else \
            f"{what} is not compared (see its row)"

    text = [
        "Lee et al. (2019, \"What Would Elsa Do? Freezing Layers During Transformer "
        "Fine-Tuning\") report that training only the top quarter of BERT's and RoBERTa's "
        "layers keeps about 90% of full fine-tuning's quality on GLUE. This model has "
        f"{blocks} blocks, so a quarter is {quarter:g}: " + "; ".join(at(n) for n in near) + "."]

    shares = {n: curve.share(p.cell.test(curve.table.metrics.primary).mean)
              for n, p in compared.items()}
    losses = [n for n, p in compared.items() if p.diff.high < 0]
    gains = [n for n, p in compared.items() if p.diff.low > 0]
    enough = [n for n in compared if blocks - n >= quarter]  # at least a quarter trains
    few = [n for n in compared if blocks - n < quarter]
    if enough:
        lost = [n for n in enough if n in losses]
        lowest = min(enough, key=lambda n: shares[n])
        if not lost:
            text.append(
                f"Where at least a quarter of the blocks train, no depth measured a loss against "
                f"full fine-tuning ({_depths(enough)}: every paired interval includes zero or "
                f"lies above it), and the least kept is {shares[lowest]:.1f}% at n={lowest}: as "
                "far as measured, the flat part of the shape holds.")
        else:
            text.append(
                "Where at least a quarter of the blocks train, a loss is measured at "
                + "; ".join(f"n={n} ({_diff_text(curve, compared[n])})" for n in lost)
                + ": there the shape does not hold.")
    for n in few:
        point = compared[n]
        fell = n in losses
        text.append(
            f"With fewer than a quarter training, n={n} ({trains_text(n, blocks)}) "
            + (f"measured a loss ({_diff_text(curve, point)} points), as the shape has it"
               if fell else f"measured no loss ({_diff_text(curve, point)} points), where the "
               "shape has quality falling")
            + f"; it keeps {_interval_share(curve, point)}.")
    if gains:
        text.append(
            "Above full fine-tuning by its interval: "
            + "; ".join(f"n={n} ({_diff_text(curve, compared[n])})" for n in gains)
            + ". The shape does not predict a gain from freezing; uncorrected for the depths "
            "compared, read it as a lead, not a result.")
    if shares:
        below = [n for n, value in sorted(shares.items()) if value < LEE_SHARE]
        if not below:
            text.append(
                f"Every compared depth keeps at least {LEE_SHARE:g}% of full fine-tuning's mean"
                + (f", training the head alone included ({shares[blocks]:.1f}% at n={blocks})"
                   if blocks in shares else "")
                + f": on this task a {LEE_SHARE:g}% bar does not separate the depths; the paired "
                "differences do. The share is of raw accuracy, which does not discount what "
                "guessing scores.")
        else:
            text.append(f"Below {LEE_SHARE:g}% of full fine-tuning's mean: "
                        + ", ".join(f"n={n} ({shares[n]:.1f}%)" for n in below) + ".")
    if missing:
        text.append(f"Not measured yet: {_depths(missing)}, so the curve is open there.")
    widths = sorted((p.diff.high - p.diff.low) * curve.scale for p in compared.values())
    if widths:
        chance = 1 - CONFIDENCE ** len(widths)
        text.append(
            f"One task and {_seeds(curve)} seeds per depth: the paired intervals are "
            f"{widths[0]:.1f} to {widths[-1]:.1f} points wide, so where no loss is measured a "
            f"loss smaller than that is not ruled out; with {len(widths)} depths each at "
            f"{CONFIDENCE:.0%} and no correction, the chance that at least one interval excludes "
            f"zero by chance alone is about {chance:.0%} (were they independent; they share full "
            "fine-tuning's runs).")
    return [" ".join(text)]


def hours_lines(curve: Curve) -> list[str]:
    reused = [p for p in curve.points.values() if p.cell is not None and p.root != curve.depth_root]
    depth_cells = [p.cell for p in curve.points.values()
                   if p.cell is not None and p.root == curve.depth_root]
    complete = [run for cell in depth_cells for run in cell.all_runs]
    longest = max(curve.depth_runs, key=recorded_seconds)
    reused_runs = [run for p in reused for run in p.cell.all_runs]
    return [
        f"Recorded time, in core-hours: each run's `train_runtime` (its training, with any "
        "evaluation inside it) plus the validation and test evaluations logged after it, times "
        "its torch threads; loading the model and tokenising are not recorded, and the runs "
        "shared the machine with other work, so load inflates these. "
        f"The depth profile's runs (`{curve.depth_root}`) took "
        f"{recorded_hours(curve.depth_runs):.2f} core-hours in {len(curve.depth_runs)} runs: "
        f"{recorded_hours(complete):.2f} in its "
        f"{len(depth_cells)} complete cell(s) ({len(complete)} runs), the rest in incomplete "
        f"cells; its longest run, `{longest.path}`, recorded "
        f"{recorded_seconds(longest) / 3600:.2f}. "
        f"The cells it reuses from `{curve.full_root}` "
        f"({', '.join(p.cell.short for p in sorted(reused, key=lambda p: p.n)) or 'none'}) took "
        f"{recorded_hours(reused_runs):.2f} core-hours in {len(reused_runs)} runs, and full "
        f"fine-tuning's cell {recorded_hours(curve.full.all_runs):.2f} in "
        f"{len(curve.full.all_runs)}.",
        "",
    ]


def depth_markdown(curve: Curve) -> list[str]:
    full = curve.full
    data = ("the same split digests (`data`) in every full-length run of both folders"
            if curve.table.data else "splits not checked: the runs record no digest")
    seeds = _seeds(curve)
    return [
        "## Frozen depth: bottom_n at every depth against full fine-tuning", "",
        f"{curve.table.title}, {curve.blocks} blocks. Depth n freezes the embeddings and the "
        f"lowest n blocks and trains the rest and the head (`bottom_n` with n; n=0 is "
        f"`embeddings`, n={curve.blocks} `all_but_head`). A cell is placed at depth n from what "
        "its runs recorded they trained (`groups` in `results.json`), not from its name. Each "
        f"depth is paired by seed with full fine-tuning (`{full.name}`): {data}, and recorded "
        "commands that differ only in the config, rate, output, cache and curve flags. The depth "
        f"profile (`configs/experiments/depth.yaml`, runs in `{curve.depth_root}`) adds the "
        f"depths the default profile (`{curve.full_root}`) does not train.", "",
        *table_lines(curve), "",
        f"How the intervals are computed: per seed, the depth's test score minus full "
        f"fine-tuning's of the same seed; their mean and its {CONFIDENCE:.0%} t-interval over "
        f"the {seeds} paired seeds (t quantile for n − 1 degrees of freedom), each depth on its "
        f"own, not corrected for the {curve.blocks + 1} depths. % of full's mean: 100 x the "
        "depth's mean test score over full fine-tuning's mean (Lee et al.'s measure); its "
        "interval is the paired interval over full's mean (full's own spread is not added). "
        "Chosen lr: each cell's rate, chosen on validation as in the rest of the report.", "",
        f"![Test accuracy minus full fine-tuning against frozen depth, with paired 95% "
        f"intervals]({PLOT})", "",
        "Against Lee et al.'s shape:", "",
        *lee_paragraph(curve), "",
        *hours_lines(curve),
    ]


def plot_depth(curve: Curve):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 5.0))
    scale, blocks = curve.scale, curve.blocks
    full = curve.full.test(curve.table.metrics.primary)
    ax.axhline(0.0, color=FULL_COLOR, lw=1.2,
               label=f"full fine-tuning ({format_stat(full, curve.table.metrics.as_percent)})")
    ax.axhline(-MARGIN, color="0.45", lw=0.9, ls="--", label=f"{MARGIN:g} point below full")
    for root, marker, color in ((curve.full_root, "o", "C0"), (curve.depth_root, "s", "C1")):
        points = [p for p in curve.compared if p.root == root]
        if not points:
            continue
        means = [p.diff.mean * scale for p in points]
        ax.errorbar([p.n for p in points], means,
                    yerr=[[m - p.diff.low * scale for m, p in zip(means, points)],
                          [p.diff.high * scale - m for m, p in zip(means, points)]],
                    fmt=marker, ms=6, capsize=4, color=color, zorder=3,
                    label=f"cells from {root}")
    for n, point in sorted(curve.points.items()):
        if not point.compared:
            word = "not run yet" if point.cell is None else "not paired"
            ax.annotate(word, (n, 0.0), xytext=(0, 8), textcoords="offset points",
                        rotation=90, ha="center", va="bottom", fontsize=8, color="0.35")
    ax.set_xticks(range(blocks + 1),
                  [f"{n}\n(top {blocks - n})" if n < blocks else f"{n}\n(head only)"
                   for n in range(blocks + 1)])
    ax.set_xlim(-0.5, blocks + 0.5)
    ax.margins(y=0.15)
    name = curve.table.metrics.primary.removeprefix("test_")
    ax.set(xlabel=f"frozen depth n: embeddings and the lowest n of {blocks} blocks frozen "
                  "(blocks trained)",
           ylabel=f"test {name} − full fine-tuning" + (" (points)" if scale == 100 else ""),
           title=f"{curve.table.title}: frozen depth against full fine-tuning\n"
                 f"mean paired difference, {CONFIDENCE:.0%} t-interval over {_seeds(curve)} "
                 "seeds (uncorrected)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    return fig


def depth_report(depth_root: str | Path, results: Results) -> tuple[list[str], dict]:
    """The section's lines and ``{"depth.png": figure}``; both empty when the folder holds no
    run."""
    curve = build_curve(Path(depth_root), results)
    if curve is None:
        return [], {}
    return depth_markdown(curve), {PLOT: plot_depth(curve)}
