"""Adaptive freezing against full fine-tuning, end to end by the wall clock, side by side.

    python recipes/bench.py adaptive [--seeds 0 1 2 3 4] [--out results/local/bench_adaptive.json]
    python recipes/bench.py adaptive --arm full=tweets/minilm/full \\
        --arm 'every5=tweets/minilm/auto_freeze:{"policy_options": {"every": 5}}'

Each *arm* is a cell of the experiment profile (``--profile``, default the default profile):
its config, the profile's ``common`` fields and the cell's ``fields`` become the flags of
``recipes/run.py`` exactly as ``recipes/sweep.py`` builds them, at the rate the profile chose for
the cell (``<runs>/<cell>/selection.json``; ``--lr LABEL=RATE`` gives one instead), plus any JSON
fields given after the cell (``CELL:{"field": value}``). The first arm is the baseline.

For every seed, every arm runs once, in this process, one after the other (``main`` of the
launcher: data, model, training, validation and test, as a comparison run does), and the order
rotates from seed to seed so that drift in the machine's speed spreads over the arms. Measured:

- **wall seconds** of the whole run (``main`` from call to return) and Trainer's
  ``train_runtime`` (training only);
- the **speedup** per seed, baseline seconds over the arm's, for both clocks; reported with
  its mean, median, minimum, maximum and standard deviation over the seeds;
- **test accuracy** per seed and the paired difference against the baseline, in points, with
  its 95% t-interval (``recipes.report.stats.paired_difference``);
- per run: the frozen depth over the steps (``auto_freeze_depth`` decisions), the prefix
  cache's counters, and the load average before and after, since the machine may be shared.

The JSON (written atomically after every run, ``"complete": true`` once every seed ran, with
the command, hardware and versions) goes to
``results/local/bench_adaptive.json`` by default, outside the tracked tree; the runs' folders to
``--work`` (``results/local/runs/bench_adaptive``; ``make bench-adaptive UPDATE=1`` writes
``results/runs/bench_adaptive``), each keeping its ``results.json``. Each arm records the method
the launcher resolved from its config and flags (``method``: policy and options), so the JSON
says what ran without the configs beside it.
``--set FIELD=VALUE`` adds a run flag to every arm (``--set max_train_samples=64``), for quick
checks; ``--threads`` fixes torch's threads (default: the profile's ``torch_threads``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from recipes.benchmarks.harness import rotated, write_result
from recipes.experiments.sweep import RUNNER_FLAGS, cell_plan, flags, load_profile, rate_name
from recipes.launcher.common import ConfigError
from recipes.launcher.main import main as run_main
from recipes.launcher.results import RunResults
from recipes.report.aggregate import auto_freeze_decisions
from recipes.report.benches import adaptive_markdown
from recipes.report.stats import paired_difference

DEFAULT_PROFILE = "configs/experiments/default.yaml"
DEFAULT_ARMS = ("full=tweets/minilm/full", "auto_freeze=tweets/minilm/auto_freeze",
                "param_change=tweets/minilm/auto_freeze_param_change")
DEFAULT_OUT = "results/local/bench_adaptive.json"
DEFAULT_WORK = "results/local/runs/bench_adaptive"


def parse_arm(text: str) -> tuple[str, str, dict]:
    """``LABEL=CELL`` or ``LABEL=CELL:{json fields}`` -> (label, cell, fields)."""
    label, sep, rest = text.partition("=")
    if not sep or not label or not rest:
        raise ConfigError(f"--arm {text!r}: write LABEL=CELL or LABEL=CELL:{{json fields}}")
    cell, colon, extra = rest.partition(":")
    fields = {}
    if colon:
        try:
            fields = json.loads(extra)
        except json.JSONDecodeError as error:
            raise ConfigError(
                f"--arm {text!r}: the fields after ':' are not JSON ({error.msg})") from None
        if not isinstance(fields, dict):
            raise ConfigError(f"--arm {text!r}: the fields after ':' must be a JSON object")
    return label, cell, fields


def parse_pairs(values: list[str], flag: str) -> dict[str, str]:
    out = {}
    for text in values:
        key, sep, value = text.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {text!r}: write NAME=VALUE")
        out[key] = value
    return out


def chosen_rate(runs: Path, cell: str) -> float:
    selection = runs / cell / "selection.json"
    if not selection.is_file():
        raise ConfigError(
            f"no chosen learning rate for {cell!r}: {selection} does not exist (run the cell "
            "with recipes/sweep.py first, or give --lr LABEL=RATE)"
        )
    return float(json.loads(selection.read_text())["chosen_lr"])


def plan_arms(args) -> list[dict]:
    """Each arm's label, cell, run fields and learning rate, checked before anything runs."""
    profile = load_profile(args.profile)
    rates = parse_pairs(args.lr, "--lr")
    extra = parse_pairs(args.set, "--set")
    arms, labels = [], set()
    for text in args.arm or DEFAULT_ARMS:
        label, cell, fields = parse_arm(text)
        if label in labels:
            raise ConfigError(f"--arm {text!r}: the label {label!r} is used twice")
        labels.add(label)
        plan = cell_plan(profile, cell)
        config = Path("configs") / f"{cell}.yaml"
        if not config.is_file():
            raise ConfigError(f"cell {cell!r} has no config {config}")
        merged = {**plan["full_fields"], **fields}
        for key, value in extra.items():
            merged[key] = value
        if label not in rates:
            rate = chosen_rate(Path(args.runs), cell)
        else:
            try:
                rate = float(rates[label])
            except ValueError:
                raise ConfigError(f"--lr {label}={rates[label]!r}: not a number") from None
        arms.append({"label": label, "cell": cell, "config": str(config), "fields": merged,
                     "learning_rate": rate})
    unknown = set(rates) - labels
    if unknown:
        raise ConfigError(f"--lr names {', '.join(sorted(unknown))}, which is not an arm; arms: "
                          f"{', '.join(sorted(labels))}")
    if len(arms) < 2:
        raise ConfigError("give at least two arms (the first is the baseline)")
    return arms


