"""Turn every ``results.json`` under a folder (and ``bench.json``) into ``REPORT.md`` and plots.

    python recipes/compare.py --results results/runs --out results/REPORT.md [--bench FILE]

What is chosen, and why:

- **Cells.** Runs with the same model, dataset, method, policy, policy options, freeze mode, PEFT
  method and PEFT options form a cell. Within a cell the runs differ by learning rate (the sweep)
  and seed. The same (cell, learning rate, seed) twice is an error naming both files.
- **Selection on validation only.** For each cell the learning rate with the best *mean
  validation* metric over the seeds that every rate ran is chosen (all seeds for a full grid;
  the first seed for ``recipes/sweep.py``'s two-phase sweep): ``eval_accuracy``, highest, for
  classification; ``eval_loss``, lowest, for causal LM; ties go to the smaller rate. Test
  metrics are then reported at that rate only, as mean ± sample standard deviation over seeds.
  Test numbers never influence the choice.
- **Step time vs full.** From ``bench.json`` when it has the method (same method, policy,
  options, freeze mode and PEFT method; one process, interleaved steps), else the mean
  ``train_runtime / max_steps`` of the chosen runs over full fine-tuning's in the same table
  (separate processes, so noisier); the column says which.
- **Memory** is the runs' ``peak_memory_bytes`` (largest over the chosen runs): CUDA max allocated
  on a GPU, the process's peak RSS on CPU (it includes the Python process and the data). The
  optimizer-state bytes come from the runs (measured by the trainer) or else from the benchmark.
- **Frozen audit** summarises every run of the cell: passed in all, or failed in some.

Outputs, next to the report: ``accuracy_vs_params.png`` (log x), ``accuracy_vs_time.png``,
``memory.png`` (the runs' peak memory, beside the benchmark's accounted memory for the methods
it covers) and, when a ``gradual_unfreeze`` cell exists, ``gradual_unfreezing.png``
(validation metric over steps against full fine-tuning). Everything is read and checked before
anything is written; files are written to temporary names and renamed into place, so a bad input
leaves no partial report. The findings are generated from the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `recipes` and `freeze_policies` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from freeze_policies import costs

REQUIRED_KEYS = ("method", "model", "task", "seed", "learning_rate")
REQUIRED_KEYS += ("trainable_params", "total_params")
GRADUAL = "gradual_unfreeze"


class ReportError(ValueError):
    """An input that cannot be aggregated; the message names the file."""


@dataclass(frozen=True)
class TaskMetrics:
    """Which validation metric picks the learning rate, and which test metrics are reported."""

    select: str
    higher_is_better: bool
    primary: str  # the test metric of the plots and findings
    reported: tuple[tuple[str, str], ...]  # (key, column title)
    as_percent: bool


TASKS = {
    "classification": TaskMetrics(
        "eval_accuracy",
        True,
        "test_accuracy",
        (("test_accuracy", "test accuracy (%)"), ("test_f1", "macro-F1 (%)")),
        True,
    ),
    "causal_lm": TaskMetrics(
        "eval_loss",
        False,
        "test_perplexity",
        (("test_loss", "test loss"), ("test_perplexity", "test perplexity")),
        False,
    ),
}


# -- labels -----------------------------------------------------------------------------------


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


def _short(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _canonical(value) -> str:
    return json.dumps(value or {}, sort_keys=True)


SCHEDULE_TIMING = ("every", "unit", "seed")


def training_seconds(run: dict) -> float:
    """``train_runtime`` less the evaluations Trainer ran inside the training loop (the log
    entries before the one that reports ``train_runtime``), so cells that evaluate during
    training compare fairly with cells that do not."""
    evaluating = 0.0
    for entry in run.get("log_history", []):
        if "train_runtime" in entry:
            break
        evaluating += entry.get("eval_runtime", 0.0)
    return run["train_runtime"] - evaluating


def descriptor(run: dict) -> tuple:
    """What a benchmark row and a cell must share to be the same method. When a schedule
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
    return (*descriptor(run), _canonical(run.get("peft_options")))


# -- reading ----------------------------------------------------------------------------------


