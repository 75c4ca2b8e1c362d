"""Run one comparison cell: choose its learning rate on short runs, then train the seeds in full.

    python recipes/sweep.py configs/experiments/default.yaml --cell tweets/minilm/bottom_n
    python recipes/sweep.py configs/experiments/default.yaml --list

An experiment profile (``configs/experiments/*.yaml``) names the cells (configs under
``configs/``), each cell's learning-rate grid, the seeds, and the run fields every cell shares.
A cell runs in two phases (multi-fidelity), one ``results.json`` per run:

1. **Choose the rate on short runs.** Every rate of the grid trains with the first seed at the
   profile's ``sweep`` fields (e.g. one epoch instead of three) and is scored on validation (the
   test split is not evaluated: ``--do_predict false``). When the best rate is at an edge of the
   grid, the grid is extended one step beyond that edge (the grid's own geometric ratio) and the
   new rate runs, until the best is interior, ``grid_extension.max_extensions`` rates were added,
   or the next rate would leave ``grid_extension.bounds``. Ties go to the smaller rate.
2. **Train the seeds at full length** at the chosen rate: every seed, at the profile's ``common``
   plus the cell's ``fields``. The selection seed's full-length run also gets the cell's
   ``curve_fields`` when given (in-training evaluation for the validation curves). Trainer's
   evaluation leaves training's RNG untouched, but not its last bits: full fine-tuning's seed 0
   logged the same loss to every digit up to the first evaluation (step 12) and losses that
   differ by about 1e-7 relative after it, ending one test example apart (74.40 with the curve,
   74.35 without; ``results/runs/default`` against ``make bench-adaptive``'s run). Compare a
   curve run with runs that have the curve too, or read such gaps as rounding.

Runs go to ``<out>/<cell>/sweep/lr<rate>-seed<seed>`` and ``<out>/<cell>/lr<rate>-seed<seed>``
(``--save_model false``: a sweep keeps each run's results.json, not its weights);
``<out>/<cell>/selection.json`` records the grid, every validation score and the choice. A run
whose ``results.json`` records the same arguments is reused, so an interrupted cell resumes where
it stopped and an unchanged cell costs nothing; a run whose arguments changed (the profile or the
config was edited) is run again, as is one that records no digest of its splits (``data``: it
predates the current way of drawing them). Test scores are read only by ``recipes/compare.py``.

``torch_threads`` in the profile fixes the CPU threads of every run: a CPU run is bit-identical to
a rerun with the same thread count (the count changes the order of floating-point sums).
``make compare`` runs ``COMPARE_JOBS`` cells at once; a lock file per cell keeps two processes
off the same cell.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import math
import shlex
import shutil
from contextlib import contextmanager
from pathlib import Path

from freeze_policies.policies.registry import load_yaml
from recipes.launcher.common import ConfigError, write_json_atomic
from recipes.launcher.main import main
from recipes.launcher.results import ResultsError, RunResults, read_results
from recipes.launcher.tasks import get_task

DEFAULT_BOUNDS = (1e-6, 1.0)
DEFAULT_MAX_EXTENSIONS = 3


def load_profile(path: str | Path) -> dict:
    if not Path(path).is_file():
        choices = ", ".join(str(p) for p in sorted(Path("configs/experiments").glob("*.yaml")))
        raise ConfigError(f"experiment profile {str(path)!r} does not exist; profiles: {choices}")
    profile = load_yaml(Path(path).read_text())
    if not isinstance(profile, dict):
        raise ConfigError(f"experiment profile {path} is not a YAML mapping")
    for key in ("seeds", "cells", "lrs"):
        if key not in profile:
            raise ConfigError(f"experiment profile {path} has no {key!r}")
    return profile


def flags(fields: dict) -> list[str]:
    """Run fields as command-line flags (mappings and lists as JSON)."""
    out = []
    for key, value in fields.items():
        out += [f"--{key}", json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    return out


def validation_score(results: RunResults) -> float:
    """Higher is better: the task's selection metric (``recipes.launcher.tasks``: validation
    accuracy for classification, minus the loss for causal LM and seq2seq)."""
    return get_task(results.task).metrics.score(results)


def rate_name(lr: float) -> str:
    return f"{lr:g}"


def best_rate(scores: dict[float, float]) -> float:
    """The rate with the highest score; ties go to the smaller rate."""
    return min(scores, key=lambda lr: (-scores[lr], lr))


def grid_ratio(grid: list[float]) -> float:
    """The grid's geometric step (first to last rate, over the gaps between them)."""
    rates = sorted(grid)
    if len(rates) < 2 or rates[0] <= 0:
        raise ConfigError(f"a learning-rate grid needs at least 2 positive rates, got {grid}")
    return (rates[-1] / rates[0]) ** (1 / (len(rates) - 1))