def arm_argv(arm: dict, seed: int, work: Path) -> list[str]:
    """``recipes/run.py``'s flags for ``arm`` at ``seed``, its run folder under ``work``."""
    return ["--config", arm["config"], *flags(arm["fields"]),
            "--learning_rate", rate_name(arm["learning_rate"]), "--seed", str(seed),
            "--output_dir", str(work / arm["label"] / f"seed{seed}"), *RUNNER_FLAGS,
            "--overwrite_output_dir", "true"]


def check_arms(arms: list[dict], seed: int, work: Path) -> None:
    """Each arm's run flags as the launcher checks them before loading anything (values, the
    policy and its options), so a bad option of the third arm is one line before the first arm
    trains, not a traceback after it. Records the method each arm resolves to (``method``)."""
    from freeze_policies import get_policy
    from recipes.launcher.parsing import parse_args

    for arm in arms:
        try:
            _, _, method, _ = parse_args(arm_argv(arm, seed, work))
            if method.method == "freeze" and method.policy:
                get_policy(method.policy, **method.policy_options)
            arm["method"] = method.as_dict()
        except ValueError as error:  # ConfigError and FreezePolicyError are ValueErrors
            raise ConfigError(f"arm {arm['label']!r}: {error}") from None


def run_once(arm: dict, seed: int, work: Path) -> dict:
    """One end-to-end run of ``arm`` at ``seed``; its figures and wall seconds."""
    argv = arm_argv(arm, seed, work)
    folder = work / arm["label"] / f"seed{seed}"
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    results = run_main(argv)
    wall = time.perf_counter() - started
    depth = [list(pair) for pair in auto_freeze_decisions(RunResults.from_dict(results))]
    return {
        "arm": arm["label"],
        "seed": seed,
        "wall_seconds": wall,
        "train_runtime": results["train_runtime"],
        "test_accuracy": results.get("test_accuracy"),
        "eval_accuracy": results.get("eval_accuracy"),
        "max_steps": results.get("max_steps"),
        "prefix_cache": results.get("prefix_cache"),
        "depth_over_steps": depth,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg()[0],
        "results": str(folder / "results.json"),
    }


