"""auto_freeze's second criterion, param_change: constructed cases, its estimate, and training."""

from __future__ import annotations

import json

import pytest
import torch
from trainer_support import (
    RandomTokens,
    make_args,
    make_model,
    one_torch_thread,  # noqa: F401
    snapshot,
)

from freeze_policies import FreezePolicyError, FreezeTrainer, anatomy, get_policy
from freeze_policies.policies.adaptive import AutoFreezeController, decide


def policy(**options):
    return get_policy("auto_freeze", criterion="param_change", **options)


def drive(controller, model, anat, moving, windows, every):
    """Run ``windows`` windows by hand: at each step the blocks ``moving(window)`` names are
    moved by 0.01 per entry, the others are left alone. Returns end_of_step's answers."""
    params = dict(model.named_parameters())
    answers = []
    for window in range(windows):
        for _ in range(every):
            controller.observe(model)
            with torch.no_grad():
                for index in moving(window):
                    for name in anat.blocks[index]:
                        params[name].add_(0.01)
            answers.append(controller.end_of_step(len(answers) + 1, model))
    return answers


def test_a_block_made_to_stop_changing_is_chosen_and_one_still_changing_is_not():
    model = make_model("bert", layers=4)
    anat = anatomy(model)
    controller = AutoFreezeController(policy(every=3, threshold=1e-4, max_per_decision=4), anat)
    # window 0: every block moves; window 1: block 0 stops, 1..3 keep moving
    answers = drive(controller, model, anat, lambda w: range(4) if w == 0 else range(1, 4), 2, 3)
    assert answers == [None, None, None, None, None, 1]
    first, second = controller.decisions
    assert first["step"] == 3 and first["auto_freeze_depth"] == 0  # decides after one window
    assert all(rate > 1e-4 for rate in first["auto_freeze_rates"].values())
    assert second["auto_freeze_rates"]["0"] == 0.0
    assert all(second["auto_freeze_rates"][str(i)] > 1e-4 for i in (1, 2, 3))


def test_a_still_block_above_a_moving_one_waits_bottom_up():
    model = make_model("bert", layers=4)
    anat = anatomy(model)
    controller = AutoFreezeController(policy(every=2, threshold=1e-4, max_per_decision=4), anat)
    answers = drive(controller, model, anat, lambda w: [0, 3], 2, 2)  # 1 and 2 never move
    assert answers == [None] * 4
    assert controller.decisions[-1]["auto_freeze_rates"]["1"] == 0.0
    # then block 0 stops too: 0, 1 and 2 freeze together, 3 (still moving) does not
    assert drive(controller, model, anat, lambda w: [3], 1, 2) == [None, 3]


def test_the_sampled_estimate_tracks_the_exact_relative_update():
    model = make_model("bert", layers=3, seed=1)
    anat = anatomy(model)
    controller = AutoFreezeController(policy(every=1, threshold=1e-3), anat)
    params = dict(model.named_parameters())
    before = snapshot(model)
    controller.observe(model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for index, names in enumerate(anat.blocks):
            for name in names:
                params[name].add_(torch.randn(params[name].shape, generator=generator)
                                  * 0.001 * (index + 1))
    rates = controller.relative_updates(model)
    for index, names in enumerate(anat.blocks):
        moved = sum(float((params[n].detach() - before[n]).pow(2).sum()) for n in names) ** 0.5
        size = sum(float(before[n].pow(2).sum()) for n in names) ** 0.5
        assert rates[index] == pytest.approx(moved / size, rel=0.1), index


def test_decide_uses_the_threshold_bottom_up():
    auto = policy(threshold=0.01, max_per_decision=3)
    assert decide(auto, 0, 3, {0: 0.001, 1: 0.009, 2: 0.5, 3: 0.0}) == 2
    assert decide(auto, 0, 3, {0: 0.02, 1: 0.0, 2: 0.0, 3: 0.0}) == 0


@pytest.mark.parametrize("options,message", [
    ({"criterion": "plasticity"},
     "auto_freeze: criterion='plasticity' is not one of grad_norm_rate, param_change"),
    ({"criterion": "param_change", "threshold": -1},
     "auto_freeze: threshold=-1 must be a number >= 0 or None"),
    ({"threshold": 0.01}, "auto_freeze: threshold=0.01 belongs to criterion='param_change'"),
    ({"criterion": "param_change"},
     r"auto_freeze: criterion='param_change' needs threshold= \(the largest relative update per "
     r"window"),
    ({"criterion": "param_change", "threshold": 0.01, "max_change": 0.1},
     "auto_freeze: max_change=0.1 belongs to criterion='grad_norm_rate'"),
])
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(FreezePolicyError, match=message):
        get_policy("auto_freeze", **options)


def test_end_of_step_without_the_model_says_what_is_missing():
    model = make_model("bert")
    controller = AutoFreezeController(policy(every=1, threshold=1e-3), anatomy(model))
    controller.observe(model)
    with pytest.raises(FreezePolicyError, match="pass the model to AutoFreezeController"):
        controller.end_of_step(1)


# -- in training --------------------------------------------------------------------------------
def trainer(folder, seed=0, **args):
    return FreezeTrainer(
        model=make_model("bert", layers=3, seed=seed), args=make_args(folder, **args),
        train_dataset=RandomTokens("bert"),
        freeze_policy=policy(every=3, threshold=10.0, max_per_decision=1),
    )


def test_in_training_it_decides_after_the_first_window_and_logs_its_rates(tmp_path):
    run = trainer(tmp_path, max_steps=9)
    run.train()
    decisions = [e for e in run.state.log_history if "auto_freeze_depth" in e]
    assert [(e["step"], e["auto_freeze_depth"]) for e in decisions] == [(3, 1), (6, 2), (9, 2)]
    assert set(decisions[0]["auto_freeze_rates"]) == {"0", "1", "2"}
    assert all(0 < rate < 10 for rate in decisions[0]["auto_freeze_rates"].values())
    assert run.frozen_audit.passed
    json.dumps(run.state.log_history)


def test_resume_mid_window_takes_the_same_decisions_and_ends_on_the_same_weights(tmp_path):
    common = dict(max_steps=10, save_strategy="steps", save_steps=4)  # step 4: inside window 2
    full = trainer(tmp_path / "full", **common)
    full.train()
    saved = json.loads((tmp_path / "full" / "checkpoint-4" / "trainer_state.json").read_text())
    kept = saved["stateful_callbacks"]["FreezeScheduleCallback"]["attributes"]["auto_freeze"]
    assert kept["window_steps"] == 1 and set(kept["reference"]) == {"1", "2"}
    resumed = trainer(tmp_path / "full", seed=7, **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-4"))
    decisions = [e for e in full.state.log_history if "auto_freeze_depth" in e]
    assert resumed.freeze_callback.controller.decisions == decisions
    final, again = snapshot(full.model), snapshot(resumed.model)
    assert [n for n in final if not torch.equal(final[n], again[n])] == []
