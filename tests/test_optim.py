"""Optimizer groups (no training) and every bad input of the trainer, callback and optimizer."""

from __future__ import annotations

import pytest
import torch
from trainer_support import (
    ARCHS,
    RandomTokens,
    make_args,
    make_model,
    one_torch_thread,  # noqa: F401
)
from transformers import Trainer

from freeze_policies import (
    FreezeOptions,
    FreezePolicyError,
    FreezeScheduleCallback,
    FreezeTrainer,
    get_policy,
)
from freeze_policies.policies.base import ever_trainable_names
from freeze_policies.training.modes import optimizer_membership
from freeze_policies.training.optim import (
    _check_coverage,
    build_param_groups,
    create_optimizer,
    decay_parameter_names,
    group_param_names,
)
from freeze_policies.training.resume import check_saved_names


@pytest.mark.parametrize("arch", ARCHS)
def test_decay_rule_matches_trainer(arch, tmp_path):
    model = make_model(arch)
    trainer = Trainer(model=model, args=make_args(tmp_path))
    assert decay_parameter_names(model) == set(trainer.get_decay_parameter_names(model))
    anat = get_policy("embeddings").anatomy(model)
    trainers = set(trainer.get_decay_parameter_names(model))
    assert decay_parameter_names(model, anat) == trainers - set(anat.norms)


@pytest.mark.parametrize("arch", ARCHS)
def test_groups_layer_wise_lr_order_and_coverage(arch):
    model = make_model(arch, layers=4)
    policy = get_policy("embeddings")
    anat = policy.anatomy(model)
    trainable = policy.trainable_names(anat)
    groups = build_param_groups(model, trainable, lr=1.0, weight_decay=0.1, anat=anat,
                                layer_lr_decay=0.5, head_lr_multiplier=3.0)
    sections = list(dict.fromkeys(g["name"].split("/")[0] for g in groups))
    assert sections == ["head", "block.3", "block.2", "block.1", "block.0"]  # ULMFiT order
    lr = {g["name"].split("/")[0]: g["lr"] for g in groups}
    assert lr == {"head": 3.0, "block.3": 1.0, "block.2": 0.5, "block.1": 0.25, "block.0": 0.125}
    held = [n for g in groups for n in g["param_names"]]
    assert sorted(held) == sorted(trainable)
    assert all(g["initial_lr"] == g["lr"] for g in groups)

    everything = build_param_groups(model, anat.names(), lr=1.0, weight_decay=0.0, anat=anat,
                                    layer_lr_decay=0.5)
    lr = {g["name"].split("/")[0]: g["lr"] for g in everything}
    assert lr["embeddings"] == 0.5**4


def test_groups_are_deterministic_across_models():
    policy = get_policy("lisa", k=2)

    def layout(seed):
        model = make_model("llama", layers=4, seed=seed)
        anat = policy.anatomy(model)
        return [(g["name"], g["param_names"]) for g in build_param_groups(
            model, ever_trainable_names(policy, anat), lr=1.0, weight_decay=0.1, anat=anat)]

    assert layout(0) == layout(1)


def test_coverage_check_is_an_assertion():
    model = make_model("bert")
    groups = build_param_groups(model, [n for n, _ in model.named_parameters()], lr=1.0,
                                weight_decay=0.0)
    assert [g["name"] for g in groups] == ["trainable/decay", "trainable/no_decay"]
    params = dict(model.named_parameters())
    groups[0]["param_names"].append(groups[1]["param_names"][0])
    groups[0]["params"].append(groups[1]["params"][0])
    with pytest.raises(AssertionError, match="exactly once"):
        _check_coverage(groups, set(params), params)


def test_ever_trainable_names():
    model = make_model("gpt2")
    anat = get_policy("embeddings").anatomy(model)
    everything = set(anat.names())
    bottom = get_policy("bottom_n", n=1)
    assert ever_trainable_names(bottom, anat) == bottom.trainable_names(anat)
    assert ever_trainable_names(get_policy("gradual_unfreeze"), anat) == everything
    assert ever_trainable_names(get_policy("lisa", k=1), anat) == everything


