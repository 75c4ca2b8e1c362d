"""recipes/sweep.py: the rate search (grid extension at the edge), the two phases, reuse, locks."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from recipes.experiments import sweep
from recipes.launcher.common import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def scorer(table):
    calls = []

    def run_at(lr):
        calls.append(lr)
        return table(lr)

    return run_at, calls


def test_interior_best_needs_no_extension():
    run_at, calls = scorer(lambda lr: {1e-4: 0.6, 3e-4: 0.7, 1e-3: 0.65}[lr])
    choice = sweep.choose_rate(run_at, [1e-4, 3e-4, 1e-3])
    assert choice["chosen"] == 3e-4 and choice["extensions"] == 0
    assert choice["stopped"] == "interior" and calls == [1e-4, 3e-4, 1e-3]


def test_best_at_the_top_edge_extends_upwards_until_interior():
    scores = {1e-4: 0.5, 3e-4: 0.6, 1e-3: 0.7, 3.16e-3: 0.75, 1e-2: 0.72}
    run_at, calls = scorer(lambda lr: scores[lr])
    choice = sweep.choose_rate(run_at, [1e-4, 3e-4, 1e-3])
    # the grid's ratio is (1e-3 / 1e-4) ** (1/2) = 3.162...; rates are kept to 3 digits
    assert calls == [1e-4, 3e-4, 1e-3, 3.16e-3, 1e-2]
    assert choice["chosen"] == 3.16e-3 and choice["extensions"] == 2
    assert choice["stopped"] == "interior"


def test_best_at_the_bottom_edge_extends_downwards():
    run_at, calls = scorer(lambda lr: 1.0 - abs(lr - 1e-5) * 1e3)  # peak at 1e-5
    choice = sweep.choose_rate(run_at, [1e-4, 3e-4, 1e-3])
    assert calls[3:] == [3.16e-5, 1e-5, 3.16e-6]
    assert choice["chosen"] == 1e-5 and choice["stopped"] == "interior"
    run_at, calls = scorer(lambda lr: 1.0 - abs(lr - 1e-5) * 1e3)
    choice = sweep.choose_rate(run_at, [1e-4, 3e-4, 1e-3], max_extensions=1)
    assert calls[3:] == [3.16e-5]
    assert choice["chosen"] == 3.16e-5 and choice["stopped"] == "max_extensions"


def test_extension_stops_at_the_bound():
    run_at, calls = scorer(lambda lr: lr)  # always better upwards
    choice = sweep.choose_rate(run_at, [0.01, 0.03, 0.1], bounds=(1e-6, 0.3))
    assert calls == [0.01, 0.03, 0.1]  # the next step, 0.316, is beyond the bound 0.3
    assert choice["chosen"] == 0.1 and choice["stopped"] == "bounds"


def test_ties_go_to_the_smaller_rate():
    assert sweep.best_rate({1e-4: 0.7, 3e-4: 0.7, 1e-5: 0.6}) == 1e-4


def test_a_one_rate_grid_is_refused():
    with pytest.raises(ConfigError, match=r"a learning-rate grid needs at least 2 positive rates"):
        sweep.choose_rate(lambda lr: 0.5, [1e-4])


def write_profile(tmp_path, **extra):
    profile = {
        "seeds": [0, 1],
        "lrs": {"default": [1e-3, 1e-2]},
        "sweep": {"max_steps": 1},
        "common": {"max_steps": 2, "report_to": "none"},
        "cells": {"tweets/minilm/full": None},
        **extra,
    }
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(profile))
    return path


def test_cell_plan_merges_profile_cell_and_sweep_fields(tmp_path):
    profile = yaml.safe_load(write_profile(tmp_path).read_text())
    profile["cells"]["tweets/minilm/full"] = {"fields": {"max_steps": 3},
                                             "curve_fields": {"eval_strategy": "steps"}}
    plan = sweep.cell_plan(profile, "tweets/minilm/full")
    assert plan["full_fields"] == {"max_steps": 3, "report_to": "none"}
    assert plan["sweep_fields"] == {"max_steps": 1, "report_to": "none", "do_predict": False}
    assert plan["curve_fields"] == {"eval_strategy": "steps"}
    with pytest.raises(ConfigError, match="cell 'nope' is not in the profile; cells: tweets/"):
        sweep.cell_plan(profile, "nope")


def test_run_cell_sweeps_short_then_trains_seeds_and_reuses_runs(tmp_path, monkeypatch):
    """The two phases with a stand-in for recipes/run.py's main (no training)."""
    calls = []

    def fake_main(argv):
        args = dict(zip(argv[::2], argv[1::2]))
        calls.append(args)
        lr = float(args["--learning_rate"])
        result = {"method": "full", "model": "minilm", "task": "classification",
                  "seed": int(args["--seed"]), "learning_rate": lr,
                  "eval_accuracy": {1e-3: 0.5, 1e-2: 0.6, 0.1: 0.55}[lr],
                  "command": shlex.join(["recipes/run.py", *argv]), "data": {"test": {}}}
        if args["--seed"] == "1":  # recorded before the runner flags existed: still the same run
            result["command"] = result["command"].replace(" --save_model false", "")
        out = Path(args["--output_dir"])
        out.mkdir(parents=True)
        (out / "results.json").write_text(json.dumps(result))
        return result

    monkeypatch.setattr(sweep, "main", fake_main)
    monkeypatch.chdir(ROOT)
    profile = write_profile(tmp_path)
    selection = sweep.run_cell(str(profile), "tweets/minilm/full", str(tmp_path / "runs"))
    assert selection["chosen_lr"] == 1e-2 and selection["extensions"] == 1
    assert selection["validation_scores"] == {"0.001": 0.5, "0.01": 0.6, "0.1": 0.55}
    short = [c for c in calls if "/sweep/" in c["--output_dir"]]
    full = [c for c in calls if "/sweep/" not in c["--output_dir"]]
    assert [c["--max_steps"] for c in short] == ["1"] * 3
    assert all(c["--do_predict"] == "False" for c in short)
    assert [(c["--learning_rate"], c["--seed"], c["--max_steps"]) for c in full] == [
        ("0.01", "0", "2"), ("0.01", "1", "2")
    ]
    assert "--do_predict" not in full[0]
    assert all(c["--save_model"] == "false" for c in calls)  # a sweep keeps no weights
    saved = json.loads((tmp_path / "runs/tweets/minilm/full/selection.json").read_text())
    assert saved == json.loads(json.dumps(selection))
    # a second call reuses every run whose recorded arguments match
    calls.clear()
    sweep.run_cell(str(profile), "tweets/minilm/full", str(tmp_path / "runs"))
    assert calls == []
    # a run that records no split digest predates the current splitter: run again
    seed1 = tmp_path / "runs/tweets/minilm/full/lr0.01-seed1/results.json"
    recorded = json.loads(seed1.read_text())
    del recorded["data"]
    seed1.write_text(json.dumps(recorded))
    sweep.run_cell(str(profile), "tweets/minilm/full", str(tmp_path / "runs"))
    assert [(c["--seed"], c["--max_steps"]) for c in calls] == [("1", "2")]
    calls.clear()
    # a changed field reruns what it changes
    profile.write_text(profile.read_text().replace("max_steps: 2", "max_steps: 4"))
    sweep.run_cell(str(profile), "tweets/minilm/full", str(tmp_path / "runs"))
    assert [c["--seed"] for c in calls] == ["0", "1"]
    calls.clear()
    # runs of an earlier choice (another rate, a seed the profile dropped, a rate this search
    # did not try) are removed, so the cell reads in make report; nothing is rerun for them
    cell = tmp_path / "runs/tweets/minilm/full"
    for stale in ("lr0.1-seed0", "lr0.01-seed7", "sweep/lr0.3-seed0"):
        (cell / stale).mkdir(parents=True)
        (cell / stale / "results.json").write_text("{}")
    sweep.run_cell(str(profile), "tweets/minilm/full", str(tmp_path / "runs"))
    assert calls == []
    assert sorted(p.relative_to(cell).as_posix() for p in cell.glob("**/lr*-seed*")) == [
        "lr0.01-seed0", "lr0.01-seed1", "sweep/lr0.001-seed0", "sweep/lr0.01-seed0",
        "sweep/lr0.1-seed0"]


