"""Rerun a cell's full-length runs with a few flags changed: one variable against the profile.

    python recipes/rerun.py results/runs/default tweets/minilm/bottom_n \\
        --out results/runs/bf16_frozen --jobs 2 -- --bf16 true --frozen_dtype bfloat16

Every full-length run of the cell (its chosen rate, every seed; not the short runs under
``sweep/``) is run again from the command its ``results.json`` recorded, with the flags after
``--`` set (added, or replacing the recorded value), ``--output_dir`` moved to the same relative
path under ``--out``, and no evaluation inside training (``--eval_strategy no``): a variant is
scored by its final validation and test metrics, and the selection seed's curve would cost every
variant run its evaluations. Each run is a fresh ``recipes/run.py`` process with one torch thread,
as the profile's runs had; ``--jobs`` of them at a time.

A run whose ``results.json`` already records the same command and the same splits as its base run
(``data``: rows and digests) is reused, so an interrupted rerun resumes where it stopped, and a
base cell rerun on other splits gets its variant rerun too. ``variant.json`` beside the runs
records the base cell and the flags; ``recipes/compare.py --variants`` reports each run paired
with its base run by seed (``recipes/report/variant.py``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from recipes.launcher.common import ConfigError, write_json_atomic
from recipes.launcher.results import ResultsError, RunResults, read_results

ROOT = Path(__file__).resolve().parents[2]  # the repository (recipes/experiments/rerun.py)
CURVE_FLAGS = ("eval_strategy", "eval_steps")  # set to "no" / dropped in every variant run


def set_flag(argv: list[str], name: str, value: str | None) -> list[str]:
    """``argv`` with ``--name`` set to ``value`` (replaced where present, else appended), or
    removed with its value when ``value`` is None. Run commands are ``--flag value`` pairs."""
    pairs = list(zip(argv[::2], argv[1::2]))
    flag = f"--{name}"
    out = [(f, v) if f != flag else (f, value) for f, v in pairs]
    if value is not None and flag not in argv[::2]:
        out.append((flag, value))
    return [word for f, v in out if v is not None for word in (f, v)]


def parse_extra(words: list[str]) -> list[tuple[str, str]]:
    """``--flag value`` pairs after ``--``; anything else is a one-line error."""
    if len(words) % 2 or not all(w.startswith("--") for w in words[::2]):
        raise ConfigError(f"give the changed flags as '--flag value' pairs after --, got "
                          f"{shlex.join(words) or 'nothing'}")
    names = [w[2:] for w in words[::2]]
    fixed = sorted(set(names) & {"output_dir", "seed", "learning_rate", *CURVE_FLAGS})
    if fixed:
        raise ConfigError(f"--{fixed[0]} is fixed by the base runs or by the rerun itself; "
                          "change the profile instead")
    return list(zip(names, words[1::2]))


def base_runs(root: Path, cell: str) -> list[Path]:
    """The cell's full-length ``results.json`` files (its rate, every seed)."""
    folder = root / cell
    if not (folder / "selection.json").is_file():
        raise ConfigError(f"{folder}: no selection.json (not a finished cell of a profile)")
    runs = sorted(p for p in folder.glob("*/results.json") if p.parent.name != "sweep")
    if not runs:
        raise ConfigError(f"{folder}: no full-length run")
    return runs


def variant_argv(base: RunResults, out_dir: Path, extra: list[tuple[str, str]]) -> list[str]:
    words = shlex.split(base.command or "")
    if not words or words[0] != "recipes/run.py":
        raise ConfigError(f"recorded command is not a recipes/run.py command: {base.command}")
    argv = set_flag(words[1:], "output_dir", str(out_dir))
    argv = set_flag(set_flag(argv, "eval_strategy", "no"), "eval_steps", None)
    for name, value in extra:
        argv = set_flag(argv, name, value)
    return argv


def run_one(argv: list[str], data: dict | None) -> tuple[str, int]:
    """Run ``recipes/run.py argv`` unless a finished run has the same command and ``data``."""
    done = Path(argv[argv.index("--output_dir") + 1]) / "results.json"
    command = shlex.join(["recipes/run.py", *argv])
    try:
        previous = read_results(done)
    except ResultsError:  # absent, cut short or not a run record: run it again
        previous = None
    if previous is not None and previous.command == command and previous.data == data:
        return f"reused {done.parent}", 0
    if done.parent.exists():  # stale, or interrupted before its results.json
        shutil.rmtree(done.parent)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # from the current folder, as the recorded commands ran (their paths are relative to it)
    finished = subprocess.run([sys.executable, str(ROOT / "recipes" / "run.py"), *argv], env=env)
    return f"ran {done.parent} (exit {finished.returncode})", finished.returncode


def rerun(root: Path, cell: str, out: Path, extra: list[tuple[str, str]], jobs: int = 1) -> int:
    """Run every variant of the cell's runs; returns the number that failed."""
    argvs, datas = [], []
    for path in base_runs(root, cell):
        base = read_results(path)
        argvs.append(variant_argv(base, out / cell / path.parent.name, extra))
        datas.append(base.data)
    write_json_atomic(out / cell / "variant.json", {
        "base": str(root / cell), "cell": cell,
        "flags": {name: value for name, value in extra}, "curve": "dropped (--eval_strategy no)",
    })
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        outcomes = list(pool.map(run_one, argvs, datas))
    for line, _ in outcomes:
        print(f"== {line}", flush=True)
    return sum(1 for _, code in outcomes if code != 0)


def cli(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, extra = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv \
        else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="a profile's folder of runs, e.g. results/runs/default")
    parser.add_argument("cell", help="a finished cell under it, e.g. tweets/minilm/bottom_n")
    parser.add_argument("--out", required=True, help="where the variant's runs go")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (one thread each)")
    args = parser.parse_args(ours)
    pairs = parse_extra(extra)
    if not pairs:
        raise ConfigError("give the flags to change after --, e.g. -- --bf16 true")
    return rerun(Path(args.root), args.cell, Path(args.out), pairs, args.jobs)