def load_runs(root: Path) -> list[dict]:
    """Every ``results.json`` under ``root``, checked; each gets ``_path``."""
    paths = sorted(root.rglob("results.json"))
    if not paths:
        raise ReportError(f"no results.json under {root}")
    runs = []
    for path in paths:
        run = _read_json(path)
        missing = [key for key in REQUIRED_KEYS if key not in run]
        if missing:
            raise ReportError(f"{path}: missing {', '.join(missing)}")
        metrics = TASKS.get(run["task"])
        if metrics is None:
            raise ReportError(f"{path}: unknown task {run['task']!r} ({', '.join(TASKS)})")
        needed = [metrics.select, *(key for key, _ in metrics.reported)]
        absent = [key for key in needed if not isinstance(run.get(key), (int, float))]
        if absent:
            raise ReportError(f"{path}: no numeric {', '.join(absent)}")
        run["_path"] = str(path)
        runs.append(run)
    return runs


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReportError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: not a JSON object")
    return data


def load_bench(path: Path | None) -> dict | None:
    if path is None or not path.exists():
        return None
    bench = _read_json(path)
    for key in ("methods", "targets"):
        if key not in bench:
            raise ReportError(f"{path}: missing {key}")
    return bench


# -- aggregation ------------------------------------------------------------------------------


@dataclass
class Stat:
    mean: float
    std: float | None  # sample standard deviation; None for a single seed
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        std = statistics.stdev(values) if len(values) > 1 else None
        return cls(statistics.fmean(values), std, len(values))


@dataclass
class Cell:
    """All runs of one method in one table, and what the validation sweep chose."""

    label: str
    runs: list[dict]
    metrics: TaskMetrics
    sweep: dict[float, Stat] = field(default_factory=dict)  # lr -> validation metric
    chosen_lr: float = 0.0
    chosen: list[dict] = field(default_factory=list)
    step_ratio: float | None = None
    step_ratio_source: str = ""
    optimizer_state_bytes: int | None = None
    optimizer_state_source: str = ""
    bench_memory: int | None = None

    @property
    def first(self) -> dict:
        return self.chosen[0]

    def test(self, key: str) -> Stat:
        return Stat.of([run[key] for run in self.chosen])

    @property
    def train_runtime(self) -> float | None:
        values = [training_seconds(run) for run in self.chosen if "train_runtime" in run]
        return statistics.fmean(values) if values else None

    @property
    def seconds_per_step(self) -> float | None:
        values = [
            training_seconds(run) / run["max_steps"]
            for run in self.chosen
            if run.get("train_runtime") and run.get("max_steps")
        ]
        return statistics.fmean(values) if values else None

    @property
    def peak_memory(self) -> tuple[int, str] | None:
        values = [run for run in self.chosen if run.get("peak_memory_bytes")]
        if not values:
            return None
        worst = max(values, key=lambda run: run["peak_memory_bytes"])
        return worst["peak_memory_bytes"], worst.get("peak_memory_kind", "")

    @property
    def audit(self) -> str:
        results = [run.get("frozen_audit") for run in self.runs]
        checked = [result for result in results if isinstance(result, dict)]
        if not checked:
            return "n/a"
        passed = sum(1 for result in checked if result.get("passed"))
        if passed == len(checked):
            return f"passed ({passed}/{len(checked)})"
        return f"FAILED ({len(checked) - passed}/{len(checked)} runs)"

    @property
    def is_full(self) -> bool:
        return self.first["method"] == "full"


def choose(cell: Cell) -> None:
    """Pick the learning rate with the best mean validation metric (ties: the smaller rate)."""
    by_lr: dict[float, list[dict]] = defaultdict(list)
    for run in cell.runs:
        by_lr[float(run["learning_rate"])].append(run)
    # Compare rates on the seeds every rate has: all of them for a full grid, the selection
    # seed for recipes/sweep.py's two-phase sweep (which ran the other seeds at the winner only).
    common = set.intersection(*({r["seed"] for r in rs} for rs in by_lr.values()))
    cell.sweep = {
        lr: Stat.of([r[cell.metrics.select] for r in rs if r["seed"] in common])
        for lr, rs in by_lr.items()
    }
    sign = 1 if cell.metrics.higher_is_better else -1
    cell.chosen_lr = min(cell.sweep, key=lambda lr: (-sign * cell.sweep[lr].mean, lr))
    cell.chosen = sorted(by_lr[cell.chosen_lr], key=lambda run: run["seed"])


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
    def full(self) -> Cell | None:
        return next((cell for cell in self.cells if cell.is_full), None)