def next_rate(scores: dict[float, float], ratio: float, bounds=DEFAULT_BOUNDS,
              anchor: float | None = None) -> float | None:
    """One step beyond the edge the best rate sits on, or None when the best is interior or the
    step would leave ``bounds``. Steps are counted from ``anchor`` (the grid's smallest rate) in
    powers of ``ratio`` and rounded to 3 digits, so 1e-3 * 3.162 * 3.162 is 0.01, not 0.00999."""
    rates = sorted(scores)
    best = best_rate(scores)
    if best == rates[-1]:
        direction = 1
    elif best == rates[0]:
        direction = -1
    else:
        return None
    anchor = anchor or rates[0]
    steps = round(math.log(best / anchor) / math.log(ratio)) + direction
    candidate = float(f"{anchor * ratio**steps:.3g}")
    low, high = bounds
    if not low <= candidate <= high or candidate in scores:
        return None
    return candidate


def choose_rate(run_at, grid: list[float], max_extensions: int = DEFAULT_MAX_EXTENSIONS,
                bounds=DEFAULT_BOUNDS) -> dict:
    """Score every rate of ``grid`` with ``run_at(lr) -> score`` and extend it at the edge.

    Returns ``{"grid", "scores", "chosen", "extensions", "stopped"}``; ``stopped`` says why the
    search ended: "interior", "max_extensions" or "bounds".
    """
    ratio = grid_ratio(grid)
    scores = {lr: run_at(lr) for lr in sorted(grid)}
    extensions = 0
    while True:
        candidate = next_rate(scores, ratio, bounds, anchor=min(grid))
        best = best_rate(scores)
        if candidate is None:
            interior = sorted(scores)[0] < best < sorted(scores)[-1]
            stopped = "interior" if interior else "bounds"
            break
        if extensions >= max_extensions:
            stopped = "max_extensions"
            break
        scores[candidate] = run_at(candidate)
        extensions += 1
    return {"grid": sorted(grid), "scores": scores, "chosen": best_rate(scores),
            "extensions": extensions, "stopped": stopped}


# Flags that change what a run leaves on disk, not its numbers: a sweep keeps no weights.
RUNNER_FLAGS = ["--save_model", "false"]


def same_run(command: str, argv: list[str]) -> bool:
    """Whether a recorded command ran ``argv`` (with or without the runner flags)."""
    core = ["recipes/run.py", *argv]
    return command in (shlex.join(core), shlex.join([*core, *RUNNER_FLAGS]))


def cell_plan(profile: dict, cell: str) -> dict:
    """The grid, seeds and fields of one cell, with the profile's defaults filled in."""
    if cell not in profile["cells"]:
        raise ConfigError(f"cell {cell!r} is not in the profile; cells: "
                          f"{', '.join(profile['cells'])}")
    spec = profile["cells"][cell] or {}
    grid = spec.get("lrs") or profile["lrs"][spec.get("lr_grid", "default")]
    extension = {**profile.get("grid_extension", {}), **spec.get("grid_extension", {})}
    full = {**profile.get("common", {}), **spec.get("fields", {})}
    short = {**full, **profile.get("sweep", {}), **spec.get("sweep", {}), "do_predict": False}
    return {
        "grid": [float(lr) for lr in grid],
        "seeds": list(spec.get("seeds", profile["seeds"])),
        "full_fields": full,
        "sweep_fields": short,
        "curve_fields": dict(spec.get("curve_fields", {})),
        "max_extensions": int(extension.get("max_extensions", DEFAULT_MAX_EXTENSIONS)),
        "bounds": tuple(float(b) for b in extension.get("bounds", DEFAULT_BOUNDS)),
    }


