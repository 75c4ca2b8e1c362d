"""Resume: FreezeTrainer for every registered policy, epoch-end checkpoints, and the launcher
killed with SIGKILL after a checkpoint and resumed with ``--resume_from_checkpoint true``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trainer_support import (
    RandomTokens,
    changed,
    make_args,
    make_model,
    one_torch_thread,  # noqa: F401
    snapshot,
)
from transformers import Trainer

from freeze_policies import FreezeTrainer, get_policy, list_policies

ROOT = Path(__file__).resolve().parent.parent

# Options that make each policy fit a 3-block model and change stage within a few steps; a policy
# registered later without an entry runs with its defaults.
POLICY_OPTIONS = {
    "bottom_n": {"n": 1},
    "top_n": {"n": 1},
    "custom": {"trainable": ["classifier"]},
    "gradual_unfreeze": {"every": 2, "unit": "steps"},
    "lisa": {"k": 1, "every": 2},
    "auto_freeze": {"every": 2},
}


def trainer_for(tmp_path, policy, *, seed=0, trainer_cls=FreezeTrainer, **overrides):
    args = make_args(tmp_path, **overrides)
    options = {} if trainer_cls is Trainer else {"freeze_policy": policy}
    return trainer_cls(
        model=make_model("bert", seed=seed),
        args=args,
        train_dataset=RandomTokens("bert", n=16),
        eval_dataset=RandomTokens("bert", n=8, seed=1),
        **options,
    )


@pytest.mark.parametrize("name", list_policies())
def test_freeze_trainer_resumes_every_registered_policy(name, tmp_path):
    """Resume from a mid-run checkpoint ends with the uninterrupted run's weights."""
    policy = get_policy(name, **POLICY_OPTIONS.get(name, {}))
    common = dict(max_steps=6, save_strategy="steps", save_steps=3)
    full = trainer_for(tmp_path, policy, **common)
    full.train()
    resumed = trainer_for(tmp_path, get_policy(name, **POLICY_OPTIONS.get(name, {})), seed=7,
                          **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    saved = json.loads((tmp_path / "checkpoint-3" / "trainer_state.json").read_text())
    stage = saved["stateful_callbacks"]["FreezeScheduleCallback"]["attributes"]["stage"]
    assert resumed.freeze_callback.resumed_stage == stage
    if not policy.scheduled:
        assert stage == 0
    final = snapshot(full.model)
    assert changed(final, snapshot(resumed.model), final) == []
    assert resumed.frozen_audit.passed


EPOCH_END = dict(max_steps=-1, num_train_epochs=2, eval_strategy="epoch", save_strategy="steps",
                 save_steps=4)  # 16 examples, batch 4: the checkpoint at step 4 ends epoch 0


def test_freeze_trainer_refuses_a_checkpoint_of_another_policy_in_one_line(tmp_path):
    """Before Trainer loads the optimizer (whose groups would not match: torch's message), the
    checkpoint's policy and freeze mode are compared with the trainer's."""
    from freeze_policies import FreezePolicyError

    common = dict(max_steps=2, save_strategy="steps", save_steps=2)
    trainer_for(tmp_path, get_policy("bottom_n", n=1), **common).train()
    checkpoint = str(tmp_path / "checkpoint-2")
    other = trainer_for(tmp_path, get_policy("top_n", n=1), max_steps=4)
    with pytest.raises(FreezePolicyError, match=r"^checkpoint '.*checkpoint-2' was trained with "
                                                r"policy bottom_n \{.*\}, this run has top_n "):
        other.train(resume_from_checkpoint=checkpoint)
    with pytest.raises(FreezePolicyError, match=r"was trained with freeze_mode='requires_grad', "
                                                r"this run has freeze_mode='zero_grad'"):
        FreezeTrainer(
            model=make_model("bert"), args=make_args(tmp_path, max_steps=4),
            train_dataset=RandomTokens("bert", n=16), freeze_policy=get_policy("bottom_n", n=1),
            freeze_mode="zero_grad",
        ).train(resume_from_checkpoint=True)


def test_evaluate_leaves_the_random_generators_as_it_found_them(tmp_path):
    import random

    import numpy as np

    trainer = trainer_for(tmp_path, None)
    plain = trainer_for(tmp_path, None, trainer_cls=Trainer)
    states = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    trainer.evaluate()
    assert torch.equal(torch.get_rng_state(), states[0])
    assert random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])
    # Why it matters: Trainer's evaluation draws from the global generator (each DataLoader
    # iterator draws its base seed there), so training after an evaluation gets other numbers.
    plain.evaluate()
    assert not torch.equal(torch.get_rng_state(), states[0])