def spread(values: list[float]) -> dict:
    return {
        "per_seed": values,
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "sd": statistics.stdev(values) if len(values) > 1 else None,
    }


def summarize(runs: list[dict], arms: list[dict]) -> dict:
    """Per arm against the baseline: speedups by both clocks and the paired accuracy gap."""
    baseline = arms[0]["label"]
    by = {(r["arm"], r["seed"]): r for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    out = {}
    for arm in arms[1:]:
        label = arm["label"]
        paired = [s for s in seeds if (baseline, s) in by and (label, s) in by]
        if not paired:
            continue
        base = [by[(baseline, s)] for s in paired]
        ours = [by[(label, s)] for s in paired]
        entry = {
            "seeds": paired,
            "speedup_wall": spread([b["wall_seconds"] / o["wall_seconds"]
                                    for b, o in zip(base, ours)]),
            "speedup_train": spread([b["train_runtime"] / o["train_runtime"]
                                     for b, o in zip(base, ours)]),
            "test_accuracy_pairs": [[b["test_accuracy"], o["test_accuracy"]]
                                    for b, o in zip(base, ours)],
        }
        if all(r["test_accuracy"] is not None for r in base + ours):
            diff = paired_difference(
                {s: 100 * o["test_accuracy"] for s, o in zip(paired, ours)},
                {s: 100 * b["test_accuracy"] for s, b in zip(paired, base)},
            )
            entry["test_accuracy_diff_points"] = {
                "per_seed": list(diff.differences), "mean": diff.mean, "sd": diff.std,
                "ci95": None if diff.low is None else [diff.low, diff.high],
            }
        out[label] = entry
    loads = [r[key] for r in runs for key in ("loadavg_before", "loadavg_after")]
    return {"baseline": baseline, "arms": out,
            "loadavg": {"min": min(loads), "max": max(loads)} if loads else None}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="recipes/bench.py adaptive", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=DEFAULT_PROFILE, help="the experiment profile")
    parser.add_argument("--runs", default="results/runs/default",
                        help="where the profile's cells chose their rates (selection.json)")
    parser.add_argument("--arm", action="append", default=[],
                        help="LABEL=CELL[:{json fields}], repeatable; the first is the baseline "
                             f"(default: {' '.join(DEFAULT_ARMS)})")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--lr", action="append", default=[], help="LABEL=RATE, repeatable")
    parser.add_argument("--set", action="append", default=[],
                        help="FIELD=VALUE run flag for every arm, repeatable")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: the profile's torch_threads)")
    parser.add_argument("--work", default=DEFAULT_WORK, help="where the runs' folders go")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"the JSON (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        arms = plan_arms(args)  # every bad flag is refused here, before any training
        check_arms(arms, args.seeds[0], Path(args.work))
    except ConfigError as error:
        raise SystemExit(f"error: {error}") from None
    threads = args.threads or load_profile(args.profile).get("torch_threads")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    work = Path(args.work)
    runs: list[dict] = []

    def write(complete: bool) -> dict:
        payload = {
            "benchmark": "adaptive",
            "profile": args.profile,
            "arms": arms,
            "seeds": args.seeds,
            "complete": complete,  # False while (or if interrupted while) seeds remain
            "runs": runs,
            "summary": summarize(runs, arms),
        }
        return write_result(args.out, payload, "recipes/bench.py adaptive", argv, started)

    for index, seed in enumerate(args.seeds):
        for position, arm in enumerate(rotated(arms, index)):
            print(f"== bench adaptive: {arm['label']} seed {seed}", flush=True)
            runs.append({**run_once(arm, seed, work), "position_in_round": position})
            write(complete=False)  # what is measured survives an interruption
    written = write(complete=True)
    print(adaptive_markdown(written), flush=True)
    return written


__all__ = ["main", "parse_arm", "plan_arms", "summarize"]
