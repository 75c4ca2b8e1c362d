"""Parts by role through the ways users reach them: recipes/run.py's --policy_options and the
preview CLI (python -m freeze_policies MODEL) on the new families."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import FAMILY_CASES

from recipes.launcher.common import ConfigError
from recipes.launcher.main import main

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = {case.id: case for case in FAMILY_CASES}
MLP_OF_TOP_BLOCK = '{"parts": ["mlp"], "policy": {"name": "top_n", "n": 1}}'


def test_run_trains_the_mlp_of_the_top_block_only(tmp_path, tiny_bert):
    out = tmp_path / "out"
    argv = ["--model_name_or_path", tiny_bert, "--output_dir", str(out), "--max_steps", "2",
            "--per_device_train_batch_size", "4", "--max_train_samples", "16",
            "--max_eval_samples", "8", "--max_length", "16", "--eval_strategy", "no",
            "--report_to", "none", "--use_cpu", "true", "--policy", "train_parts",
            "--policy_options", MLP_OF_TOP_BLOCK]
    main(argv)
    results = json.loads((out / "results.json").read_text())
    hidden, inner = 32, 37  # tiny_bert: intermediate.dense and output.dense of block 2
    assert results["trainable_params"] == (hidden * inner + inner) + (inner * hidden + hidden)
    assert results["frozen_audit"]["passed"] is True and results["frozen_audit"]["checked"] > 0
    assert results["policy"] == "train_parts"
    assert results["policy_options"] == json.loads(MLP_OF_TOP_BLOCK)


def test_run_refuses_a_part_the_model_lacks_in_one_line_before_training(tmp_path, tiny_bert):
    out = tmp_path / "out"
    argv = ["--model_name_or_path", tiny_bert, "--output_dir", str(out), "--max_steps", "1",
            "--report_to", "none", "--use_cpu", "true", "--policy", "freeze_parts",
            "--policy_options", '{"parts": ["router"]}']
    with pytest.raises(ConfigError, match=r"freeze_parts: BertForSequenceClassification has no "
                       r"'router' \(no parameter there\); its parts: embeddings, head, encoder, "
                       r"encoder.embeddings, encoder.blocks, attention, mlp, norms"):
        main(argv)
    assert not out.exists()


@pytest.mark.parametrize("case_id,task,expected", [
    ("qwen2-vl", "vision_language", "parts: embeddings, head, feature_encoder, visual, "
     "visual.embeddings, visual.blocks, visual.top, language_model, language_model.embeddings, "
     "language_model.blocks, language_model.top, vision_tower, projector, attention, mlp, "),
    ("mixtral", "causal_lm", "parts: embeddings, head, model, model.embeddings, model.blocks, "
     "attention, mlp, norms, router, experts\n"),
])
def test_preview_cli_prints_the_parts(tmp_path, case_id, task, expected):
    folder = tmp_path / case_id
    FAMILIES[case_id].build().save_pretrained(folder)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "freeze_policies", str(folder), "--task", task,
                           "--policy", "freeze_parts", "--policy_options",
                           '{"parts": ["vision_tower"]}' if case_id == "qwen2-vl" else
                           '{"parts": ["router"]}'],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert expected in done.stdout
    assert "== freeze_parts" in done.stdout