@pytest.mark.parametrize("policy", [None, "bottom_n", "gradual_unfreeze"])
def test_resume_from_an_epoch_end_checkpoint_is_exact(policy, tmp_path):
    """The checkpoint at an epoch end is saved before the epoch's evaluation; the resumed run
    skips that evaluation. gradual_unfreeze (by epochs) opens its next stage right there."""
    spec = {"name": policy, "every": 1, "unit": "epochs"} if policy == "gradual_unfreeze" else (
        {"name": policy, "n": 1} if policy else None)
    full = trainer_for(tmp_path, spec, **EPOCH_END)
    full.train()
    assert [e["epoch"] for e in full.state.log_history if "eval_loss" in e] == [1.0, 2.0]
    resumed = trainer_for(tmp_path, spec, seed=3, **EPOCH_END)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    final = snapshot(full.model)
    assert changed(final, snapshot(resumed.model), final) == []


def test_plain_trainer_epoch_end_resume_is_not_exact(tmp_path):
    """The control for the test above: the same resume under a plain Trainer draws the epoch's
    shuffle and dropout from a generator the skipped evaluation did not advance."""
    full = trainer_for(tmp_path, None, trainer_cls=Trainer, **EPOCH_END)
    full.train()
    resumed = trainer_for(tmp_path, None, trainer_cls=Trainer, seed=3, **EPOCH_END)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    final = snapshot(full.model)
    assert changed(final, snapshot(resumed.model), final) != []


# -- the launcher, killed with SIGKILL after a checkpoint and resumed -----------------------------
LAUNCH_POLICIES = {
    "bottom_n": {"n": 1},
    "gradual_unfreeze": {"every": 1, "unit": "epochs"},  # the next stage opens at the epoch end
    "lisa": {"k": 1, "every": 3},
}


def launcher_flags(model, out, policy):
    """16 examples, batch 4, 2 epochs: 8 steps, evaluation at steps 4 and 8 (each epoch end),
    a checkpoint every 2 steps: step 2 is mid-epoch, step 4 an epoch end."""
    return ["--model_name_or_path", model, "--output_dir", str(out), "--policy", policy,
            "--policy_options", json.dumps(LAUNCH_POLICIES[policy]),
            "--max_train_samples", "16", "--max_eval_samples", "8", "--max_length", "16",
            "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "8",
            "--num_train_epochs", "2", "--save_strategy", "steps", "--save_steps", "2",
            "--learning_rate", "1e-3", "--logging_steps", "1", "--report_to", "none",
            "--use_cpu", "true"]


def killed_after_save(step, flags):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_after_save.py"), str(step),
                           *flags], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]


def step_logs(results):
    return {e["step"]: (e["loss"], e["grad_norm"]) for e in results["log_history"] if "loss" in e}


@pytest.mark.parametrize("policy", list(LAUNCH_POLICIES))
def test_launcher_killed_and_resumed_mid_epoch_or_at_an_epoch_end_matches(policy, tmp_path,
                                                                           tiny_bert):
    """One launcher process is killed right after its epoch-end checkpoint (step 4, before that
    epoch's evaluation); resuming from it (``true``: the last one) and from its mid-epoch
    checkpoint (step 2, a path) both end where the uninterrupted run ends."""
    from recipes.launcher.main import main

    reference = main(launcher_flags(tiny_bert, tmp_path / "reference", policy))
    # evaluations at both epoch ends during training, then the launcher's final validation
    assert [e["step"] for e in reference["log_history"] if "eval_loss" in e] == [4, 8, 8]
    expected = load_file(tmp_path / "reference" / "model.safetensors")

    out = tmp_path / "run"
    killed_after_save(4, launcher_flags(tiny_bert, out, policy))
    assert (out / "checkpoint-4").is_dir() and not (out / "checkpoint-6").exists()
    assert not (out / "results.json").exists()
    shutil.copytree(out, tmp_path / "mid")
    runs = {
        "checkpoint-4": main([*launcher_flags(tiny_bert, out, policy),
                              "--resume_from_checkpoint", "true"]),
        "checkpoint-2": main([*launcher_flags(tiny_bert, tmp_path / "mid", policy),
                              "--resume_from_checkpoint", str(tmp_path / "mid" / "checkpoint-2")]),
    }
    for checkpoint, resumed in runs.items():
        folder = Path(resumed["resumed_from"]).parent
        assert Path(resumed["resumed_from"]).name == checkpoint
        final = load_file(folder / "model.safetensors")
        assert final.keys() == expected.keys()
        assert [n for n in expected if not torch.equal(final[n], expected[n])] == [], checkpoint
        for key in ("eval_loss", "eval_accuracy", "eval_f1", "test_loss", "test_accuracy",
                    "test_f1"):
            assert resumed[key] == reference[key], (checkpoint, key)
        assert step_logs(resumed) == step_logs(reference), checkpoint  # each step's loss, norm
        assert sorted(step_logs(resumed)) == list(range(1, 9))
