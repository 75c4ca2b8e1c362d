"""FreezeTrainer on tiny BERT, Llama and GPT-2: what it adds to Trainer, shown by training.

Every test snapshots the weights, trains a few steps under AdamW with weight decay 0.1 and
lr 1e-2, and compares with ``torch.equal`` or inspects ``optimizer.state``.
"""

from __future__ import annotations

import pytest
import torch
from trainer_support import (
    ARCHS,
    RandomTokens,
    Recorder,
    changed,
    is_no_decay_name,
    make_args,
    make_model,
    one_torch_thread,  # noqa: F401
    snapshot,
)
from transformers import TrainerCallback

from freeze_policies import FreezeOptions, FreezePolicyError, FreezeTrainer, get_policy
from freeze_policies.errors import FrozenWeightsMovedError
from freeze_policies.training.modes import FREEZE_MODES
from freeze_policies.training.optim import group_param_names


def make_trainer(arch, tmp_path, policy, model=None, callbacks=(), args=None, **options):
    model = model if model is not None else make_model(arch)
    return FreezeTrainer(
        model=model,
        args=args or make_args(tmp_path),
        train_dataset=RandomTokens(arch),
        callbacks=list(callbacks),
        freeze_policy=policy,
        freeze_options=FreezeOptions(**options),  # the one way to give options
    )


def opened_at(trainer, every):
    """Anatomy group -> first step at which the gradual_unfreeze schedule trains it."""
    callback = trainer.freeze_callback
    first = {}
    for stage in range(callback.policy.num_stages(callback.anat)):
        names = callback.trainable_at(stage)
        for group, members in callback.anat.groups().items():
            if group not in first and set(members) <= names:
                first[group] = stage * every
    return first


# -- 1. optimizer groups: never-trained parameters have no state and no gradient ---------------
@pytest.mark.parametrize("arch", ARCHS)
def test_frozen_params_have_no_optimizer_state_no_grad_and_stay_identical(arch, tmp_path):
    recorder = Recorder()
    trainer = make_trainer(arch, tmp_path, get_policy("bottom_n", n=2), callbacks=[recorder])
    model = trainer.model
    before = snapshot(model)
    metrics = trainer.train().metrics

    trainable = set(trainer.freeze_callback.trainable_at(0))
    params = dict(model.named_parameters())
    frozen = set(params) - trainable
    held = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert frozen and trainable
    assert held == {id(params[n]) for n in trainable}  # never-trained params are not in it
    assert all(names == trainable for names in recorder.grad_names)  # no gradient memory
    assert all(names == trainable for names in recorder.state_names)  # no optimizer state
    after = snapshot(model)
    assert changed(before, after, frozen) == []
    assert set(changed(before, after, trainable)) == trainable
    assert metrics["frozen_audit_passed"] is True
    assert metrics["frozen_audit_checked"] == len(frozen)
    assert trainer.frozen_audit.passed and trainer.frozen_audit.checked == len(frozen)


@pytest.mark.parametrize("arch", ARCHS)
def test_bias_and_norm_weights_get_no_weight_decay(arch, tmp_path):
    trainer = make_trainer(arch, tmp_path, get_policy("embeddings"))
    trainer.create_optimizer()
    anat = trainer.freeze_callback.anat
    for group in trainer.optimizer.param_groups:
        no_decay = [is_no_decay_name(n, anat) for n in group["param_names"]]
        assert all(no_decay) if group["weight_decay"] == 0.0 else not any(no_decay), group["name"]
        assert group["weight_decay"] in (0.0, 0.1)
    assert {g["weight_decay"] for g in trainer.optimizer.param_groups} == {0.0, 0.1}


