"""A new user's first hour, the way they reach it: ``make run`` twice, a bad value under
``accelerate launch``, the schedule on the console and in results.json (recipes/run.py), the
model card of a bundled model, and ``--policy`` over a config of another policy."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from recipes.launcher.common import LAUNCHER_NOTICE, USER_ERROR_EXIT
from recipes.run import main

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
STAMP = ".venv/.setup-done"  # make -o: never (re)run `make setup` from a test


def tiny_flags(model, out, *extra):
    return ["--model_name_or_path", model, "--output_dir", str(out), "--max_steps", "4",
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
            "--max_train_samples", "32", "--max_eval_samples", "16", "--max_length", "32",
            "--eval_strategy", "no", "--report_to", "none", "--use_cpu", "true",
            "--logging_steps", "1", "--save_model", "false", *extra]


def schedule_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("[freeze schedule]")]


def test_make_run_twice_replaces_its_own_run(tmp_path, tiny_bert):
    """The second `make run` replaces the first's run in make's own folder (RUN_DIR), which is
    not the config's output_dir, so the README's launcher commands do not collide with it."""
    run_dir = tmp_path / "make-run"
    flags = (f"--model_name_or_path {tiny_bert} --policy_options '{{n: 2}}' --max_steps 1 "
             "--max_train_samples 16 --max_eval_samples 8 --per_device_train_batch_size 4 "
             "--report_to none --save_model false")
    stamps = []
    for _ in range(2):
        done = subprocess.run(["make", "-s", "-o", STAMP, "run", f"RUN_DIR={run_dir}",
                               f"RUN_FLAGS={flags}"], cwd=ROOT, env=ENV, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        results = json.loads((run_dir / "results.json").read_text())
        stamps.append((run_dir / "results.json").stat().st_mtime_ns)
        assert results["policy_options"] == {"n": 2} and results["max_steps"] == 1
        assert results["world_size"] == 1
        launch = results["accelerate"]
        assert launch["launcher"] == "accelerate launch"
        assert launch["config_file"] == str(ROOT / "configs/accelerate/cpu.yaml")
        assert launch["config"]["num_processes"] == 1 and launch["config"]["use_cpu"] is True
    assert stamps[1] > stamps[0]
    assert "overwrite_output_dir: removed the earlier run's results.json" in done.stderr
    shown = subprocess.run(["make", "-n", "-o", STAMP, "run"], cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=60).stdout
    assert "--output_dir outputs/make-run/tweets/minilm/bottom_n --overwrite_output_dir true" \
        in shown
    assert "output_dir: outputs/tweets/minilm/bottom_n" in \
        (ROOT / "configs/tweets/minilm/bottom_n.yaml").read_text()


def test_a_bad_value_under_accelerate_launch_is_printed_once_and_set_apart(tmp_path,
                                                                             tiny_bert):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(ROOT / "configs/accelerate/cpu.yaml"), str(ROOT / "recipes/run.py"),
         "--model_name_or_path", tiny_bert, "--output_dir", str(taken)],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    line = (f"error: output_dir {str(taken)!r} already holds a run (notes.txt): pass "
            "--overwrite_output_dir true to replace it, or --resume_from_checkpoint true to "
            "continue it")
    both = done.stdout + done.stderr
    assert done.returncode != 0
    assert both.count(line) == 1, both  # not again inside the launcher's traceback
    assert f"\n{line}\n{LAUNCHER_NOTICE}\n" in done.stdout
    assert both.index(line) < both.index("Traceback")  # what follows is the launcher's
    assert f"exit status {USER_ERROR_EXIT}" in both
    assert (taken / "notes.txt").read_text() == "mine"


def test_gradual_unfreeze_prints_each_stage_and_records_it(tmp_path, tiny_bert, capsys):
    results = main(tiny_flags(tiny_bert, tmp_path / "out", "--policy", "gradual_unfreeze",
                              "--policy_options", '{"every": 1, "unit": "steps"}'))
    lines = schedule_lines(capsys.readouterr().out)
    events = results["schedule_events"]
    total = results["total_params"]
    groups = {group: counts[1] for group, counts in results["groups"].items()}
    head, top, middle = groups["head"], groups["block.2"], groups["block.1"]
    assert [(e["step"], e["freeze_stage"]) for e in events] == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert events[0]["trains"] == ["head"] and events[1]["opened"] == ["block.2"]
    assert events[3]["opened"] == ["block.0"]  # the embeddings would open at step 4
    assert all(e["closed"] == [] for e in events[1:])
    assert events[0]["trainable_share"] == round(head / total, 6)
    assert events[2]["trainable_share"] == round((head + top + middle) / total, 6)
    assert lines[:3] == [
        f"[freeze schedule] step 0: gradual_unfreeze stage 0 trains head "
        f"({100 * head / total:.2f}% of parameters train)",
        f"[freeze schedule] step 1: gradual_unfreeze stage 1 opens block.2 "
        f"({100 * (head + top) / total:.2f}% of parameters train)",
        f"[freeze schedule] step 2: gradual_unfreeze stage 2 opens block.1 "
        f"({100 * (head + top + middle) / total:.2f}% of parameters train)",
    ]
    assert len(lines) == len(events) == 4
    written = json.loads((tmp_path / "out" / "results.json").read_text())
    assert written["schedule_events"] == events
    assert written["world_size"] == 1
    assert written["accelerate"]["launcher"] == "python"
    assert written["accelerate"]["num_processes"] == 1


def test_auto_freeze_prints_every_decision_and_records_it(tmp_path, tiny_bert, capsys):
    results = main(tiny_flags(tiny_bert, tmp_path / "out", "--policy", "auto_freeze",
                              "--policy_options", '{"every": 1, "percentile": 100}',
                              "--max_steps", "5"))
    lines = schedule_lines(capsys.readouterr().out)
    events = results["schedule_events"]
    decisions = [e for e in results["log_history"] if "auto_freeze_depth" in e]
    announced = [e for e in events if e["schedule_event"] == "auto_freeze"]
    assert [(e["step"], e["depth"], e["rates"]) for e in announced] == [
        (d["step"], d["auto_freeze_depth"], d["auto_freeze_rates"]) for d in decisions]
    assert events[0]["schedule_event"] == "stage" and events[0]["trainable_share"] == 1.0
    assert len(decisions) >= 2 and len(lines) == len(events) == len(decisions) + 1
    depth = 0
    for event, line in zip(events[1:], lines[1:]):
        froze = [f"block.{i}" for i in range(depth, event["depth"])]
        assert event["froze"] == froze
        assert line.startswith(f"[freeze schedule] step {event['step']}: auto_freeze froze "
                               f"{', '.join(froze) or 'nothing'} "
                               f"(depth {event['depth']}; ")
        share = float(re.search(r"; ([0-9.]+)% of parameters train\)$", line).group(1))
        assert share == pytest.approx(100 * event["trainable_share"], abs=0.006)
        depth = event["depth"]
    assert depth >= 1  # something froze, and the share fell with it
    assert events[-1]["trainable_share"] < 1.0


def test_a_fixed_policy_prints_no_schedule(tmp_path, tiny_bert, capsys):
    results = main(tiny_flags(tiny_bert, tmp_path / "out", "--policy", "bottom_n",
                              "--policy_options", '{"n": 1}', "--max_steps", "1"))
    assert schedule_lines(capsys.readouterr().out) == []
    assert results["schedule_events"] == []


def test_the_card_names_the_bundled_model_by_its_alias(tmp_path):
    out = tmp_path / "out"
    main(tiny_flags("minilm", out, "--policy", "all_but_head", "--max_steps", "1",
                    "--max_train_samples", "8", "--max_eval_samples", "8",
                    "--save_model", "true"))
    card = (out / "README.md").read_text()
    assert card.startswith('---\nbase_model: "minilm"\n')
    metadata = card.split("---")[1]
    assert "/" not in metadata.split("base_model:")[1].splitlines()[0]


# -- flags over a config of another method -------------------------------------------------------

BOTTOM_N = "configs/tweets/minilm/bottom_n.yaml"
LORA = "configs/tweets/minilm/lora.yaml"


@pytest.mark.parametrize("flags,expected,notice", [
    (["--config", BOTTOM_N, "--policy", "lisa"], ("freeze", "lisa", {}, None, {}),
     f"notice: --policy lisa on the command line replaces {BOTTOM_N}'s choice; its "
     "policy_options: {n: 4} no longer apply and are dropped"),
    (["--config", BOTTOM_N, "--policy", "lisa", "--policy_options", "{k: 1}"],
     ("freeze", "lisa", {"k": 1}, None, {}), None),
    (["--config", BOTTOM_N, "--policy", "bottom_n"], ("freeze", "bottom_n", {"n": 4}, None, {}),
     None),
    (["--config", LORA, "--budget_step_ratio", "0.5"], ("freeze", None, {}, None, {}),
     f"notice: --budget_step_ratio 0.5 on the command line replaces {LORA}'s choice; its "
     "peft_method: lora, peft_options: {lora_alpha: 16, r: 8, target_modules: [query, value]} "
     "no longer apply and are dropped"),
    (["--config", BOTTOM_N, "--peft_method", "ia3"], ("peft", None, {}, "ia3", {}),
     f"notice: --peft_method ia3 on the command line replaces {BOTTOM_N}'s choice; its policy: "
     "bottom_n, policy_options: {n: 4} no longer apply and are dropped"),
])
def test_a_method_flag_drops_the_configs_other_choice_with_a_notice(tmp_path, capsys, flags,
                                                                    expected, notice):
    from recipes.launcher.parsing import parse_args

    method = parse_args([*flags, "--output_dir", str(tmp_path / "out")])[2]
    assert (method.method, method.policy, method.policy_options, method.peft_method,
            method.peft_options) == expected
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if line.startswith("notice:")] == ([notice] if notice else [])


@pytest.mark.parametrize("flags,message", [
    (["--budget_memory_gb", "1", "--peft_method", "lora"],
     "--budget_memory_gb 1 picks bottom_n by budget and --peft_method lora trains a PEFT "
     "method: give one of them"),
    (["--config", LORA, "--budget_step_ratio=0.5", "--peft_method", "lora"],
     "--budget_step_ratio 0.5 picks bottom_n by budget and --peft_method lora trains a PEFT "
     "method: give one of them"),
    (["--config", LORA, "--policy", "lisa", "--peft_method", "lora"],
     "--policy lisa names a freeze policy and --peft_method lora trains a PEFT method: give one "
     "of them"),
])
def test_two_method_flags_are_one_line_naming_what_was_typed(tmp_path, flags, message):
    from recipes.launcher.common import ConfigError
    from recipes.launcher.parsing import parse_args

    with pytest.raises(ConfigError) as raised:
        parse_args([*flags, "--output_dir", str(tmp_path / "out")])
    assert str(raised.value) == message and "method='freeze'" not in str(raised.value)
