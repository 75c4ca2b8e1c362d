"""``FreezeOptions``: validated once, accepted by the trainer, the callback and the optimizer
builder (the older keyword arguments build the same options); ``freeze_metrics``; and the
anatomy traced once per run."""

from __future__ import annotations

import sys

import pytest
import torch
from trainer_support import (
    RandomTokens,
    make_args,
    make_model,
    one_torch_thread,  # noqa: F401
)
from transformers import HfArgumentParser

from freeze_policies import (
    FreezeOptions,
    FreezePolicyError,
    FreezeScheduleCallback,
    FreezeTrainer,
    get_policy,
    predict_cost,
    summarize,
)
from freeze_policies.training.optim import create_optimizer, group_param_names

tracing = sys.modules["freeze_policies.structure.trace"]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"freeze_mode": "lr0"}, "freeze_mode='lr0' is not one of requires_grad, zero_lr"),
        ({"audit": "warn"}, "audit='warn' is not one of raise, log, off"),
        ({"layer_lr_decay": 0}, "layer_lr_decay=0 must be a number in (0, 1]"),
        ({"head_lr_multiplier": float("inf")}, "head_lr_multiplier=inf must be a finite"),
        ({"frozen_dtype": "int8"}, "frozen_dtype='int8' is not one of bfloat16, float16"),
        ({"cache_frozen_prefix": "yes"}, "cache_frozen_prefix='yes' must be True or False"),
        (
            {"cache_frozen_prefix": True, "freeze_mode": "zero_grad"},
            "cache_frozen_prefix needs freeze_mode='requires_grad', not 'zero_grad'",
        ),
    ],
)
def test_each_bad_option_is_one_line_naming_the_choices(options, message):
    with pytest.raises(FreezePolicyError) as error:
        FreezeOptions(**options)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_frozen_dtype_is_kept_by_name_and_given_as_a_torch_dtype():
    assert FreezeOptions(frozen_dtype=torch.bfloat16).frozen_dtype == "bfloat16"
    assert FreezeOptions(frozen_dtype="float16").torch_frozen_dtype is torch.float16
    assert FreezeOptions().torch_frozen_dtype is None


def test_from_dict_rejects_unknown_keys_unless_asked_to_pick():
    with pytest.raises(FreezePolicyError, match="no option 'policy'.*its options: freeze_mode"):
        FreezeOptions.from_dict({"policy": "bottom_n", "audit": "log"})
    picked = FreezeOptions.from_dict(
        {"policy": "bottom_n", "audit": "log", "layer_lr_decay": 0.5}, ignore_unknown=True
    )
    assert picked == FreezeOptions(audit="log", layer_lr_decay=0.5)
    assert FreezeOptions.from_dict(picked.as_dict()) == picked


def test_hf_argument_parser_parses_the_options_from_flags():
    (parsed,) = HfArgumentParser(FreezeOptions).parse_args_into_dataclasses(
        ["--freeze_mode", "zero_lr", "--layer_lr_decay", "0.5", "--cache_frozen_prefix", "false",
         "--frozen_dtype", "bfloat16"]
    )
    assert parsed == FreezeOptions(freeze_mode="zero_lr", layer_lr_decay=0.5,
                                   frozen_dtype="bfloat16")


def test_the_policy_checks_live_with_the_options():
    with pytest.raises(FreezePolicyError, match="freeze_mode='zero_lr' needs a freeze_policy"):
        FreezeOptions(freeze_mode="zero_lr").check_policy(None)
    with pytest.raises(FreezePolicyError, match="supports fixed policies only"):
        FreezeOptions(freeze_mode="zero_grad").check_policy(get_policy("gradual_unfreeze"))
    with pytest.raises(FreezePolicyError, match="need a freeze_policy with a frozen prefix"):
        FreezeOptions(frozen_prefix_eval=True).check_policy(None)
    FreezeOptions(freeze_mode="zero_lr").check_policy(get_policy("bottom_n", n=1))


def test_keywords_and_options_build_the_same_callback():
    by_keywords = FreezeScheduleCallback("all_but_head", audit="log", freeze_mode="zero_lr")
    by_options = FreezeScheduleCallback(
        "all_but_head", freeze_options=FreezeOptions(audit="log", freeze_mode="zero_lr")
    )
    by_mapping = FreezeScheduleCallback(
        "all_but_head", freeze_options={"audit": "log", "freeze_mode": "zero_lr"}
    )
    assert by_keywords.state() == by_options.state() == by_mapping.state()
    assert by_keywords.options == by_options.options == by_mapping.options
    with pytest.raises(FreezePolicyError, match="audit given both as keyword and in freeze_opt"):
        FreezeScheduleCallback("all_but_head", audit="off", freeze_options=FreezeOptions())


def test_create_optimizer_takes_the_options(tmp_path):
    model, args = make_model("bert"), make_args(tmp_path)
    policy = get_policy("bottom_n", n=1)
    options = FreezeOptions(freeze_mode="zero_lr", layer_lr_decay=0.5, head_lr_multiplier=2.0)
    given = create_optimizer(model, args, policy, freeze_options=options)
    keywords = create_optimizer(
        model, args, policy, freeze_mode="zero_lr", layer_lr_decay=0.5, head_lr_multiplier=2.0
    )
    assert group_param_names(given) == group_param_names(keywords)
    assert [g["lr"] for g in given.param_groups] == [g["lr"] for g in keywords.param_groups]
    assert "frozen/decay" in group_param_names(given)  # zero_lr's groups: the mode was read
    assert given.param_groups[0]["lr"] == pytest.approx(2.0 * args.learning_rate)