# -- 2. layer-wise learning rates, with the LR schedule, including groups that open later ------
@pytest.mark.parametrize("arch", ARCHS)
def test_layer_wise_lr_follows_the_schedule_also_for_late_groups(arch, tmp_path):
    recorder = Recorder()
    args = make_args(tmp_path, max_steps=8, lr_scheduler_type="linear", warmup_steps=2)
    policy = get_policy("gradual_unfreeze", every=2, unit="steps")
    trainer = make_trainer(
        arch, tmp_path, policy, callbacks=[recorder], args=args,
        layer_lr_decay=0.5, head_lr_multiplier=4.0,
    )
    trainer.train()
    depth = trainer.freeze_callback.anat.depth
    lr = 1e-2
    expected = {"head": 4 * lr, "embeddings": lr * 0.5**depth}
    expected.update({f"block.{i}": lr * 0.5 ** (depth - 1 - i) for i in range(depth)})
    for group in trainer.optimizer.param_groups:
        assert group["initial_lr"] == pytest.approx(expected[group["name"].split("/")[0]])
    factor = trainer.lr_scheduler.lr_lambdas[0]
    for step, lrs in enumerate(recorder.lrs):
        for name, value in lrs.items():
            assert value == pytest.approx(expected[name.split("/")[0]] * factor(step), rel=1e-6)

    # The block opened at step 6 takes its first AdamW step (|update| = lr for |grad| >> eps)
    # with the lr the schedule reached at step 6, not the initial one.
    top = f"block.{depth - 3}"
    opened = opened_at(trainer, every=2)[top]
    names = [n for n in group_param_names(trainer.optimizer)[f"{top}/decay"]]
    before, after = recorder.snapshots[opened], recorder.snapshots[opened + 1]
    step_size = max((after[n] - before[n]).abs().max().item() for n in names)
    scheduled = expected[top] * factor(opened)
    assert factor(opened) < 0.6  # the schedule has decayed well below the initial lr
    assert step_size == pytest.approx(scheduled, rel=0.02)


@pytest.mark.parametrize("policy", ["embeddings", "bottom_n", "top_n", "all_but_head", "lisa",
                                    "gradual_unfreeze", "bitfit", "norm_only", "custom"])
def test_layer_wise_lr_works_with_every_policy(policy, tmp_path):
    options = {"bottom_n": {"n": 1}, "top_n": {"n": 1}, "custom": {"frozen": [r"embeddings"]},
               "lisa": {"k": 1, "every": 1}, "gradual_unfreeze": {"every": 1, "unit": "steps"}}
    trainer = make_trainer(
        "bert", tmp_path, get_policy(policy, **options.get(policy, {})),
        args=make_args(tmp_path, max_steps=3), layer_lr_decay=1 / 2.6, head_lr_multiplier=2.0,
    )
    before = snapshot(trainer.model)
    assert trainer.train().metrics["frozen_audit_passed"] is True
    ever = trainer.freeze_callback.ever_trainable
    assert set(changed(before, snapshot(trainer.model), before)) <= ever
    for group in trainer.optimizer.param_groups:
        assert group["initial_lr"] > 0


# -- 3. gradual unfreezing and LISA train what they open -------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_gradual_unfreeze_trains_each_block_from_its_stage_on(arch, tmp_path):
    recorder = Recorder()
    policy = get_policy("gradual_unfreeze", every=2, unit="steps")
    trainer = make_trainer(arch, tmp_path, policy, callbacks=[recorder],
                           args=make_args(tmp_path, max_steps=10))
    trainer.train()
    groups = trainer.freeze_callback.anat.groups()
    first = opened_at(trainer, every=2)
    assert sorted(first.values()) == [0, 2, 4, 6, 8]  # head, 3 blocks from the top, embeddings
    snaps = recorder.snapshots  # snaps[t] = weights after t steps
    for group, start in first.items():
        names = groups[group]
        for t in range(1, start + 1):  # not opened yet: bit-identical
            assert changed(snaps[0], snaps[t], names) == [], (group, t)
        for t in range(start + 1, len(snaps)):  # opened: moves at every step from then on
            assert changed(snaps[t - 1], snaps[t], names), (group, t)
    # Optimizer state exists exactly for what has opened so far.
    params = dict(trainer.model.named_parameters())
    for step, names in enumerate(recorder.state_names):
        opened = {n for g, s in first.items() if s <= step for n in groups[g]}
        assert names == opened & set(params), step


