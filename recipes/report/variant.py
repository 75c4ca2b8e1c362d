"""Variant runs beside the profile's: one cell rerun with a few flags changed, paired by seed.

``recipes/rerun.py`` reruns a cell's full-length runs with flags changed (bf16 autocast and
bfloat16 frozen weights, say) into a folder of its own, with the cell's relative path and a
``variant.json`` naming the base cell and the flags. ``--variants FOLDER`` adds, per variant cell:
each seed's test score beside its base run's, the paired difference with its 95% t-interval (a
seed fixes the data order and initialisation in both), parameter bytes and peak memory.

A pair is compared only if the two runs differ in nothing but the variant's flags (and output,
and the curve's evaluations, which ``recipes/rerun.py`` drops) and saw the same splits; any other
difference is named and the pair left out.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from recipes.report.longer import budget_mismatch
from recipes.report.reading import read_json, read_run_file
from recipes.report.stats import paired_difference

IGNORED = frozenset({"output_dir", "eval_strategy", "eval_steps", "overwrite_output_dir"})


def _mib(value) -> str:
    return f"{value / 2**20:.1f}" if isinstance(value, (int, float)) else "-"


def variant_markdown(variant_root: str | Path) -> list[str]:
    """The section's lines; empty when the folder holds no variant."""
    variant_root = Path(variant_root)
    specs = sorted(variant_root.rglob("variant.json")) if variant_root.is_dir() else []
    lines = []
    for spec_path in specs:
        spec = read_json(spec_path)
        lines += _one_cell(spec_path.parent, spec)
    title = f"## Variant `{variant_root.name}`: one cell rerun with flags changed"
    return [title, "", *lines] if lines else []


def _one_cell(folder: Path, spec: dict) -> list[str]:
    flags = spec.get("flags", {})
    base_folder = Path(spec.get("base", ""))
    changed = shlex.join([word for name, value in flags.items() for word in (f"--{name}", value)])
    lines = [f"`{spec.get('cell', folder.name)}` rerun with `{changed}` (`recipes/rerun.py`; "
             f"base runs: `{base_folder}`; no evaluation inside training).", ""]
    rows, ours, theirs, refused = [], {}, {}, []
    for path in sorted(folder.glob("*/results.json")):
        run = read_run_file(path)
        base_path = base_folder / path.parent.name / "results.json"
        if not base_path.is_file():
            refused.append(f"`{path.parent.name}`: no base run at {base_path}")
            continue
        base = read_run_file(base_path)
        different = budget_mismatch(run, base, IGNORED | set(flags))
        different += [f"no test_accuracy in {name}" for name, r in (("the variant", run),
                      ("the base run", base)) if "test_accuracy" not in r.metrics]
        if different:
            refused.append(f"`{path.parent.name}`: also differs in {', '.join(different)}")
            continue
        seed = run.seed
        ours[seed] = 100 * run.metrics["test_accuracy"]
        theirs[seed] = 100 * base.metrics["test_accuracy"]
        rows.append(f"| {seed} | {theirs[seed]:.2f} | {ours[seed]:.2f} | "
                    f"{ours[seed] - theirs[seed]:+.2f} | {_mib(base.parameter_bytes)} | "
                    f"{_mib(run.parameter_bytes)} | {_mib(base.peak_memory_bytes)} | "
                    f"{_mib(run.peak_memory_bytes)} |")
    if rows:
        lines += ["| seed | base test accuracy (%) | variant (%) | difference (points) | "
                  "base parameters MiB | variant parameters MiB | base peak memory MiB | "
                  "variant peak memory MiB |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|", *rows, "",
                  "Parameters: stored bytes at the end of training. Peak memory: the process's "
                  "peak RSS on a CPU, `max_memory_allocated` on a GPU (`peak_memory_kind`).", ""]
        diff = paired_difference(ours, theirs)
        if all(ours[seed] == theirs[seed] for seed in ours):
            lines.append(f"The same test accuracy as the base run on every seed ({len(ours)} of "
                         f"{len(ours)}).")
        elif diff.low is None:
            lines.append(f"One pair: {diff.mean:+.2f} points; no interval exists.")
        else:
            verdict = ("excludes zero: the variant differs" if diff.excludes_zero else
                       "includes zero: no difference at this number of seeds")
            lines.append(f"Paired difference over {diff.n} seeds: {diff.mean:+.2f} points "
                         f"[{diff.low:+.2f}, {diff.high:+.2f}] ({diff.confidence:.0%} "
                         f"t-interval), which {verdict}.")
    if refused:
        lines.append("Not compared: " + "; ".join(refused) + ".")
    return [*lines, ""]
