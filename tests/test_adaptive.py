"""auto_freeze: the criterion, its decisions in training, and the invariants schedules keep."""

from __future__ import annotations

import json

import pytest
import torch
from trainer_support import (
    RandomTokens,
    Recorder,
    make_args,
    make_model,
    one_torch_thread,  # noqa: F401
    snapshot,
)

from freeze_policies import FreezeOptions, FreezePolicyError, FreezeTrainer, anatomy, get_policy
from freeze_policies.policies.adaptive import AutoFreezeController, decide, percentile


def policy(**options):
    return get_policy("auto_freeze", **options)


# -- the criterion ------------------------------------------------------------------------------
def test_percentile_interpolates_like_numpy():
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.5
    assert percentile([3.0, 1.0, 2.0, 4.0], 0) == 1.0
    assert percentile([3.0, 1.0, 2.0, 4.0], 100) == 4.0
    assert percentile([5.0], 30) == 5.0


@pytest.mark.parametrize("rates,options,depth,expected", [
    ({0: 0.01, 1: 0.5, 2: 0.4, 3: 0.3}, {}, 0, 1),           # lowest block ranks low: freezes
    ({0: 0.9, 1: 0.5, 2: 0.4, 3: 0.3}, {}, 0, 0),            # lowest block still changing
    ({0: 0.01, 1: 0.02, 2: 0.4, 3: 0.3}, {"max_per_decision": 3}, 0, 2),  # bottom-up, stops at 2
    ({0: 0.01, 1: 0.02, 2: 0.4, 3: 0.3}, {}, 0, 1),          # one block per decision by default
    ({1: 0.01, 2: 0.5, 3: 0.4}, {}, 1, 2),                    # continues from the current depth
    ({3: 0.0}, {}, 3, 3),                                     # the floor: one block keeps training
    ({0: 0.2, 1: 0.5, 2: 0.4, 3: 0.3}, {"max_change": 0.1}, 0, 0),  # ranked low but above the cap
])
def test_decide(rates, options, depth, expected):
    assert decide(policy(**options), depth, 3, rates) == expected


def test_a_block_whose_gradient_stops_changing_freezes_and_the_others_do_not():
    """Constructed gradients: block 0's norm is the same in both windows, the others' double."""
    model = make_model("bert", layers=4)
    anat = anatomy(model)
    controller = AutoFreezeController(policy(every=3, percentile=0.0, max_per_decision=4), anat)
    params = dict(model.named_parameters())

    def set_grads(scale_of_block):
        for index, names in enumerate(anat.blocks):
            for name in names:
                params[name].grad = torch.full_like(params[name], scale_of_block(index))

    decisions = []
    for window in range(2):
        for _ in range(3):
            set_grads(lambda i, w=window: 1.0 if i == 0 else 1.0 + w)
            controller.observe(model)
            decisions.append(controller.end_of_step(len(decisions) + 1))
    assert decisions == [None] * 5 + [1]  # block 0 froze at the end of the second window
    record = controller.decisions[-1]
    assert record["auto_freeze_depth"] == 1 and record["step"] == 6
    assert record["auto_freeze_rates"]["0"] == 0.0
    assert all(record["auto_freeze_rates"][str(i)] == 1.0 for i in (1, 2, 3))


@pytest.mark.parametrize("options,message", [
    ({"unit": "epochs"}, "auto_freeze: unit='epochs' is not supported"),
    ({"percentile": 120}, r"auto_freeze: percentile=120 must be a number in \[0, 100\]"),
    ({"max_change": -1}, "auto_freeze: max_change=-1 must be a number >= 0 or None"),
    ({"min_trainable_blocks": 0}, "auto_freeze: min_trainable_blocks=0 must be an integer >= 1"),
    ({"max_per_decision": "2"}, "auto_freeze: max_per_decision='2' must be an integer >= 1"),
    ({"every": 0}, "auto_freeze: every=0 must be an integer > 0"),
])
def test_bad_options_are_one_line_errors(options, message):
    with pytest.raises(FreezePolicyError, match=message):
        policy(**options)