@pytest.mark.parametrize("arch", ARCHS)
def test_lisa_closed_blocks_stop_moving_momentum_included(arch, tmp_path):
    recorder = Recorder(states=True)
    policy = get_policy("lisa", k=1, every=2, seed=2)
    model = make_model(arch, layers=4)
    trainer = make_trainer(arch, tmp_path, policy, model=model, callbacks=[recorder],
                           args=make_args(tmp_path, max_steps=12))
    trainer.train()
    anat = trainer.freeze_callback.anat
    sampled = [policy.sampled_blocks(anat, policy.stage_at(t, 0)) for t in range(12)]
    reopened = [b for b in range(4) if _closes_and_reopens(b, sampled)]
    assert reopened, sampled  # the seed makes some block close and open again

    open_steps = {b: 0 for b in range(4)}
    for t in range(12):
        before, after = recorder.snapshots[t], recorder.snapshots[t + 1]
        states_before = recorder.optimizer_states[t - 1] if t else {}
        states_after = recorder.optimizer_states[t]
        for b in range(4):
            names = anat.blocks[b]
            if b in sampled[t]:
                open_steps[b] += 1
                assert changed(before, after, names), (t, b)
                for n in names:  # AdamW's per-parameter step counts only the steps it trained
                    assert int(states_after[n]["step"]) == open_steps[b]
            else:
                assert changed(before, after, names) == [], (t, b)
                for n in names:
                    if n in states_before:  # closed: momentum and second moment untouched
                        for key, value in states_before[n].items():
                            assert torch.equal(states_after[n][key], value), (t, b, n, key)
    always = set(anat.embeddings) | set(anat.head)
    for t in range(12):
        assert set(changed(recorder.snapshots[t], recorder.snapshots[t + 1], always)) == always


def _closes_and_reopens(block, sampled):
    seen = "".join("1" if block in s else "0" for s in sampled)
    return "10" in seen and "01" in seen[seen.index("10"):]


# -- 4. frozen means bit-identical: the audit fails loudly -----------------------------------
class MoveAFrozenWeight(TrainerCallback):
    def __init__(self, name):
        self.name = name

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 2:
            with torch.no_grad():
                dict(model.named_parameters())[self.name].add_(1e-3)


@pytest.mark.parametrize("arch", ARCHS)
def test_audit_raises_when_a_frozen_weight_moved(arch, tmp_path):
    model = make_model(arch)
    victim = next(n for n, _ in model.named_parameters())  # an embedding: frozen by bottom_n
    trainer = make_trainer(arch, tmp_path, get_policy("bottom_n", n=1), model=model,
                           callbacks=[MoveAFrozenWeight(victim)])
    message = rf"1 of \d+ frozen parameters moved.*{victim}"
    with pytest.raises(FrozenWeightsMovedError, match=message):
        trainer.train()
    assert trainer.frozen_audit.moved == [victim]
    assert trainer.frozen_audit.max_abs_diff == pytest.approx(1e-3, rel=1e-2)
    last = trainer.state.log_history[-1]
    assert last["frozen_audit_passed"] is False and last["frozen_audit_moved"] == 1


def test_audit_log_mode_reports_without_raising(tmp_path, caplog):
    model = make_model("bert")
    victim = next(n for n, _ in model.named_parameters())
    trainer = make_trainer("bert", tmp_path, get_policy("bottom_n", n=1), model=model,
                           callbacks=[MoveAFrozenWeight(victim)], audit="log")
    with caplog.at_level("ERROR", logger="freeze_policies"):
        metrics = trainer.train().metrics
    assert metrics["frozen_audit_passed"] is False and metrics["frozen_audit_moved"] == 1
    assert any(victim in r.message and r.levelname == "ERROR" for r in caplog.records)


def test_audit_off_checks_nothing(tmp_path):
    trainer = make_trainer("bert", tmp_path, get_policy("bottom_n", n=1), audit="off")
    metrics = trainer.train().metrics
    assert "frozen_audit_passed" not in metrics and trainer.frozen_audit is None
    assert metrics["optimizer_state_bytes"] > 0


