"""Longer runs beside the profile's: where a method's validation curve levels off.

A profile fixes one budget for every method. Whether that budget reaches full fine-tuning's
plateau is checked by a run of the same cell at a longer budget (same rate, same seed, more
epochs), kept in its own folder with the cell's relative path, for example
``results/runs/longer/tweets/minilm/full/lr0.0003-seed0`` beside
``results/runs/default/tweets/minilm/full/lr0.0003-seed0``. ``--longer FOLDER`` adds, per longer
run: its validation curve, the plateau rule applied to it, and its test score beside the profile's
run of the same cell, rate and seed. One seed: the section says where the curve levels off, it
does not rank methods.

The two runs must differ only in their budget: their recorded commands are compared flag by flag,
ignoring ``LONGER_ONLY`` (epochs, the curve's spacing, output and saving), and they must have seen
the same splits (``results.json``'s ``data``). Any other difference (a profile that changed after
the longer run, or splits drawn another way) is named, and the test scores are not put side by
side.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from recipes.launcher.results import RunResults, read_results
from recipes.report.stats import plateau

THRESHOLD = 0.01  # the plateau rule of the profile's own curve (recipes/report/markdown.py)
LONGER_ONLY = frozenset({"num_train_epochs", "max_steps", "eval_steps", "output_dir",
                         "save_model", "overwrite_output_dir"})


def command_flags(command: str) -> dict[str, str]:
    """``--flag value`` pairs of a recorded ``recipes/run.py`` command (a bare flag maps to "")."""
    words = shlex.split(command)
    flags = {}
    for i, word in enumerate(words):
        if word.startswith("--"):
            following = words[i + 1] if i + 1 < len(words) else ""
            flags[word[2:]] = "" if following.startswith("--") else following
    return flags


def budget_mismatch(run: RunResults, base: RunResults,
                    allowed: frozenset = LONGER_ONLY) -> list[str]:
    """What, beyond the ``allowed`` flags (the budget's), differs between two runs: any other flag
    of their recorded commands, and the splits they saw."""
    ours, theirs = command_flags(run.command or ""), command_flags(base.command or "")
    named = [f"--{name} ({ours.get(name, 'absent')} against {theirs.get(name, 'absent')})"
             for name in sorted((set(ours) | set(theirs)) - allowed)
             if ours.get(name) != theirs.get(name)]
    if run.data != base.data:  # the same command on other splits is not the same
        named.append("the splits they saw (results.json's data)")
    return named


def curve_of(run: RunResults, metric: str = "eval_accuracy") -> list[tuple[int, float]]:
    """(step, value) of every in-training evaluation, the last one once."""
    points = {}
    for entry in run.log_history:
        if metric in entry:
            points[int(entry["step"])] = float(entry[metric])
    return sorted(points.items())


def longer_markdown(longer_root: str | Path, profile_roots: list[str | Path]) -> list[str]:
    """The section's lines; empty when the folder holds no run."""
    longer_root = Path(longer_root)
    runs = sorted(longer_root.rglob("results.json")) if longer_root.is_dir() else []
    if not runs:
        return []
    lines = ["## Longer runs: where the curve levels off", ""]
    for path in runs:
        relative = path.parent.relative_to(longer_root)
        run = read_results(path)
        base = next((read_results(Path(root) / relative / "results.json")
                     for root in profile_roots
                     if (Path(root) / relative / "results.json").is_file()), None)
        lines += _one_run(relative, run, base)
    return lines


def _one_run(relative: Path, run: RunResults, base: RunResults | None) -> list[str]:
    curve = curve_of(run)
    steps = run.max_steps or (curve[-1][0] if curve else 0)
    lines = [f"`{relative}` at {run.epoch or 0:g} epochs ({steps} steps): `python "
             f"{run.command or '?'}`.", ""]
    if curve:
        lines += ["| step | " + " | ".join(str(step) for step, _ in curve) + " |",
                  "|---|" + "---:|" * len(curve),
                  "| validation accuracy (%) | "
                  + " | ".join(f"{100 * value:.1f}" for _, value in curve) + " |", ""]
    result = plateau(curve, THRESHOLD)
    if result is not None:
        state = result.state
        lines.append(
            f"Its validation accuracy {state}: the last third of its {len(curve)} evaluations "
            f"averages {100 * result.last:.2f}, the middle third {100 * result.middle:.2f} "
            f"(gain {100 * result.gain:+.2f} points; a plateau is a gain under "
            f"{100 * THRESHOLD:g} point); best {100 * result.best:.2f} at step {result.best_step}."
        )
    mismatch = budget_mismatch(run, base) if base is not None else []
    if mismatch:
        lines.append(
            "It is not the profile's run at a longer budget: their commands also differ in "
            + ", ".join(mismatch) + "; rerun `make longer`."
        )
    elif base is not None and "test_accuracy" in run.metrics and "test_accuracy" in base.metrics:
        base_curve = curve_of(base)
        best_base = max((v for _, v in base_curve), default=None)
        ours, theirs = 100 * run.metrics["test_accuracy"], 100 * base.metrics["test_accuracy"]
        lines.append(
            f"Test accuracy {ours:.2f} against {theirs:.2f}"
            f" for the profile's run of the same cell, rate and seed at {base.epoch or 0:g} "
            f"epochs ({base.max_steps} steps)"
            + (f", whose best validation accuracy was {100 * best_base:.2f}" if best_base else "")
            + "; one seed, so a difference under the profile's seed spread is not a difference."
        )
    return [*lines, ""]
