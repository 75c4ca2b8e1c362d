"""recipes/bench.py adaptive: the plumbing on a tiny model (no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from recipes import bench

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
                  "tweets/minilm/auto_freeze": {"fields": {"cache_frozen_prefix": True}}},
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
    assert {"versions", "hardware", "python", "command"} <= set(saved) and saved["complete"]


@pytest.mark.parametrize("flags,message", [
    (["--arm", "full=tweets/minilm/full", "--arm", "x=tweets/minilm/nope"],
     "error: cell 'tweets/minilm/nope' is not in the profile"),
    (["--arm", "full=tweets/minilm/full", "--arm", "auto=tweets/minilm/auto_freeze:{bad"],
     "the fields after ':' are not JSON"),
    (["--arm", "full=tweets/minilm/full"], "give at least two arms"),
    (["--lr", "fast=1e-3"], "--lr names fast, which is not an arm"),
    (["--runs", "nowhere"], "no chosen learning rate for 'tweets/minilm/full': nowhere/"),
])
def test_bad_flags_are_one_line_before_any_run(tmp_path, monkeypatch, flags, message):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "bench.json"
    with pytest.raises(SystemExit, match=message):
        bench.cli(["adaptive", "--profile", str(write_profile(tmp_path)), "--work",
                   str(tmp_path / "runs"), "--out", str(out), *flags])
    assert not out.exists() and not (tmp_path / "runs").exists()