# -- 5. freeze modes: same policy, same audit, different costs -------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_freeze_modes_audit_and_cost(arch, tmp_path):
    results, models = {}, {}
    for mode in FREEZE_MODES:
        trainer = make_trainer(arch, tmp_path / mode, get_policy("bottom_n", n=2),
                               freeze_mode=mode, audit="log")
        before = snapshot(trainer.model)
        results[mode] = trainer.train().metrics
        models[mode] = (before, snapshot(trainer.model), trainer)
    grad, lr0, zero = (results[m] for m in FREEZE_MODES)
    trainable = models["requires_grad"][2].freeze_callback.trainable_at(0)
    params = dict(models["requires_grad"][2].model.named_parameters())
    trained_numel = sum(params[n].numel() for n in trainable)
    all_numel = sum(p.numel() for p in params.values())

    # requires_grad: AdamW keeps two fp32 moments and a step counter per trained tensor only.
    assert grad["frozen_audit_passed"] and grad["frozen_audit_moved"] == 0
    assert grad["optimizer_state_bytes"] == 8 * trained_numel + 4 * len(trainable)
    assert grad["gradient_bytes"] == 4 * trained_numel
    # zero_lr: frozen weights stay identical (AdamW's decoupled decay p*(1 - 0*wd) is exactly p)
    # but every parameter has a gradient and optimizer state.
    assert lr0["frozen_audit_passed"] and lr0["frozen_audit_moved"] == 0
    assert lr0["gradient_bytes"] == 4 * all_numel
    assert lr0["optimizer_state_bytes"] == 8 * all_numel + 4 * len(params)
    frozen_groups = [g for g in models["zero_lr"][2].optimizer.param_groups
                     if g["name"].startswith("frozen/")]
    assert frozen_groups and all(g["lr"] == 0.0 for g in frozen_groups)
    assert 0.1 in {g["weight_decay"] for g in frozen_groups}  # the blog's decay is kept
    # zero_grad: gradients zeroed, but weight decay still moves the "frozen" weights.
    assert zero["frozen_audit_passed"] is False and zero["frozen_audit_moved"] > 0
    assert zero["gradient_bytes"] == 4 * all_numel
    assert zero["optimizer_state_bytes"] == lr0["optimizer_state_bytes"]
    before, after, trainer = models["zero_grad"]
    frozen = set(params) - trainable
    moved = set(changed(before, after, frozen))
    decayed = {n for n in frozen if n in {x for g in trainer.optimizer.param_groups
                                          if g["weight_decay"] > 0 for x in g["param_names"]}}
    assert moved == decayed  # exactly the frozen tensors that get weight decay moved


def test_zero_grad_mode_raises_by_default_under_weight_decay(tmp_path):
    trainer = make_trainer("bert", tmp_path, get_policy("bottom_n", n=2), freeze_mode="zero_grad")
    with pytest.raises(FrozenWeightsMovedError, match="freeze_mode='zero_grad'"):
        trainer.train()


def test_zero_grad_mode_passes_without_weight_decay(tmp_path):
    trainer = make_trainer("bert", tmp_path, get_policy("bottom_n", n=2), freeze_mode="zero_grad",
                           args=make_args(tmp_path, weight_decay=0.0))
    assert trainer.train().metrics["frozen_audit_passed"] is True