def test_same_run_compares_shell_quoted_commands():
    argv = ["--config", "c.yaml", "--policy_options", '{"k": 2, "every": 20}', "--seed", "0"]
    recorded = shlex.join(["recipes/run.py", *argv])
    assert sweep.same_run(recorded, argv)
    assert sweep.same_run(shlex.join(["recipes/run.py", *argv, *sweep.RUNNER_FLAGS]), argv)
    assert not sweep.same_run(recorded, [*argv[:3], '{"k": 2, "every": 40}', *argv[4:]])
    # space-joined, as commands were recorded before: not taken for the same run, so rerun
    assert not sweep.same_run(" ".join(["recipes/run.py", *argv]), argv)


def test_a_locked_cell_is_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "main", lambda argv: pytest.fail("must not run"))
    monkeypatch.chdir(ROOT)
    profile = write_profile(tmp_path)
    cell_dir = tmp_path / "runs/tweets/minilm/full"
    with sweep.cell_lock(cell_dir) as held:
        assert held
        assert sweep.run_cell(str(profile), "tweets/minilm/full", str(tmp_path / "runs")) is None


def test_list_prints_the_cells(tmp_path):
    done = subprocess.run([sys.executable, "recipes/sweep.py", str(write_profile(tmp_path)),
                           "--list"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and done.stdout.split() == ["tweets/minilm/full"]