def test_trainer_keywords_and_options_train_identically(tmp_path):
    def train(**freeze):
        trainer = FreezeTrainer(
            model=make_model("bert"), args=make_args(tmp_path, max_steps=2),
            train_dataset=RandomTokens("bert"), freeze_policy={"name": "bottom_n", "n": 1},
            **freeze,
        )
        trainer.train()
        return trainer

    by_keywords = train(layer_lr_decay=0.5, audit="log")
    by_options = train(freeze_options=FreezeOptions(layer_lr_decay=0.5, audit="log"))
    assert by_keywords.freeze_options == by_options.freeze_options
    assert by_keywords.layer_lr_decay == by_options.layer_lr_decay == 0.5
    for (name, a), (_, b) in zip(by_keywords.model.named_parameters(),
                                 by_options.model.named_parameters()):
        assert torch.equal(a, b), name


def test_option_keywords_warn_once_naming_freeze_options(tmp_path, monkeypatch):
    """The keywords are deprecated: a FutureWarning per keyword, once per process, naming the
    replacement; FreezeOptions itself warns about nothing."""
    import warnings

    from freeze_policies.training import options

    monkeypatch.setattr(options, "_WARNED", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        FreezeScheduleCallback("all_but_head", freeze_options=FreezeOptions(audit="log"))
        assert caught == []
        FreezeScheduleCallback("all_but_head", audit="log")
        FreezeScheduleCallback("all_but_head", audit="log", freeze_mode="zero_lr")
        FreezeTrainer(model=make_model("bert"), args=make_args(tmp_path),
                      train_dataset=RandomTokens("bert"), freeze_policy="all_but_head",
                      audit="log")
        create_optimizer(make_model("bert"), make_args(tmp_path), "all_but_head",
                         freeze_options=FreezeOptions(layer_lr_decay=0.5))
        create_optimizer(make_model("bert"), make_args(tmp_path), "all_but_head",
                         layer_lr_decay=0.5)
    messages = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert messages == [
        "FreezeScheduleCallback(audit=...) is deprecated; pass "
        "freeze_options=FreezeOptions(audit=...) instead",
        "FreezeScheduleCallback(freeze_mode=...) is deprecated; pass "
        "freeze_options=FreezeOptions(freeze_mode=...) instead",
        "FreezeTrainer(audit=...) is deprecated; pass freeze_options=FreezeOptions(audit=...) "
        "instead",
        "create_optimizer(layer_lr_decay=...) is deprecated; pass "
        "freeze_options=FreezeOptions(layer_lr_decay=...) instead",
    ]
    # pointing at the caller's line, not the library's
    assert all(w.filename == __file__ for w in caught if issubclass(w.category, FutureWarning))


def test_freeze_metrics_has_counts_audit_costs_and_cache(tmp_path):
    trainer = FreezeTrainer(
        model=make_model("bert"), args=make_args(tmp_path, max_steps=2),
        train_dataset=RandomTokens("bert"), freeze_policy="gradual_unfreeze",
        freeze_options=FreezeOptions(frozen_prefix_eval=True),
    )
    sizes = {n: p.numel() for n, p in trainer.model.named_parameters()}
    head = sum(sizes[n] for n in trainer.anatomy.head)
    before = trainer.freeze_metrics()
    assert before == {"trainable_params": head, "trainable_params_max": sum(sizes.values()),
                      "prefix_cache": None}  # frozen_prefix_eval does not cache
    trainer.train()
    after = trainer.freeze_metrics()
    assert after["frozen_audit_passed"] is True and after["frozen_audit_checked"] > 0
    assert after["optimizer_state_bytes"] > 0 and after["gradient_bytes"] > 0
    assert after["parameter_bytes"] == 4 * sum(sizes.values())

    cached = FreezeTrainer(
        model=make_model("bert"), args=make_args(tmp_path, max_steps=2),
        train_dataset=RandomTokens("bert"), freeze_policy={"name": "bottom_n", "n": 2},
        freeze_options=FreezeOptions(cache_frozen_prefix=True),
    )
    cached.train()
    figures = cached.freeze_metrics()["prefix_cache"]
    # two steps over examples not seen before: each batch recorded, none replayed
    assert figures["depth"] == 2 and figures["records"] == 2 and figures["hits"] == 0
    assert figures["bytes"] > 0


def test_freeze_metrics_without_a_policy_counts_what_requires_grad(tmp_path):
    model = make_model("bert")
    get_policy("all_but_head").apply(model)
    trainer = FreezeTrainer(
        model=model, args=make_args(tmp_path), train_dataset=RandomTokens("bert")
    )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainer.freeze_metrics()["trainable_params"] == trainable
    assert trainer.freeze_metrics()["trainable_params_max"] == trainable


@pytest.mark.parametrize(
    "policy, options",
    [({"name": "bottom_n", "n": 1}, {"layer_lr_decay": 0.5, "cache_frozen_prefix": True}),
     ("gradual_unfreeze", {}),
     (None, {"layer_lr_decay": 0.5})],
    ids=["bottom_n-cached", "gradual_unfreeze", "no-policy"],
)
def test_the_anatomy_is_traced_once_per_run(policy, options, tmp_path, monkeypatch):
    traces = []
    real = tracing.trace

    def counting(*args, **kwargs):
        traces.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tracing, "trace", counting)
    trainer = FreezeTrainer(
        model=make_model("bert"), args=make_args(tmp_path, max_steps=3),
        train_dataset=RandomTokens("bert"), freeze_policy=policy,
        freeze_options=FreezeOptions(**options),
    )
    trainer.train()
    summarize(trainer.model, trainer.anatomy)
    predict_cost(trainer.model, anat=trainer.anatomy)
    trainer.freeze_metrics()
    assert len(traces) == 1