# -- 6. gradient checkpointing with frozen embeddings ----------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("reentrant", [True, False])
def test_gradient_checkpointing_with_frozen_embeddings_trains(arch, reentrant, tmp_path):
    args = make_args(tmp_path, gradient_checkpointing=True,
                     gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    trainer = make_trainer(arch, tmp_path, get_policy("bottom_n", n=1), args=args)
    before = snapshot(trainer.model)
    assert trainer.train().metrics["frozen_audit_passed"] is True
    anat = trainer.freeze_callback.anat
    after = snapshot(trainer.model)
    for block in anat.blocks[1:]:
        assert set(changed(before, after, block)) == set(block)
    assert changed(before, after, anat.embeddings + anat.blocks[0]) == []


@pytest.mark.parametrize("arch", ARCHS)
def test_checkpointing_without_input_grad_hook_is_repaired(arch, tmp_path):
    """A model checkpointed with reentrant checkpointing but without transformers' input-grad
    hook trains nothing below the head in a plain Trainer; FreezeTrainer repairs it."""
    trained = {}
    for repaired in (False, True):
        model = make_model(arch)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        model.disable_input_require_grads()
        policy = get_policy("bottom_n", n=1)
        if repaired:
            trainer = make_trainer(arch, tmp_path, policy, model=model)
        else:
            policy.apply(model)
            from transformers import Trainer

            trainer = Trainer(model=model, args=make_args(tmp_path),
                              train_dataset=RandomTokens(arch))
        before = snapshot(model)
        trainer.train()
        anat = policy.anatomy(model)
        trained[repaired] = changed(before, snapshot(model), anat.blocks[-1])
    assert trained[False] == []  # the bug: the top block silently trains nothing
    assert trained[True]


# -- 7. resume in the middle of a schedule ends with the same weights ------------------------
RESUME_POLICIES = {
    "gradual_unfreeze": dict(every=2, unit="steps"),
    "lisa": dict(k=1, every=2, seed=1),
}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", list(RESUME_POLICIES))
def test_resume_mid_schedule_matches_the_uninterrupted_run(arch, name, tmp_path):
    args = make_args(tmp_path, max_steps=8, save_strategy="steps", save_steps=3)
    full = make_trainer(arch, tmp_path, get_policy(name, **RESUME_POLICIES[name]), args=args,
                        layer_lr_decay=0.8)
    full.train()
    final, final_state = snapshot(full.model), _named_state(full)

    resumed = make_trainer(arch, tmp_path, get_policy(name, **RESUME_POLICIES[name]),
                           model=make_model(arch, seed=123), args=args, layer_lr_decay=0.8)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    assert resumed.freeze_callback.resumed_stage == full.freeze_callback.policy.stage_at(2, 0)
    assert changed(final, snapshot(resumed.model), final) == []
    resumed_state = _named_state(resumed)
    assert resumed_state.keys() == final_state.keys()
    for param, values in final_state.items():
        for key, value in values.items():
            assert torch.equal(resumed_state[param][key], value), (param, key)


def _named_state(trainer):
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    return {names[id(p)]: dict(s) for p, s in trainer.optimizer.state.items() if s}


def test_resume_by_epochs_restores_the_saved_stage(tmp_path):
    # 8 steps per epoch: the checkpoint at step 10 is a quarter into epoch 1, in stage 1.
    args = make_args(tmp_path, max_steps=20, save_strategy="steps", save_steps=10)
    policy = dict(name="gradual_unfreeze", every=1, unit="epochs")
    full = make_trainer("bert", tmp_path, policy, args=args)
    full.train()
    assert [e["step"] for e in full.state.log_history if "freeze_stage" in e] == [0, 8, 16]
    resumed = make_trainer("bert", tmp_path, policy, model=make_model("bert", seed=5), args=args)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-10"))
    assert resumed.freeze_callback.resumed_stage == 1
    final = snapshot(full.model)
    assert changed(final, snapshot(resumed.model), final) == []


def test_resume_checks_the_stage_saved_in_the_checkpoint(tmp_path):
    import json

    args = make_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    policy = dict(name="gradual_unfreeze", every=100, unit="steps")  # stage 0 throughout
    make_trainer("bert", tmp_path, policy, args=args).train()
    state_file = tmp_path / "checkpoint-2" / "trainer_state.json"
    saved = json.loads(state_file.read_text())
    assert saved["stateful_callbacks"]["FreezeScheduleCallback"]["attributes"]["stage"] == 0
    saved["stateful_callbacks"]["FreezeScheduleCallback"]["attributes"]["stage"] = 2
    state_file.write_text(json.dumps(saved))

    resumed = make_trainer("bert", tmp_path, policy, args=args)
    with pytest.raises(FreezePolicyError, match="saved in stage 2, but 'gradual_unfreeze' puts"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


def test_resume_with_another_policy_is_refused(tmp_path):
    args = make_args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
    make_trainer("bert", tmp_path, dict(name="lisa", k=1, every=2), args=args).train()
    resumed = make_trainer("bert", tmp_path, dict(name="lisa", k=1, every=3), args=args)
    with pytest.raises(FreezePolicyError,
                       match=r"was trained with policy lisa \{.*\"every\": 2.*\}, this run has "
                             r"lisa \{.*\"every\": 3.*\}: resume with the checkpoint's policy"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-2"))


def test_resume_with_restored_callback_states(tmp_path):
    """``restore_callback_states_from_checkpoint=True`` makes Trainer rebuild the callback from
    its saved arguments; the trainer still finds it and the resumed run still matches."""
    args = make_args(tmp_path, max_steps=6, save_strategy="steps", save_steps=3,
                     restore_callback_states_from_checkpoint=True)
    policy = dict(name="gradual_unfreeze", every=2, unit="steps")
    full = make_trainer("llama", tmp_path, policy, args=args)
    full.train()
    resumed = make_trainer("llama", tmp_path, policy, args=args, model=make_model("llama", seed=9))
    original = resumed.freeze_callback
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    assert resumed.freeze_callback is not original and resumed.frozen_audit.passed
    final = snapshot(full.model)
    assert changed(final, snapshot(resumed.model), final) == []


# -- optim= keeps working ----------------------------------------------------------------------
def test_trainer_optim_argument_is_honoured(tmp_path):
    trainer = make_trainer("gpt2", tmp_path, get_policy("top_n", n=1),
                           args=make_args(tmp_path, optim="sgd"), layer_lr_decay=0.5)
    trainer.train()
    assert isinstance(trainer.optimizer.optimizer, torch.optim.SGD)
    assert trainer.frozen_audit.passed


def test_user_optimizer_missing_a_stage_is_refused(tmp_path):
    model = make_model("bert")
    head_only = [p for n, p in model.named_parameters() if "classifier" in n or "pooler" in n]
    trainer = make_trainer("bert", tmp_path, dict(name="gradual_unfreeze", every=1, unit="steps"),
                           model=model)
    trainer.optimizer = torch.optim.AdamW(head_only, lr=1e-2)
    message = "stage 1 of 'gradual_unfreeze' trains .* the optimizer does not hold"
    with pytest.raises(FreezePolicyError, match=message):
        trainer.train()


# -- tied weights: one tensor, one optimizer slot ------------------------------------------------
def test_tied_embeddings_train_once_or_are_refused(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model("gpt2", n_embd=32, n_layer=3, n_head=2, vocab_size=99,
                                  bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with pytest.raises(FreezePolicyError, match="same tensor \\(tied weights\\)"):
        make_trainer("llama", tmp_path, dict(name="gradual_unfreeze"), model=model)
    trainer = make_trainer("llama", tmp_path, model=model, policy=dict(
        name="gradual_unfreeze", every=1, unit="steps", tied_weights="train"))
    before = snapshot(model)
    trainer.train()
    held = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    assert len(held) == len({id(p) for p in held}) == len(list(model.parameters()))
    assert changed(before, snapshot(model), ["transformer.wte.weight"])
    assert model.lm_head.weight is model.transformer.wte.weight


def test_schedule_counts_optimizer_steps_under_gradient_accumulation(tmp_path):
    recorder = Recorder()
    policy = get_policy("gradual_unfreeze", every=2, unit="steps")
    trainer = make_trainer("gpt2", tmp_path, policy, callbacks=[recorder],
                           args=make_args(tmp_path, max_steps=6, gradient_accumulation_steps=2))
    trainer.train()
    stages = [e for e in trainer.state.log_history if "freeze_stage" in e]
    assert [(e["freeze_stage"], e["step"]) for e in stages] == [(0, 0), (1, 2), (2, 4)]
    callback = trainer.freeze_callback
    for step, names in enumerate(recorder.grad_names):
        assert names == callback.trainable_at(step // 2), step


def test_test_cases_build_and_run():
    for arch in ARCHS:
        model = make_model(arch)
        batch = RandomTokens(arch, n=2)[0]
        out = model(input_ids=batch["input_ids"][None], labels=batch["labels"][None])
        assert torch.isfinite(out.loss)
