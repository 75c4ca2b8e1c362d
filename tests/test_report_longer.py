"""The report's longer-run section: the curve, the plateau rule, the profile's run beside it."""

import json
import shlex

from recipes.launcher.results import RunResults
from recipes.report.longer import curve_of, longer_markdown

IDENTITY = {"method": "full", "model": "minilm", "task": "classification", "seed": 0,
            "learning_rate": 3e-4}


def write_run(folder, accuracies, test, epoch, steps):
    folder.mkdir(parents=True)
    history = [{"step": 10 * (i + 1), "eval_accuracy": a} for i, a in enumerate(accuracies)]
    history.append({"step": 10 * len(accuracies), "eval_accuracy": accuracies[-1]})  # final eval
    (folder / "results.json").write_text(json.dumps({
        **IDENTITY, "log_history": history, "test_accuracy": test, "epoch": epoch,
        "max_steps": steps,
        "command": f"recipes/run.py --num_train_epochs {epoch:g}"}))


def test_a_flat_last_third_has_plateaued_and_sits_beside_the_profile_run(tmp_path):
    cell = "tweets/minilm/full/lr0.0003-seed0"
    write_run(tmp_path / "longer" / cell, [0.60, 0.70, 0.72, 0.73, 0.74, 0.74, 0.745, 0.74, 0.742],
              test=0.752, epoch=6, steps=90)
    write_run(tmp_path / "default" / cell, [0.60, 0.70, 0.71], test=0.7385, epoch=3, steps=30)
    lines = "\n".join(longer_markdown(tmp_path / "longer", [tmp_path / "default"]))
    assert ("| validation accuracy (%) | 60.0 | 70.0 | 72.0 | 73.0 | 74.0 | 74.0 | 74.5 | 74.0 "
            "| 74.2 |") in lines
    # middle third 73.00, 74.00, 74.00 -> 73.67; last third 74.50, 74.00, 74.20 -> 74.23
    assert "has plateaued: the last third of its 9 evaluations averages 74.23, the middle third " \
           "73.67 (gain +0.57 points" in lines
    assert "Test accuracy 75.20 against 73.85 for the profile's run of the same cell, rate and " \
           "seed at 3 epochs (30 steps), whose best validation accuracy was 71.00" in lines


def test_a_rising_curve_is_still_improving_and_an_empty_folder_adds_nothing(tmp_path):
    write_run(tmp_path / "longer" / "a" / "lr1-seed0", [0.5, 0.6, 0.7], test=0.7, epoch=2,
              steps=30)
    assert "is still improving" in "\n".join(longer_markdown(tmp_path / "longer", []))
    assert longer_markdown(tmp_path / "missing", []) == []
    assert curve_of(RunResults(**IDENTITY, log_history=[{"step": 3, "loss": 1.0}])) == []



def test_a_longer_run_that_differs_in_more_than_its_budget_is_named_and_not_compared(tmp_path):
    cell = "tweets/minilm/full/lr0.0003-seed0"
    write_run(tmp_path / "longer" / cell, [0.6, 0.7, 0.7], test=0.75, epoch=6, steps=90)
    write_run(tmp_path / "default" / cell, [0.6, 0.7, 0.7], test=0.74, epoch=3, steps=30)
    base = tmp_path / "default" / cell / "results.json"
    run = json.loads(base.read_text())
    run["command"] += " --train_sampling_strategy group_by_length --eval_steps 12"
    base.write_text(json.dumps(run))
    lines = "\n".join(longer_markdown(tmp_path / "longer", [tmp_path / "default"]))
    assert ("their commands also differ in --train_sampling_strategy (absent against "
            "group_by_length); rerun `make longer`.") in lines
    assert "Test accuracy" not in lines  # epochs and eval_steps are the budget's own flags


def test_json_values_with_spaces_are_compared_whole(tmp_path):
    """Commands are recorded shell-quoted: an option differing after its first space is seen."""
    cell = "tweets/minilm/lisa/lr0.0003-seed0"
    write_run(tmp_path / "longer" / cell, [0.6, 0.7, 0.7], test=0.75, epoch=6, steps=90)
    write_run(tmp_path / "default" / cell, [0.6, 0.7, 0.7], test=0.74, epoch=3, steps=30)
    for profile, every in (("longer", 40), ("default", 20)):
        path = tmp_path / profile / cell / "results.json"
        run = json.loads(path.read_text())
        run["command"] += " " + shlex.join(["--policy_options", f'{{"k": 2, "every": {every}}}'])
        path.write_text(json.dumps(run))
    lines = "\n".join(longer_markdown(tmp_path / "longer", [tmp_path / "default"]))
    assert ('their commands also differ in --policy_options ({"k": 2, "every": 40} against '
            '{"k": 2, "every": 20})') in lines


def test_a_longer_run_on_other_splits_is_named_and_not_compared(tmp_path):
    cell = "tweets/minilm/full/lr0.0003-seed0"
    write_run(tmp_path / "longer" / cell, [0.6, 0.7, 0.7], test=0.75, epoch=6, steps=90)
    write_run(tmp_path / "default" / cell, [0.6, 0.7, 0.7], test=0.74, epoch=3, steps=30)
    base = tmp_path / "default" / cell / "results.json"
    base.write_text(json.dumps({**json.loads(base.read_text()),
                                "data": {"test": {"rows": 2000, "sha256": "c3"}}}))
    lines = "\n".join(longer_markdown(tmp_path / "longer", [tmp_path / "default"]))
    assert "their commands also differ in the splits they saw (results.json's data)" in lines
    assert "Test accuracy" not in lines
