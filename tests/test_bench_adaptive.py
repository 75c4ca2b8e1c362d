"""recipes/bench.py adaptive: the plumbing on a tiny model (no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from recipes import bench
from recipes.report.benches import adaptive_markdown

ROOT = Path(__file__).resolve().parent.parent
AUTO = 'auto_freeze=tweets/minilm/auto_freeze:{"policy_options": {"every": 1, "percentile": 100}}'


def write_profile(tmp_path) -> Path:
    profile = {
        "seeds": [0],
        "torch_threads": 1,
        "lrs": {"default": [1e-3, 1e-2]},
        "common": {"num_train_epochs": 3, "per_device_train_batch_size": 4,
                   "per_device_eval_batch_size": 8, "max_length": 16, "max_train_samples": 16,
                   "max_eval_samples": 8, "max_validation_samples": 8, "report_to": "none",
                   "eval_strategy": "no", "logging_steps": 4},
        "cells": {"tweets/minilm/full": None,
                  "tweets/minilm/auto_freeze": {"fields": {"cache_frozen_prefix": True}},
                  "tweets/minilm/auto_freeze_param_change": None},  # the default arms' cells
    }
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def test_both_arms_run_alternating_and_the_json_holds_the_pairs(tmp_path, tiny_bert, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "bench.json"
    written = bench.cli([
        "adaptive", "--profile", str(write_profile(tmp_path)), "--seeds", "0", "1",
        "--arm", "full=tweets/minilm/full", "--arm", AUTO,
        "--lr", "full=1e-3", "--lr", "auto_freeze=1e-3",
        "--set", f"model_name_or_path={tiny_bert}", "--work", str(tmp_path / "runs"),
        "--out", str(out),
    ])
    saved = json.loads(out.read_text())
    assert saved["summary"] == json.loads(json.dumps(written["summary"]))
    runs = saved["runs"]
    # seed 0 runs the baseline first, seed 1 the other arm first
    assert [(r["seed"], r["arm"]) for r in runs] == [
        (0, "full"), (0, "auto_freeze"), (1, "auto_freeze"), (1, "full")]
    for run in runs:
        assert run["wall_seconds"] >= run["train_runtime"] > 0
        assert 0 <= run["test_accuracy"] <= 1 and run["max_steps"] == 12
        assert Path(run["results"]).is_file()
    auto = [r for r in runs if r["arm"] == "auto_freeze"]
    full = [r for r in runs if r["arm"] == "full"]
    assert all(r["prefix_cache"] is None and r["depth_over_steps"] == [] for r in full)
    for run in auto:  # every=1, percentile=100: one block per step down to the floor (2 of 3)
        assert run["depth_over_steps"][:3] == [[2, 1], [3, 2], [4, 2]]
        # by the end of epoch 2 every example is cached at depth 2: epoch 3 replays every step
        assert run["prefix_cache"]["hits"] >= 4 and run["prefix_cache"]["depth"] == 2
    arm = saved["summary"]["arms"]["auto_freeze"]
    assert saved["summary"]["baseline"] == "full" and arm["seeds"] == [0, 1]
    for clock in ("speedup_wall", "speedup_train"):
        assert len(arm[clock]["per_seed"]) == 2 and arm[clock]["min"] <= arm[clock]["max"]
    pairs = arm["test_accuracy_pairs"]
    by_seed = sorted(full, key=lambda r: r["seed"]), sorted(auto, key=lambda r: r["seed"])
    assert pairs == [[f["test_accuracy"], a["test_accuracy"]] for f, a in zip(*by_seed)]
    diff = arm["test_accuracy_diff_points"]
    assert diff["per_seed"] == pytest.approx([100 * (a - f) for f, a in pairs])
    assert diff["ci95"][0] <= diff["mean"] <= diff["ci95"][1]
    assert saved["arms"][1]["fields"]["policy_options"] == {"every": 1, "percentile": 100}
    # what the launcher resolved for each arm, recorded before the first run
    assert saved["arms"][0]["method"]["method"] == "full"
    assert saved["arms"][1]["method"]["policy"] == "auto_freeze"
    assert saved["arms"][1]["method"]["policy_options"] == {"every": 1, "percentile": 100}
    assert {"versions", "hardware", "python", "command"} <= set(saved) and saved["complete"]
    table = adaptive_markdown(saved)  # what the report shows (and the script prints)
    assert "| auto_freeze | every=1, percentile=100 | 0.001 |" in table
    assert "| full (baseline) | — | 0.001 | 1 | 1 |" in table
    assert "| auto_freeze | 12 | 2 (2-2; n=2) | 3 (3-3; n=2) | " in table
    assert "| depth 2 | hits |" in table  # one column per depth reached


def payload(speedups, gaps):
    """A bench_adaptive.json as the benchmark writes it, for two seeds of one arm."""
    runs = [{"arm": arm, "seed": seed, "test_accuracy": 0.7, "max_steps": 100,
             "prefix_cache": None if arm == "full" else {"hits": 3, "records": 5,
                                                        "rows_filled": 40 + seed},
             "depth_over_steps": [] if arm == "full" else [[10, 0], [20, 2 + seed], [30, 3]]}
            for seed in (0, 1) for arm in ("full", "auto")]
    spread = {"per_seed": speedups, "mean": sum(speedups) / 2, "median": sum(speedups) / 2,
              "min": min(speedups), "max": max(speedups), "sd": 0.1}
    return {"command": "python recipes/bench.py adaptive", "seeds": [0, 1], "complete": True,
            "arms": [{"label": "full", "learning_rate": 3e-4, "fields": {}},
                     {"label": "auto", "learning_rate": 3e-4, "fields": {},
                      "config": "configs/tweets/minilm/auto_freeze.yaml"}],
            "runs": runs,
            "summary": {"baseline": "full", "loadavg": {"min": 1.0, "max": 2.0}, "arms": {
                "auto": {"seeds": [0, 1], "speedup_wall": spread, "speedup_train": spread,
                         "test_accuracy_diff_points": {"mean": gaps[0], "ci95": list(gaps[1:]),
                                                       "per_seed": [gaps[0]] * 2}},
            }}}


@pytest.mark.parametrize("speedups,gaps,fast,noninferior", [
    ([1.4, 1.8], (0.2, -0.9, 1.3), "met", "met"),
    ([1.2, 1.5], (0.2, -1.1, 1.5), "missed", "missed"),
])
def test_table_judges_the_goal_by_mean_wall_speedup_and_interval_bound(speedups, gaps, fast,
                                                                        noninferior):
    table = adaptive_markdown(payload(speedups, gaps))
    mean = sum(speedups) / 2
    assert (f"| auto | every=10 | 0.0003 | {mean:.2f} ({min(speedups):.2f}-{max(speedups):.2f})x"
            in table)
    assert f"| {gaps[0]:+.2f} [{gaps[1]:+.2f}, {gaps[2]:+.2f}] | {fast} | {noninferior} |" in table
    # depth 2 first reached at step 20 in both seeds, depth 3 at 30 in seed 0 and 20 in seed 1
    assert ("| auto | 100 | 20 (20-20; n=2) | 20 (20-20; n=2) | 25 (20-30; n=2) | 3 | 5 | 40.5 |"
            in table)
    speed = ("1.60x, 0.10 above 1.5x" if fast == "met" else "1.35x, 0.15 short of 1.5x")
    bound = ("non-inferior (0.10 above -1)" if noninferior == "met"
             else "not shown (0.10 below -1) over 2 seeds")
    assert (f"- auto: {speed}; accuracy +0.20 points, lower bound {gaps[1]:+.2f}: {bound}; first "
            "freeze at step 20, depth 3 (reached by every seed) at step 25 of 100 (medians)."
            in table)


@pytest.mark.parametrize("flags,message", [
    (["--arm", "full=tweets/minilm/full", "--arm", "x=tweets/minilm/nope"],
     "error: cell 'tweets/minilm/nope' is not in the profile"),
    (["--arm", "full=tweets/minilm/full", "--arm", "auto=tweets/minilm/auto_freeze:{bad"],
     "the fields after ':' are not JSON"),
    (["--arm", "full=tweets/minilm/full"], "give at least two arms"),
    (["--lr", "fast=1e-3"], "--lr names fast, which is not an arm"),
    (["--runs", "nowhere"], "no chosen learning rate for 'tweets/minilm/full': nowhere/"),
    # checked for every arm before the first one trains
    (["--arm", "full=tweets/minilm/full", "--arm",
      'x=tweets/minilm/auto_freeze:{"policy_options": {"criterion": "param_change"}}'],
     r"error: arm 'x': auto_freeze: criterion='param_change' needs threshold="),
    (["--arm", "full=tweets/minilm/full", "--arm", 'x=tweets/minilm/auto_freeze:{"max_length": 0}'],
     "error: arm 'x': max_length=0 must be an integer >= 1"),
])
def test_bad_flags_are_one_line_before_any_run(tmp_path, monkeypatch, flags, message):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "bench.json"
    with pytest.raises(SystemExit, match=message):
        bench.cli(["adaptive", "--profile", str(write_profile(tmp_path)), "--work",
                   str(tmp_path / "runs"), "--out", str(out), *flags])
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_the_table_shows_the_options_the_bench_recorded_not_todays_config():
    """An arm's options come from the JSON's ``method`` (what ran), so editing the config later
    does not change a committed table; JSONs from before the bench recorded it read the config."""
    data = payload([1.4, 1.8], (0.2, -0.9, 1.3))
    assert "| auto | every=10 | " in adaptive_markdown(data)  # the config's, as before
    data["arms"][1]["method"] = {"method": "freeze", "policy": "auto_freeze",
                                 "policy_options": {"every": 7, "criterion": "param_change"}}
    assert "| auto | every=7, criterion=param_change | 0.0003 |" in adaptive_markdown(data)


def test_make_bench_adaptive_keeps_its_runs_beside_its_json():
    """Its runs go under the same root as its JSON: results/local/ (ignored), or the committed
    results/ with UPDATE=1, where results/runs/bench_adaptive holds the committed runs."""
    import os
    import subprocess

    def dry_run(*args: str) -> str:
        done = subprocess.run(["make", "-n", "-o", ".venv/.setup-done", "bench-adaptive", *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, HF_HUB_OFFLINE="1"))
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert ("--out results/local/bench_adaptive.json --work results/local/runs/bench_adaptive"
            in dry_run())
    assert "--out results/bench_adaptive.json --work results/runs/bench_adaptive" in dry_run(
        "UPDATE=1")


def test_the_depth_table_stays_a_table_when_no_arm_froze():
    """A short run that never freezes: one "depth reached" column saying none, and as many
    separator cells as header cells (an empty header cell made a malformed table)."""
    data = payload([1.1, 1.2], (0.0, -0.5, 0.5))
    for run in data["runs"]:
        run["depth_over_steps"] = []
    lines = adaptive_markdown(data).splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| arm | steps |"))
    assert lines[header] == "| arm | steps | depth reached | hits | records | rows filled |"
    assert lines[header + 1].count("|") == lines[header].count("|")
    assert lines[header + 2].startswith("| auto | 100 | none | 3 | 5 |")