def test_options_that_do_not_fit_the_model_are_refused_when_bound():
    with pytest.raises(FreezePolicyError, match="min_trainable_blocks=4 is larger than the depth"):
        FreezeTrainer(model=make_model("bert"), args=make_args("/tmp/unused"),
                      freeze_policy=policy(min_trainable_blocks=4))


def test_stages_are_frozen_prefixes_and_never_the_head():
    model = make_model("bert", layers=3)
    anat = anatomy(model)
    auto = policy()
    assert auto.trainable_names(anat, 0) == frozenset(anat.names())
    for depth in (1, 2):
        names = auto.trainable_names(anat, depth)
        assert not names & set(anat.embeddings)
        for index, block in enumerate(anat.blocks):
            assert (set(block) <= names) == (index >= depth)
        assert set(anat.head) <= names
    assert auto.num_stages(anat) == 3  # depth 0, 1, 2: one block always trains


# -- in training --------------------------------------------------------------------------------
def train(tmp_path, arch="bert", steps=12, recorder=None, **options):
    model = make_model(arch, layers=3)
    callbacks = [recorder] if recorder else []
    trainer = FreezeTrainer(
        model=model, args=make_args(tmp_path, max_steps=steps), train_dataset=RandomTokens(arch),
        freeze_policy=policy(every=2, percentile=100.0, **options), callbacks=callbacks,
    )
    trainer.train()
    return trainer


@pytest.mark.parametrize("arch", ["bert", "llama", "gpt2"])
def test_frozen_blocks_stay_bit_identical_from_the_step_they_froze(tmp_path, arch):
    """percentile=100: the lowest trainable block freezes at every decision (steps 4, 6)."""
    recorder = Recorder(states=True)
    kwargs = {"tied_weights": "freeze"} if arch == "llama" else {}
    trainer = train(tmp_path, arch, recorder=recorder, **kwargs)
    history = trainer.state.log_history
    stages = [(e["step"], e["freeze_stage"]) for e in history if "freeze_stage" in e]
    assert stages == [(0, 0), (4, 1), (6, 2)]
    anat = trainer.freeze_callback.anat
    snaps = recorder.snapshots  # snaps[k]: after k optimizer steps
    for step, depth in ((4, 1), (6, 2)):
        frozen = [n for i in range(depth) for n in anat.blocks[i]] + list(anat.embeddings)
        for name in frozen:
            assert torch.equal(snaps[step][name], snaps[-1][name]), name
            # and they had trained before
        assert any(not torch.equal(snaps[0][n], snaps[step][n]) for n in anat.blocks[depth - 1])
        # no gradient reaches them after they froze
        for grads in recorder.grad_names[step:]:
            assert not grads & set(frozen)
        # their optimizer state stops moving too
        states = recorder.optimizer_states
        for name in anat.blocks[depth - 1]:
            assert torch.equal(states[step - 1][name]["exp_avg"], states[-1][name]["exp_avg"])
    assert trainer.frozen_audit.passed
    # the audit checked the blocks frozen during training, not only those frozen at the start
    assert trainer.frozen_audit.checked >= len(anat.blocks[0]) + len(anat.blocks[1])


def test_the_optimizer_holds_every_parameter_and_the_lr_schedule_runs_on(tmp_path):
    recorder = Recorder()
    trainer = train(tmp_path, recorder=recorder)
    held = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for p in trainer.model.parameters()}
    lrs = [max(step.values()) for step in recorder.lrs]
    assert lrs == sorted(lrs, reverse=True) and lrs[0] > lrs[-1]  # linear decay, uninterrupted


def test_decisions_land_in_log_history(tmp_path):
    trainer = train(tmp_path)
    decisions = [e for e in trainer.state.log_history if "auto_freeze_depth" in e]
    assert [(e["step"], e["auto_freeze_depth"]) for e in decisions] == [
        (4, 1), (6, 2), (8, 2), (10, 2), (12, 2)
    ]
    assert set(decisions[0]["auto_freeze_rates"]) == {"0", "1", "2"}
    assert set(decisions[-1]["auto_freeze_rates"]) == {"2"}
    json.dumps(trainer.state.log_history)  # results.json can hold them


def test_the_floor_keeps_blocks_training(tmp_path):
    trainer = train(tmp_path, min_trainable_blocks=2)
    stages = [e["freeze_stage"] for e in trainer.state.log_history if "freeze_stage" in e]
    assert stages == [0, 1]


