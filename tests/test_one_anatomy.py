"""One anatomy per launcher run: recipes/run.py traces the model once, with the policy's
``blocks=``, and its summary, cost preview, trainer and results all read that trace."""

import json
import sys

import pytest

from recipes.launcher.main import main

tracing = sys.modules["freeze_policies.structure.trace"]


def flags(model, out, *extra):
    return ["--model_name_or_path", model, "--output_dir", str(out), "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
            "--max_train_samples", "16", "--max_eval_samples", "8", "--max_length", "16",
            "--eval_strategy", "no", "--report_to", "none", "--use_cpu", "true",
            "--save_model", "false", *extra]


@pytest.fixture
def traces(monkeypatch):
    calls = []
    real = tracing.trace

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tracing, "trace", counting)
    return calls


def test_a_policy_run_traces_once_with_the_policys_blocks(tiny_bert, tmp_path, traces):
    # two of the three BERT layers named as the blocks: the summary the run records has two
    # blocks, so it was the policy's anatomy (a trace without blocks= finds three)
    blocks = ["bert.encoder.layer.0", "bert.encoder.layer.1"]
    options = json.dumps({"n": 1, "blocks": blocks})
    results = main(flags(tiny_bert, tmp_path / "out", "--policy", "bottom_n",
                         "--policy_options", options))
    assert len(traces) == 1
    blocks_seen = sorted(g for g in results["groups"] if g.startswith("block."))
    assert blocks_seen == ["block.0", "block.1"]


def test_a_full_fine_tuning_run_traces_once(tiny_bert, tmp_path, traces):
    results = main(flags(tiny_bert, tmp_path / "out"))
    assert len(traces) == 1
    assert sorted(g for g in results["groups"] if g.startswith("block.")) == [
        "block.0", "block.1", "block.2"]