@contextmanager
def cell_lock(cell_dir: Path):
    """Yields True when this process holds the cell (released when it exits, even if killed)."""
    cell_dir.mkdir(parents=True, exist_ok=True)
    with open(cell_dir / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True


def run_cell(profile_path: str, cell: str, out: str) -> dict | None:
    """Choose the cell's rate on short runs, then run every seed at full length.

    Writes ``<out>/<cell>/selection.json``; ``recipes/compare.py`` reports the test scores of
    the full-length runs. Returns None when another process is running the cell.
    """
    profile = load_profile(profile_path)
    plan = cell_plan(profile, cell)
    config = Path("configs") / f"{cell}.yaml"
    if not config.is_file():
        raise ConfigError(f"cell {cell!r} has no config {config}")
    if profile.get("torch_threads"):
        import torch

        torch.set_num_threads(int(profile["torch_threads"]))
    cell_dir = Path(out) / cell
    with cell_lock(cell_dir) as held:
        if not held:
            print(f"== {cell}: another process is running it; skipped", flush=True)
            return None
        return _run_cell(profile_path, cell, plan, config, cell_dir)


def remove_superseded(cell_dir: Path, full_length: set[str], short: set[str]) -> None:
    """Remove the run folders of an earlier choice: full-length runs at a rate the cell no
    longer chose (or of a seed the profile no longer has), short runs at a rate this search did
    not try. ``make report`` refuses a cell that holds them, so a rerun whose choice moved
    would otherwise leave a cell nobody can report until its folders are removed by hand."""
    for folder, keep in ((cell_dir, full_length), (cell_dir / "sweep", short)):
        for run_dir in sorted(folder.glob("lr*-seed*")):
            if run_dir.is_dir() and run_dir.name not in keep:
                print(f"== {run_dir}: a run of an earlier choice; removed", flush=True)
                shutil.rmtree(run_dir)


def _run_cell(profile_path: str, cell: str, plan: dict, config: Path, cell_dir: Path) -> dict:
    first, *other_seeds = plan["seeds"]

    def run(lr: float, seed: int, fields: dict, folder: Path) -> RunResults:
        run_dir = folder / f"lr{rate_name(lr)}-seed{seed}"
        argv = ["--config", str(config), *flags(fields), "--learning_rate", rate_name(lr),
                "--seed", str(seed), "--output_dir", str(run_dir)]
        done = run_dir / "results.json"
        if done.exists():
            try:
                previous = read_results(done)
            except ResultsError:  # not a run record (a newer schema, a damaged file): again
                previous = None
            # same arguments, and made since runs record their splits (the splitter changed
            # then): an interrupted cell resumes where it stopped
            if (previous is not None and same_run(previous.command or "", argv)
                    and previous.data is not None):
                return previous
            print(f"== {run_dir}: arguments changed or splits unrecorded, running again",
                  flush=True)
        if run_dir.exists():  # stale, or interrupted before its results.json
            shutil.rmtree(run_dir)
        print(f"== {cell} lr={rate_name(lr)} seed={seed} ({folder.name})", flush=True)
        return RunResults.from_dict(main([*argv, *RUNNER_FLAGS]))

    choice = choose_rate(
        lambda lr: validation_score(run(lr, first, plan["sweep_fields"], cell_dir / "sweep")),
        plan["grid"], plan["max_extensions"], plan["bounds"],
    )
    chosen = choice["chosen"]
    run(chosen, first, {**plan["full_fields"], **plan["curve_fields"]}, cell_dir)
    for seed in other_seeds:
        run(chosen, seed, plan["full_fields"], cell_dir)
    remove_superseded(cell_dir, {f"lr{rate_name(chosen)}-seed{seed}" for seed in plan["seeds"]},
                      {f"lr{rate_name(lr)}-seed{first}" for lr in choice["scores"]})
    selection = {
        "cell": cell,
        "profile": str(profile_path),
        "selection_seed": first,
        "sweep_fields": plan["sweep_fields"],
        "grid": choice["grid"],
        "validation_scores": {rate_name(lr): s for lr, s in sorted(choice["scores"].items())},
        "extensions": choice["extensions"],
        "stopped": choice["stopped"],
        "chosen_lr": chosen,
        "seeds": plan["seeds"],
    }
    write_json_atomic(cell_dir / "selection.json", selection)
    return selection


def cli(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", help="configs/experiments/<profile>.yaml")
    parser.add_argument("--cell", help="a cell of the profile, e.g. tweets/minilm/bottom_n")
    parser.add_argument("--out", default="results/runs", help="where run folders go")
    parser.add_argument("--list", action="store_true", help="print the profile's cells")
    args = parser.parse_args(argv)
    if args.list:
        print(" ".join(load_profile(args.profile)["cells"]))
        return
    if not args.cell:
        parser.error("give --cell or --list")
    run_cell(args.profile, args.cell, args.out)




__all__ = ["best_rate", "choose_rate", "grid_ratio", "next_rate", "run_cell"]