def test_initial_depth_starts_from_a_frozen_prefix(tmp_path):
    trainer = train(tmp_path, initial_depth=1, steps=2)
    anat = trainer.freeze_callback.anat
    assert not any(p.requires_grad for n, p in trainer.model.named_parameters()
                   if n in anat.blocks[0])


def test_a_second_train_call_starts_a_new_series_of_decisions(tmp_path):
    trainer = train(tmp_path)
    trainer.train()  # trains everything again, from the weights the first call left
    decisions = trainer.freeze_callback.controller.decisions
    assert [(e["step"], e["auto_freeze_depth"]) for e in decisions] == [
        (4, 1), (6, 2), (8, 2), (10, 2), (12, 2)
    ]
    stages = [e["freeze_stage"] for e in trainer.state.log_history if "freeze_stage" in e]
    assert stages == [0, 1, 2]


def test_the_prefix_cache_deepens_with_each_freeze_and_replays_later(tmp_path):
    model = make_model("bert", layers=3)
    trainer = FreezeTrainer(
        model=model,
        args=make_args(tmp_path, max_steps=-1, num_train_epochs=6, per_device_train_batch_size=8),
        train_dataset=RandomTokens("bert", n=16),
        freeze_policy=policy(every=2, percentile=100.0),
            freeze_options=FreezeOptions(cache_frozen_prefix=True),
    )
    trainer.train()
    cache = trainer.prefix_cache
    assert cache.depth == 2  # two blocks frozen (steps 4 and 6), one still training
    assert cache.stats["rebuilds"] == 1  # one depth change: 1 -> 2
    # epoch 4 built depth 2 from depth 1's states (block 1 only), not from the embeddings
    assert cache.stats["rows_deepened"] == 16 and cache.stats["rows_filled"] == 32
    assert cache.stats["hits"] == 4  # epochs 5 and 6 replayed the deeper prefix
    assert trainer.frozen_audit.passed


def test_resume_mid_schedule_takes_the_same_decisions(tmp_path):
    common = dict(max_steps=10, save_strategy="steps", save_steps=5)

    def trainer(folder, seed):
        return FreezeTrainer(
            model=make_model("bert", layers=3, seed=seed),
            args=make_args(tmp_path / folder, **common),
            train_dataset=RandomTokens("bert"),
            freeze_policy=policy(every=2, percentile=60.0),
        )

    full = trainer("full", 0)
    full.train()
    resumed = trainer("full", 7)  # another init: the checkpoint must bring everything back
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-5"))
    decisions = [e for e in full.state.log_history if "auto_freeze_depth" in e]
    assert resumed.freeze_callback.controller.decisions == decisions
    final, again = snapshot(full.model), snapshot(resumed.model)
    assert [n for n in final if not torch.equal(final[n], again[n])] == []


def test_resume_at_a_decision_step_starts_at_the_decided_depth(tmp_path):
    """A decision at the checkpoint's step applies from the next step, the resumed run's first:
    it starts (and says it starts) at that depth, not at the one the saved step ran in."""
    common = dict(max_steps=4, save_strategy="steps", save_steps=2)

    def trainer(seed):
        return FreezeTrainer(
            model=make_model("bert", layers=3, seed=seed),
            args=make_args(tmp_path / "run", **common),
            train_dataset=RandomTokens("bert"),
            freeze_policy=policy(every=1, percentile=100.0),  # a block more at every decision
        )

    full = trainer(0)
    full.train()
    at_checkpoint = next(e["auto_freeze_depth"] for e in full.state.log_history
                         if e.get("step") == 2 and "auto_freeze_depth" in e)
    assert at_checkpoint == 1  # step 2 ran at depth 0 and decided depth 1
    resumed = trainer(7)
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    stages = [e for e in resumed.state.log_history
              if e.get("schedule_event") == "stage" and e["step"] >= 2]
    assert [e["freeze_stage"] for e in stages] == [1]  # was [0] then a silent switch to 1
    final, again = snapshot(full.model), snapshot(resumed.model)
    assert [n for n in final if not torch.equal(final[n], again[n])] == []
