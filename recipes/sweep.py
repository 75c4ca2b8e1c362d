"""Run one comparison cell: a config's learning-rate sweep x seeds, one results.json each.

    python recipes/sweep.py configs/experiments/small.yaml --cell tweets/minilm/bottom_n
    python recipes/sweep.py configs/experiments/small.yaml --list

An experiment profile (``configs/experiments/*.yaml``) names the cells (configs under
``configs/``), the learning rates each is swept over, the seeds, and the run fields every cell
shares (budget: steps, batch, sample counts). Runs happen in one process, one after another,
through ``recipes.run.main``; a run whose results.json exists is skipped, so an interrupted cell
resumes where it stopped. The Makefile decides which cells are stale.

Learning rates are chosen on validation only: every rate runs with the first seed, the best
validation score wins, and the remaining seeds run at that rate alone (``selection.json``
records the scores and the choice). Test scores are read only by ``recipes/compare.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from recipes.run import ConfigError, main, write_json_atomic


def load_profile(path: str | Path) -> dict:
    if not Path(path).is_file():
        choices = ", ".join(str(p) for p in sorted(Path("configs/experiments").glob("*.yaml")))
        raise ConfigError(f"experiment profile {str(path)!r} does not exist; profiles: {choices}")
    profile = yaml.safe_load(Path(path).read_text())
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


def validation_score(results: dict) -> float:
    """Higher is better: validation accuracy for classification, minus loss for causal LM."""
    if results.get("eval_accuracy") is not None:
        return results["eval_accuracy"]
    return -results["eval_loss"]


def run_cell(profile_path: str, cell: str, out: str) -> dict:
    """Sweep the cell's learning rates on the first seed, then run the other seeds at the best.

    Writes ``<out>/<cell>/selection.json`` with every learning rate's validation score and the
    chosen one; ``recipes/compare.py`` reports the test scores of the chosen rate's runs.
    """
    profile = load_profile(profile_path)
    if cell not in profile["cells"]:
        raise ConfigError(f"cell {cell!r} is not in {profile_path}; cells: "
                          f"{', '.join(profile['cells'])}")
    spec = profile["cells"][cell] or {}
    lrs = spec.get("lrs") or profile["lrs"][spec.get("lr_grid", "default")]
    first, *other_seeds = spec.get("seeds", profile["seeds"])
    shared = {**profile.get("common", {}), **spec.get("fields", {})}
    config = Path("configs") / f"{cell}.yaml"
    cell_dir = Path(out) / cell

    def run(lr: float, seed: int) -> dict:
        run_dir = cell_dir / f"lr{lr:g}-seed{seed}"
        done = run_dir / "results.json"
        if done.exists():  # an interrupted cell resumes where it stopped
            return json.loads(done.read_text())
        print(f"== {cell} lr={lr:g} seed={seed}", flush=True)
        return main(["--config", str(config), *flags(shared), "--learning_rate", str(lr),
                     "--seed", str(seed), "--output_dir", str(run_dir)])

    scores = {f"{lr:g}": validation_score(run(lr, first)) for lr in lrs}
    chosen = max(lrs, key=lambda lr: scores[f"{lr:g}"])
    for seed in other_seeds:
        run(chosen, seed)
    selection = {"cell": cell, "profile": str(profile_path), "selection_seed": first,
                 "validation_scores": scores, "chosen_lr": chosen,
                 "seeds": [first, *other_seeds]}
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


if __name__ == "__main__":
    try:
        cli()
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None