def test_membership_per_freeze_mode():
    model = make_model("bert")
    policy = get_policy("bottom_n", n=2)
    anat = policy.anatomy(model)
    trainable = set(policy.trainable_names(anat))
    every = {n for n, _ in model.named_parameters()}
    assert optimizer_membership(model, policy, anat, "requires_grad") == {"trainable": trainable}
    zero_lr = optimizer_membership(model, policy, anat, "zero_lr")
    assert zero_lr["trainable"] == trainable and set(zero_lr["zero_lr_names"]) == every - trainable
    assert optimizer_membership(model, policy, anat, "zero_grad") == {"trainable": every}


def test_create_optimizer_uses_trainer_optimizer_choice(tmp_path):
    model = make_model("bert")
    args = make_args(tmp_path, optim="adafactor", learning_rate=1e-3)
    optimizer = create_optimizer(model, args, {"name": "top_n", "n": 1}, head_lr_multiplier=10)
    assert type(optimizer).__name__ == "Adafactor"
    names = group_param_names(optimizer)
    assert set(names) >= {"head/decay", "block.2/decay"}
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-2)


def test_optimizer_state_loaded_into_other_params_is_caught():
    model = make_model("bert")
    groups = build_param_groups(model, [n for n, _ in model.named_parameters()], lr=1.0,
                                weight_decay=0.0)
    optimizer = torch.optim.AdamW(groups)
    check_saved_names(optimizer, model)  # consistent: nothing raised
    first = optimizer.param_groups[0]
    first["param_names"] = list(reversed(first["param_names"]))
    with pytest.raises(FreezePolicyError, match="trainable/decay.*state was saved for"):
        check_saved_names(optimizer, model)


# -- bad input: one-line FreezePolicyError naming the value and the valid choices ---------------
def freeze_trainer(tmp_path, model=None, **options):
    return FreezeTrainer(model=model or make_model("bert"), args=make_args(tmp_path),
                         train_dataset=RandomTokens("bert"), **options)


BAD_OPTIONS = [
    (dict(layer_lr_decay=0), r"layer_lr_decay=0 must be a number in \(0, 1\]"),
    (dict(layer_lr_decay=1.5), r"layer_lr_decay=1.5 must be a number in \(0, 1\]"),
    (dict(layer_lr_decay=-0.1), r"layer_lr_decay=-0.1 must be"),
    (dict(layer_lr_decay=float("nan")), r"layer_lr_decay=nan must be"),
    (dict(layer_lr_decay=True), r"layer_lr_decay=True must be"),
    (dict(layer_lr_decay="0.5"), r"layer_lr_decay='0.5' must be"),
    (dict(head_lr_multiplier=0), r"head_lr_multiplier=0 must be a finite number > 0"),
    (dict(head_lr_multiplier=float("inf")), r"head_lr_multiplier=inf must be"),
    (dict(freeze_mode="lr0"), r"freeze_mode='lr0' is not one of requires_grad, zero_lr, zero_grad"),
    (dict(audit="warn"), r"audit='warn' is not one of raise, log, off"),
    (dict(freeze_policy="bottom"), r"unknown policy 'bottom' \(did you mean 'bottom_n'\?\); valid"),
    (dict(freeze_policy=42), r"freeze_policy=42 is not a policy"),
    (dict(freeze_policy={"name": "gradual_unfreeze", "every": 0}),
     r"gradual_unfreeze: every=0 must be an integer > 0"),
    (dict(freeze_policy={"name": "lisa", "every": -2}), r"lisa: every=-2 must be an integer > 0"),
    (dict(freeze_policy={"name": "gradual_unfreeze", "unit": "weeks"}),
     r"unit='weeks' is not one of steps, epochs"),
    (dict(freeze_policy={"name": "gradual_unfreeze", "blocks_per_stage": 4}),
     r"blocks_per_stage=4 is larger than the depth of BertForSequenceClassification \(3 blocks\)"),
    (dict(freeze_policy={"name": "lisa", "k": 5}), r"lisa: k=5 is out of range .* \(valid: 1..3\)"),
    (dict(freeze_policy={"name": "lisa"}, freeze_mode="zero_lr"),
     r"freeze_mode='zero_lr' supports fixed policies only, not the schedule 'lisa'"),
    (dict(freeze_policy={"name": "gradual_unfreeze"}, freeze_mode="zero_grad"),
     r"freeze_mode='zero_grad' supports fixed policies only"),
    (dict(freeze_mode="zero_lr"), r"freeze_mode='zero_lr' needs a freeze_policy"),
]


