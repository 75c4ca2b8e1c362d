"""recipes/rerun.py and the report's variant section: a cell rerun with flags changed, by seed."""

import json

import pytest

from recipes.experiments import rerun
from recipes.launcher.common import ConfigError
from recipes.launcher.main import main
from recipes.report.longer import command_flags
from recipes.report.variant import variant_markdown

CELL = "tweets/tiny/bottom_n"
BF16 = ["--bf16", "true", "--use_cpu", "true", "--frozen_dtype", "bfloat16"]


def test_set_flag_replaces_appends_and_removes():
    argv = ["--seed", "0", "--eval_steps", "12"]
    assert rerun.set_flag(argv, "seed", "1") == ["--seed", "1", "--eval_steps", "12"]
    assert rerun.set_flag(argv, "bf16", "true") == [*argv, "--bf16", "true"]
    assert rerun.set_flag(argv, "eval_steps", None) == ["--seed", "0"]
    assert rerun.set_flag(argv, "absent", None) == argv


@pytest.mark.parametrize("words,message", [
    (["--bf16"], "give the changed flags as '--flag value' pairs after --, got --bf16"),
    (["bf16", "true"], "pairs after --, got bf16 true"),
    (["--seed", "3"], "--seed is fixed by the base runs or by the rerun itself"),
    (["--eval_steps", "3"], "--eval_steps is fixed by the base runs or by the rerun itself"),
])
def test_bad_extra_flags_are_refused_in_one_line(words, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        rerun.parse_extra(words)


def test_a_cell_without_selection_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no selection.json"):
        rerun.cli([str(tmp_path), CELL, "--out", str(tmp_path / "out"), "--", "--bf16", "true"])


@pytest.fixture(scope="module")
def base_cell(tmp_path_factory, tiny_bert):
    """Two seeds of a bottom_n cell on a tiny BERT, laid out as recipes/sweep.py writes them."""
    root = tmp_path_factory.mktemp("profile")
    for seed in (0, 1):
        main(["--model_name_or_path", tiny_bert, "--policy", "bottom_n", "--policy_options",
              '{"n": 2}', "--max_steps", "3", "--per_device_train_batch_size", "4",
              "--per_device_eval_batch_size", "8", "--max_train_samples", "32",
              "--max_eval_samples", "16", "--max_length", "32", "--use_cpu", "true",
              "--eval_strategy", "steps", "--eval_steps", "1", "--report_to", "none",
              "--learning_rate", "0.01", "--seed", str(seed), "--save_model", "false",
              "--output_dir", str(root / CELL / f"lr0.01-seed{seed}")])
    (root / CELL / "selection.json").write_text(json.dumps({"chosen_lr": 0.01}))
    return root


def test_rerun_changes_only_the_flags_and_the_report_pairs_by_seed(base_cell, tmp_path, capsys):
    out = tmp_path / "bf16"
    assert rerun.cli([str(base_cell), CELL, "--out", str(out), "--jobs", "2", "--", *BF16]) == 0
    for seed in (0, 1):
        base = json.loads((base_cell / CELL / f"lr0.01-seed{seed}/results.json").read_text())
        ours = json.loads((out / CELL / f"lr0.01-seed{seed}/results.json").read_text())
        flags, base_flags = command_flags(ours["command"]), command_flags(base["command"])
        changed = {name for name in set(flags) | set(base_flags)
                   if flags.get(name) != base_flags.get(name)}
        assert changed == {"output_dir", "eval_strategy", "eval_steps", "bf16", "frozen_dtype"}
        assert flags["eval_strategy"] == "no" and flags["frozen_dtype"] == "bfloat16"
        assert ours["data"] == base["data"] and ours["frozen_audit"]["passed"]
        assert ours["parameter_bytes"] < base["parameter_bytes"]  # frozen matrices in bf16
    spec = json.loads((out / CELL / "variant.json").read_text())
    assert spec["flags"] == {"bf16": "true", "use_cpu": "true", "frozen_dtype": "bfloat16"}
    capsys.readouterr()
    # a second call reuses every run whose recorded command is the same
    assert rerun.cli([str(base_cell), CELL, "--out", str(out), "--", *BF16]) == 0
    assert capsys.readouterr().out.count("== reused") == 2
    # ... but not one that saw other splits than its base run (a base rerun after a splitter change)
    seed1 = out / CELL / "lr0.01-seed1/results.json"
    stale = json.loads(seed1.read_text())
    stale["data"]["train"]["sha256"] = "old-splitter"
    seed1.write_text(json.dumps(stale))
    assert rerun.cli([str(base_cell), CELL, "--out", str(out), "--", *BF16]) == 0
    printed = capsys.readouterr().out
    assert printed.count("== reused") == 1 and f"== ran {seed1.parent} (exit 0)" in printed
    assert json.loads(seed1.read_text())["data"] == json.loads(
        (base_cell / CELL / "lr0.01-seed1/results.json").read_text())["data"]

    def set_test_accuracy(seed, shift):  # the variant's score: its base run's plus shift
        path = out / CELL / f"lr0.01-seed{seed}/results.json"
        base = json.loads((base_cell / CELL / f"lr0.01-seed{seed}/results.json").read_text())
        run = json.loads(path.read_text())
        run["test_accuracy"] = base["test_accuracy"] + shift
        path.write_text(json.dumps(run))

    for seed in (0, 1):  # a variant that changes nothing says so, not "[+0.00, +0.00]"
        set_test_accuracy(seed, 0.0)
    text = "\n".join(variant_markdown(out))
    assert f"`{CELL}` rerun with `--bf16 true --frozen_dtype bfloat16 --use_cpu true`" in text
    assert len([line for line in text.splitlines() if line.startswith(("| 0 |", "| 1 |"))]) == 2
    assert "The same test accuracy as the base run on every seed (2 of 2)." in text
    assert "Paired difference" not in text
    set_test_accuracy(0, 0.05)
    text = "\n".join(variant_markdown(out))
    assert "Paired difference over 2 seeds:" in text and "t-interval), which" in text

    spoiled = out / CELL / "lr0.01-seed1/results.json"
    run = json.loads(spoiled.read_text())
    run["data"]["test"]["sha256"] = "other"
    run["command"] += " --max_grad_norm 0.5"
    spoiled.write_text(json.dumps(run))
    text = "\n".join(variant_markdown(out))
    assert ("Not compared: `lr0.01-seed1`: also differs in --max_grad_norm (0.5 against absent), "
            "the splits they saw (results.json's data).") in text
    assert "One pair:" in text
    assert variant_markdown(tmp_path / "nothing") == []