def build_tables(runs: list[dict], bench: dict | None) -> list[Table]:
    """Group runs into tables (model, dataset, task) and cells, and pick each cell's rate."""
    grouped: dict[tuple, dict[tuple, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        table_key = (str(run["model"]), str(run.get("dataset", "")), run["task"])
        grouped[table_key][cell_key(run)].append(run)
    tables = []
    for (model, dataset, task), cells_by_key in sorted(grouped.items()):
        cells = []
        for runs_of_cell in cells_by_key.values():
            _check_duplicates(runs_of_cell)
            cell = Cell(method_label(runs_of_cell[0]), runs_of_cell, TASKS[task])
            choose(cell)
            cells.append(cell)
        _disambiguate(cells)
        cells.sort(key=lambda c: (not c.is_full, -c.first["trainable_params"], c.label))
        table = Table(model, dataset, task, cells)
        _attach_costs(table, bench)
        tables.append(table)
    return tables


def _check_duplicates(runs: list[dict]) -> None:
    seen: dict[tuple, str] = {}
    for run in runs:
        key = (float(run["learning_rate"]), run["seed"])
        if key in seen:
            raise ReportError(
                f"{run['_path']}: same method, learning rate {key[0]:g} and seed {key[1]} as "
                f"{seen[key]}; remove one"
            )
        seen[key] = run["_path"]


def _disambiguate(cells: list[Cell]) -> None:
    counts = defaultdict(int)
    for cell in cells:
        counts[cell.label] += 1
    for cell in cells:
        if counts[cell.label] > 1 and cell.first.get("peft_options"):
            options = cell.first["peft_options"]
            cell.label += " (" + ", ".join(f"{k}={_short(v)}" for k, v in sorted(options.items()))
            cell.label += ")"


def _attach_costs(table: Table, bench: dict | None) -> None:
    """Step-time ratio and optimizer-state bytes per cell, naming where each comes from."""
    bench_rows = {}
    if bench is not None and bench.get("model") in (None, table.model):
        bench_rows = {
            descriptor(row): row
            for row in bench["methods"]
            if row.get("label") == method_label(row)  # not the FreezeTrainer comparison row
        }
    full = table.full
    full_seconds = full.seconds_per_step if full is not None else None
    for cell in table.cells:
        row = bench_rows.get(descriptor(cell.first))
        if row is not None:
            cell.step_ratio, cell.step_ratio_source = row["step_ratio"], "bench"
            cell.bench_memory = row.get("memory_bytes")
        elif full_seconds and cell.seconds_per_step:
            cell.step_ratio = cell.seconds_per_step / full_seconds
            cell.step_ratio_source = "runs"
        if isinstance(cell.first.get("optimizer_state_bytes"), int):
            cell.optimizer_state_bytes = cell.first["optimizer_state_bytes"]
            cell.optimizer_state_source = "runs"
        elif row is not None:
            cell.optimizer_state_bytes = row["optimizer_state_bytes"]
            cell.optimizer_state_source = "bench"


# -- formatting -------------------------------------------------------------------------------


def format_bytes(count: float | None) -> str:
    return "—" if count is None else costs.format_bytes(count)


def format_stat(stat: Stat, percent: bool) -> str:
    scale = 100 if percent else 1
    digits = 2 if percent else 3
    mean = f"{stat.mean * scale:.{digits}f}"
    return mean if stat.std is None else f"{mean} ± {stat.std * scale:.{digits}f}"


MEMORY_KINDS = {"cuda": "CUDA", "cpu_max_rss": "RSS"}


def table_markdown(table: Table) -> str:
    metrics = TASKS[table.task]
    titles = [title for _, title in metrics.reported]
    header = ["method", "trainable params", "%", *titles, "seeds", "chosen lr"]
    header += ["step time vs full", "peak memory", "optimizer state", "frozen audit"]
    aligns = ["---"] + ["---:"] * (len(header) - 2) + ["---"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(aligns) + "|"]
    for cell in table.cells:
        run = cell.first
        share = 100 * run["trainable_params"] / run["total_params"]
        ratio = (
            "—" if cell.step_ratio is None else f"{cell.step_ratio:.2f} ({cell.step_ratio_source})"
        )
        memory = cell.peak_memory
        memory_text = (
            "—"
            if memory is None
            else f"{format_bytes(memory[0])} ({MEMORY_KINDS.get(memory[1], memory[1])})"
        )
        state = format_bytes(cell.optimizer_state_bytes)
        if cell.optimizer_state_bytes is not None and cell.optimizer_state_source == "bench":
            state += " (bench)"
        values = [format_stat(cell.test(key), metrics.as_percent) for key, _ in metrics.reported]
        row = [cell.label, f"{run['trainable_params']:,}", f"{share:.2f}", *values]
        row += [str(len(cell.chosen)), f"{cell.chosen_lr:g}", ratio, memory_text, state]
        lines.append("| " + " | ".join([*row, cell.audit]) + " |")
    return "\n".join(lines)


def sweep_markdown(table: Table) -> str:
    """Mean validation metric per learning rate, the chosen one in bold."""
    metrics = TASKS[table.task]
    rates = sorted({lr for cell in table.cells for lr in cell.sweep})
    lines = [
        "| method | " + " | ".join(f"lr {lr:g}" for lr in rates) + " |",
        "|---|" + "---:|" * len(rates),
    ]
    for cell in table.cells:
        entries = []
        for lr in rates:
            stat = cell.sweep.get(lr)
            text = (
                ""
                if stat is None
                else format_stat(Stat(stat.mean, None, stat.n), metrics.as_percent)
                + f" (n={stat.n})"
            )
            entries.append(f"**{text}**" if lr == cell.chosen_lr else text)
        lines.append(f"| {cell.label} | " + " | ".join(entries) + " |")
    return "\n".join(lines)


def bench_markdown(bench: dict) -> str:
    detail = bench.get("rounds_detail") or {}
    lines = [
        f"`{bench.get('command', 'python recipes/bench.py')}` — {bench.get('model')} "
        f"({bench.get('model_class', '')}), batch {bench.get('batch_size')} x "
        f"{bench.get('seq_len')} tokens, step time = median over {bench.get('rounds')} "
        f"undisturbed interleaved rounds (of {detail.get('timed_rounds', '?')} timed, after "
        f"{bench.get('warmup')} warm-up), device {bench.get('device')}, "
        f"{bench.get('optimizer', '')}. Memory: {bench.get('memory_kind', '')}.",
        *[f"Note: {note}." for note in bench.get("notes", [])],
        "",
        "| method | trainable | step (ms) | step time vs full | FLOP model | gradients | "
        "optimizer state | frozen-param state | saved for backward | memory |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in bench["methods"]:
        share = (f"{100 * row['trainable_params'] / row['total_params']:.2f}%"
                 if row.get("total_params") else "—")
        step = f"{1000 * row['median_step_s']:.0f}" if row.get("median_step_s") else "—"
        lines.append(
            f"| {row['label']} | {share} | {step} "
            f"| {row['step_ratio']:.2f} | {row['flop_ratio']:.2f} "
            f"| {format_bytes(row.get('gradient_bytes'))} "
            f"| {format_bytes(row.get('optimizer_state_bytes'))} "
            f"| {format_bytes(row.get('frozen_optimizer_state_bytes'))} "
            f"| {format_bytes(row.get('saved_for_backward_bytes'))} "
            f"| {format_bytes(row.get('memory_bytes'))} |"
        )
    lines += ["", "| target | value | threshold | result |", "|---|---:|---|---|"]
    for name, result in bench["targets"].items():
        value = result.get("value")
        shown = "—" if value is None else f"{value:.3g}" if isinstance(value, float) else value
        lines.append(
            f"| {name} | {shown} | {result.get('threshold')} | {_verdict(result.get('passed'))} |"
        )
    return "\n".join(lines)


def _verdict(passed) -> str:
    return {True: "met", False: "missed", None: "not measured"}[passed]


def environment_markdown(runs: list[dict], bench: dict | None) -> str:
    """Distinct hardware / versions found in the results files (and the benchmark)."""
    seen: dict[str, list[str]] = defaultdict(list)
    sources = [(run, "runs") for run in runs] + ([(bench, "bench")] if bench else [])
    for data, source in sources:
        text = _environment_line(data)
        if source not in seen[text]:
            seen[text].append(source)
    counts = defaultdict(int)
    for run in runs:
        counts[_environment_line(run)] += 1
    lines = []
    for text, where in seen.items():
        count = f"{counts[text]} runs" if counts[text] else ""
        label = ", ".join(filter(None, [count, "bench" if "bench" in where else ""]))
        lines.append(f"- {label}: {text}")
    return "\n".join(lines)


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


# -- findings ---------------------------------------------------------------------------------


def findings(tables: list[Table], bench: dict | None) -> list[str]:
    """Statements read off the numbers; nothing here is written in advance."""
    out = []
    for table in tables:
        metrics = TASKS[table.task]
        sign = 1 if metrics.higher_is_better else -1
        primary = metrics.primary
        name = primary.removeprefix("test_")

        def shown(cell: Cell, primary=primary, metrics=metrics) -> str:
            return format_stat(cell.test(primary), metrics.as_percent)

        best = max(table.cells, key=lambda c: sign * c.test(primary).mean)
        out.append(
            f"{table.title}: the best test {name} is {best.label}'s, {shown(best)} "
            f"over {len(best.chosen)} seeds."
        )
        full = table.full
        if full is not None:
            reference = full.test(primary).mean
            if metrics.as_percent:
                close = [
                    c
                    for c in table.cells
                    if not c.is_full and c.test(primary).mean >= reference - 0.01
                ]
                margin = "within 1 point of"
            else:
                close = [
                    c
                    for c in table.cells
                    if not c.is_full and c.test(primary).mean <= reference * 1.01
                ]
                margin = "within 1% of"
            if close:
                listing = ", ".join(f"{c.label} ({shown(c)})" for c in close)
                cheapest = min(close, key=lambda c: c.first["trainable_params"])
                share = 100 * cheapest.first["trainable_params"] / cheapest.first["total_params"]
                out.append(
                    f"{table.title}: {margin} full fine-tuning ({shown(full)}): "
                    f"{listing}; the one with fewest trainable parameters is "
                    f"{cheapest.label} ({share:.2f}%)."
                )
            else:
                out.append(
                    f"{table.title}: no method is {margin} full fine-tuning ({shown(full)})."
                )
        timed = [c for c in table.cells if c.step_ratio is not None and not c.is_full]
        if timed:
            fastest = min(timed, key=lambda c: c.step_ratio)
            out.append(
                f"{table.title}: the cheapest step is {fastest.label}'s, "
                f"{fastest.step_ratio:.2f} x full ({fastest.step_ratio_source}), "
                f"at test {name} {shown(fastest)}."
            )
        failed = [c.label for c in table.cells if c.audit.startswith("FAILED")]
        audited = [c for c in table.cells if c.audit != "n/a"]
        if failed:
            out.append(f"{table.title}: the frozen-weights audit failed for {', '.join(failed)}.")
        elif audited:
            runs = sum(len(c.runs) for c in audited)
            methods = f"{len(audited)} method{'s' if len(audited) > 1 else ''}"
            out.append(
                f"{table.title}: the frozen-weights audit passed in all {runs} runs of "
                f"{methods} with frozen weights."
            )
        few = [f"{c.label} ({len(c.chosen)})" for c in table.cells if len(c.chosen) < 3]
        if few:
            out.append(f"{table.title}: fewer than 3 seeds at the chosen rate: {', '.join(few)}.")
        edge = [
            c.label
            for c in table.cells
            if len(c.sweep) > 1 and c.chosen_lr in (min(c.sweep), max(c.sweep))
        ]
        if edge:
            out.append(
                f"{table.title}: the chosen learning rate is at the edge of the sweep "
                f"for {', '.join(edge)}; a wider sweep might do better."
            )
    if bench is not None:
        for target_name, result in bench["targets"].items():
            verdict = _verdict(result.get("passed"))
            line = f"Benchmark target {target_name}: {verdict}"
            value = result.get("value")
            if isinstance(value, float):
                line += f" (value {value:.3g}, threshold {result.get('threshold')})"
            if result.get("passed") is not True and result.get("explanation"):
                line += f" — {result['explanation']}"
            out.append(line + ".")
    return out


# -- plots ------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(plt, count: int, width: float = 6.5, height: float = 4.5):
    fig, axes = plt.subplots(1, count, figsize=(width * count, height), squeeze=False)
    return fig, list(axes[0])


def _metric_axis(table: Table) -> tuple[str, float]:
    metrics = TASKS[table.task]
    name = metrics.primary.removeprefix("test_")
    return (f"test {name} (%)", 100.0) if metrics.as_percent else (f"test {name}", 1.0)


def plot_scatter(tables: list[Table], x_of, xlabel: str, log_x: bool):
    """Primary test metric (mean ± std over seeds) against ``x_of(cell)``, one panel a table."""
    plt = _pyplot()
    fig, axes = _figure(plt, len(tables))
    for ax, table in zip(axes, tables):
        ylabel, scale = _metric_axis(table)
        primary = TASKS[table.task].primary
        for cell in table.cells:
            x = x_of(cell)
            if x is None:
                continue
            stat = cell.test(primary)
            ax.errorbar(x, stat.mean * scale, yerr=(stat.std or 0) * scale, fmt="o", capsize=3)
            ax.annotate(
                cell.label,
                (x, stat.mean * scale),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
        if log_x:
            ax.set_xscale("log")
        ax.set(xlabel=xlabel, ylabel=ylabel, title=table.title)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def plot_memory(tables: list[Table], bench: dict | None):
    """Peak memory of the runs per method, beside the benchmark's accounted memory if any."""
    plt = _pyplot()
    fig, axes = _figure(plt, len(tables), height=5)
    for ax, table in zip(axes, tables):
        labels = [cell.label for cell in table.cells]
        positions = range(len(labels))
        runs = [cell.peak_memory for cell in table.cells]
        kinds = sorted({MEMORY_KINDS.get(m[1], m[1]) for m in runs if m is not None})
        height = 0.4 if bench is not None else 0.8
        ax.barh(
            [p - height / 2 for p in positions] if bench is not None else list(positions),
            [m[0] / 2**30 if m is not None else 0 for m in runs],
            height=height,
            label=f"runs: peak ({'/'.join(kinds) or 'not recorded'})",
        )
        if bench is not None:
            accounted = [cell.bench_memory or 0 for cell in table.cells]
            ax.barh(
                [p + height / 2 for p in positions],
                [m / 2**30 for m in accounted],
                height=height,
                label=f"bench: {str(bench.get('memory_kind', 'memory')).split(':')[0]}",
            )
        ax.set_yticks(list(positions), labels)
        ax.invert_yaxis()
        ax.set(xlabel="memory (GiB)", title=table.title)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2)
        ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def validation_curve(cell: Cell) -> tuple[list[int], list[float]]:
    """Mean validation metric at each logged step over the chosen runs' ``log_history``."""
    key = cell.metrics.select
    by_step: dict[int, list[float]] = defaultdict(list)
    for run in cell.chosen:
        for entry in run.get("log_history") or []:
            if isinstance(entry, dict) and key in entry and "step" in entry:
                by_step[int(entry["step"])].append(entry[key])
    steps = sorted(by_step)
    return steps, [statistics.fmean(by_step[step]) for step in steps]


def plot_gradual(tables: list[Table]):
    """Validation metric over steps, gradual unfreezing against full fine-tuning."""
    panels = [t for t in tables if any(c.first.get("policy") == GRADUAL for c in t.cells)]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = _figure(plt, len(panels))
    for ax, table in zip(axes, panels):
        metrics = TASKS[table.task]
        scale = 100 if metrics.as_percent else 1
        for cell in table.cells:
            if cell.first.get("policy") == GRADUAL or cell.is_full:
                steps, values = validation_curve(cell)
                ax.plot(
                    steps,
                    [v * scale for v in values],
                    marker="o",
                    label=f"{cell.label} (lr {cell.chosen_lr:g})",
                )
        unit = " (%)" if metrics.as_percent else ""
        ax.set(
            xlabel="optimizer step",
            ylabel=f"validation {metrics.select[5:]}{unit}",
            title=table.title,
        )
        ax.legend(fontsize=8)
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def make_plots(tables: list[Table], bench: dict | None) -> dict[str, object]:
    """File name -> matplotlib figure."""
    figures = {
        "accuracy_vs_params.png": plot_scatter(
            tables, lambda c: c.first["trainable_params"], "trainable parameters (log)", True
        ),
        "accuracy_vs_time.png": plot_scatter(
            tables, lambda c: c.train_runtime, "training time (s, Trainer train_runtime)", False
        ),
        "memory.png": plot_memory(tables, bench),
    }
    gradual = plot_gradual(tables)
    if gradual is not None:
        figures["gradual_unfreezing.png"] = gradual
    return figures


# -- the report -------------------------------------------------------------------------------


def extra_benches_markdown(folder: Path | None) -> list[str]:
    """Sections for bench_freeze_modes.json and bench_cache.json when they sit beside the report."""
    parts: list[str] = []
    modes_path = folder / "bench_freeze_modes.json" if folder else None
    if modes_path is not None and modes_path.is_file():
        data = _read_json(modes_path)
        full = data["modes"]["full"]["median_step_s"]
        parts += ["## Freeze modes (same policy, three ways of freezing)", "",
                  f"`{data['command'].strip()}`: {data['model']}, {data['optimizer']}, "
                  f"median of {data['rounds']} interleaved steps.", "",
                  "| mode | step vs full | optimizer state | gradients | frozen kept identical |",
                  "|---|---:|---:|---:|---|"]
        for mode, row in data["modes"].items():
            audit = ("n/a" if not row["audit_checked"] else "yes" if row["audit_passed"] else
                     f"no: {row['audit_moved']} of {row['audit_checked']} moved, "
                     f"max {row['audit_max_abs_diff']:.1e}")
            parts.append(f"| {mode} | {row['median_step_s'] / full:.2f} | "
                         f"{format_bytes(row['optimizer_state_bytes'])} | "
                         f"{format_bytes(row['gradient_bytes'])} | {audit} |")
        machinery = data["machinery"]
        audit = machinery["audit_snapshot_pct_of_step"] + machinery["audit_check_pct_of_step"]
        parts += ["", f"Applying a stage costs {machinery['apply_stage_pct_of_step']:.2f}% of one "
                  f"step; the audit (snapshot + check, once per run) {audit:.1f}% of one step, "
                  f"under 1% of the run from {machinery['audit_under_1pct_from_steps']} steps on.",
                  ""]
    cache_path = folder / "bench_cache.json" if folder else None
    if cache_path is not None and cache_path.is_file():
        data = _read_json(cache_path)
        parts += ["## Frozen-prefix cache", "",
                  f"`{data['command'].strip()}`: {data['model']}, batches of "
                  f"{data['batch_size']} x {data['seq_len']}, {data['batches_per_epoch']} batches "
                  f"per epoch, {data['epochs']} epochs, steps interleaved.", "",
                  "| method | step vs full, epochs 2+ | epoch 1 (building) | cache size |",
                  "|---|---:|---:|---:|"]
        for label, row in data["methods"].items():
            size = format_bytes(row["cache_bytes"]) if row["cache_bytes"] else "-"
            parts.append(f"| {label} | {row['ratio_to_full']:.3f} | "
                         f"{row['first_epoch_ratio_to_full']:.3f} | {size} |")
        parts.append("")
        for name, target in data["targets"].items():
            parts.append(f"- {name}: {target['value']:.3f} (target {target['threshold']}): "
                         f"{_verdict(target['passed'])}")
        parts.append("")
    return parts


def render_report(runs, tables, bench, command: str, results_dir: Path, plots,
                  out_dir: Path | None = None) -> str:
    commands = sorted({str(run["command"]) for run in runs if run.get("command")})
    shown = commands[:3] + ([f"... ({len(commands)} runs in all)"] if len(commands) > 3 else [])
    produced = (
        "\n".join(f"- `{c}`" if not c.startswith("...") else f"- {c}" for c in shown)
        if commands
        else "- `recipes/run.py`, one `results.json` per run (the commands are not recorded in the "
        "results files)"
    )
    parts = [
        "# Results: freezing policies compared with full fine-tuning and PEFT",
        "",
        f"Report: `{command}`, from {len(runs)} runs in "
        f"{sum(len(t.cells) for t in tables)} cells under `{results_dir}`.",
        "",
        "Runs produced by:",
        produced,
        "",
        "Each method's learning rate is the one with the best mean validation metric over the "
        "seeds every rate ran (classification: accuracy; causal LM: loss); test metrics are "
        "reported only at that rate, as mean ± sample standard deviation over seeds. Step-time "
        "ratios marked (runs) come from the runs' training time less in-training evaluation.",
        "",
        "## Hardware and versions",
        "",
        environment_markdown(runs, bench),
        "",
    ]
    for table in tables:
        parts += [
            f"## {table.title}",
            "",
            table_markdown(table),
            "",
            "Validation sweep (mean over seeds; chosen rate in bold):",
            "",
            sweep_markdown(table),
            "",
        ]
    parts += ["## Plots", ""]
    captions = {
        "accuracy_vs_params.png": "Test metric against trainable parameters (log scale)",
        "accuracy_vs_time.png": "Test metric against training time",
        "memory.png": "Memory per method",
        "gradual_unfreezing.png": "Validation metric over steps: gradual unfreezing vs full",
    }
    for name in plots:
        parts += [f"![{captions[name]}]({name})", ""]
    if bench is not None:
        parts += ["## Cost benchmark", "", bench_markdown(bench), ""]
    parts += extra_benches_markdown(out_dir)
    parts += ["## Findings", "", *[f"- {line}" for line in findings(tables, bench)], ""]
    return "\n".join(parts)


def write_report(results_dir: Path, out: Path, bench_path: Path | None, command: str) -> Path:
    """Read, check and aggregate everything, then write the report and plots atomically."""
    runs = load_runs(results_dir)
    bench = load_bench(bench_path)
    tables = build_tables(runs, bench)
    plots = make_plots(tables, bench)
    text = render_report(runs, tables, bench, command, results_dir, plots, out.parent)

    out.parent.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[str, Path]] = []
    try:
        for name, fig in plots.items():
            staged.append((_stage(out.parent, name, fig.savefig, dpi=120), out.parent / name))
        staged.append((_stage(out.parent, out.name, _write_text(text)), out))
    except BaseException:
        for temporary, _ in staged:
            Path(temporary).unlink(missing_ok=True)
        raise
    finally:
        _pyplot().close("all")
    for temporary, final in staged:  # the report last: it appears only with its plots
        os.replace(temporary, final)
    return out


def _write_text(text: str):
    def write(path: str) -> None:
        Path(path).write_text(text)

    return write


def _stage(folder: Path, name: str, writer, **kwargs) -> str:
    suffix = Path(name).suffix
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=suffix)
    os.close(handle)
    try:
        writer(temporary, **kwargs)
        os.chmod(temporary, 0o644)  # mkstemp makes it private; a report is for reading
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return temporary


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--results", default="results/runs", help="folder searched for results.json"
    )
    parser.add_argument("--out", default="results/REPORT.md", help="the report; plots go beside it")
    parser.add_argument(
        "--bench",
        default=None,
        help="bench.json (default: bench.json next to the report, if present)",
    )
    return parser


def main(argv: list[str] | None = None) -> Path:
    args = make_parser().parse_args(argv)
    out = Path(args.out)
    bench = Path(args.bench) if args.bench else out.parent / "bench.json"
    if args.bench and not bench.exists():
        raise SystemExit(f"error: --bench {bench} does not exist")
    shown = sys.argv[1:] if argv is None else argv
    command = "python recipes/compare.py " + " ".join(map(shlex.quote, shown))
    try:
        path = write_report(Path(args.results), out, bench, command)
    except ReportError as error:
        raise SystemExit(f"error: {error}") from None
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