@pytest.mark.parametrize("options,message", BAD_OPTIONS, ids=[m for _, m in BAD_OPTIONS])
def test_bad_options_fail_at_construction(options, message, tmp_path):
    with pytest.raises(FreezePolicyError, match=message) as error:
        freeze_trainer(tmp_path, **options)
    assert "\n" not in str(error.value)


def test_zero_lr_with_a_scheduler_that_lifts_lr_zero_is_refused(tmp_path):
    with pytest.raises(FreezePolicyError, match="cannot use lr_scheduler_type='greedy'"):
        greedy = make_args(tmp_path, lr_scheduler_type="greedy", eval_strategy="steps")
        FreezeTrainer(model=make_model("bert"), args=greedy, train_dataset=RandomTokens("bert"),
                      eval_dataset=RandomTokens("bert"), freeze_policy="all_but_head",
                      freeze_options=FreezeOptions(freeze_mode="zero_lr"))
    model = make_model("bert")
    args = make_args(tmp_path)
    optimizer = create_optimizer(model, args, "all_but_head", freeze_mode="zero_lr")
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, min_lr=1e-6)
    trainer = Trainer(model=model, args=args, train_dataset=RandomTokens("bert"),
                      optimizers=(optimizer, scheduler),
                      callbacks=[FreezeScheduleCallback("all_but_head",
                          freeze_options=FreezeOptions(freeze_mode="zero_lr"))])
    with pytest.raises(FreezePolicyError, match="ReduceLROnPlateau has a floor min_lr=1e-06"):
        trainer.train()


def test_freeze_schedule_callback_passed_to_freeze_trainer_is_refused(tmp_path):
    with pytest.raises(FreezePolicyError, match="FreezeTrainer adds its own FreezeSchedule"):
        freeze_trainer(tmp_path, freeze_policy="embeddings",
                       callbacks=[FreezeScheduleCallback("embeddings")])


def test_peft_model_with_a_policy_is_refused_and_without_one_trains(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(make_model("bert"), LoraConfig(r=2, target_modules=["query", "value"]))
    with pytest.raises(FreezePolicyError, match=r"freeze_policy='bottom_n' cannot be combined "
                       r"with a PEFT model \(PeftModel\).*freeze_policy=None"):
        freeze_trainer(tmp_path, model=model, freeze_policy=get_policy("bottom_n", n=1))
    with pytest.raises(FreezePolicyError, match="PEFT"):
        Trainer(model=model, args=make_args(tmp_path), train_dataset=RandomTokens("bert"),
                callbacks=[FreezeScheduleCallback("embeddings")])

    trainer = freeze_trainer(tmp_path, model=model)  # PEFT decides; the audit still checks
    metrics = trainer.train().metrics
    frozen = sum(1 for p in model.parameters() if not p.requires_grad)
    assert metrics["frozen_audit_passed"] is True and metrics["frozen_audit_checked"] == frozen
    lora = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in lora)
    assert group_param_names(trainer.optimizer) == {"trainable/decay": sorted(
        lora, key=[n for n, _ in model.named_parameters()].index)}


def test_optim_that_builds_its_own_groups_is_refused(tmp_path, monkeypatch):
    from freeze_policies.training import optim

    def fake(args, model):
        return torch.optim.AdamW, {"params": [], "lr": 1.0}

    monkeypatch.setattr(Trainer, "get_optimizer_cls_and_kwargs", staticmethod(fake))
    with pytest.raises(FreezePolicyError, match="builds its own parameter groups"):
        optim.optimizer_cls_and_kwargs(make_args(tmp_path), make_model("bert"))
