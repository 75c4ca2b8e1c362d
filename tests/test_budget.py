"""The budget: the shallowest frozen prefix whose predicted (or measured) cost fits a target."""

from __future__ import annotations

import pytest
import torch
from trainer_support import RandomTokens, make_model, one_torch_thread  # noqa: F401

from freeze_policies import FreezePolicyError, anatomy, predict_cost
from freeze_policies.costs import budget as budget_module
from freeze_policies.costs.budget import choose_frozen_depth


@pytest.fixture(scope="module")
def model():
    return make_model("bert", layers=4)


def known_costs(model):
    """(label, step ratio, accounted memory) per candidate, computed here from predict_cost."""
    anat = anatomy(model)
    rows = []
    for label, policy in budget_module.candidates(anat):
        names = None if policy is None else policy.trainable_names(anat)
        names = names if names is not None else {n for n, _ in model.named_parameters()}
        cost = predict_cost(model, names, anat, seq_len=12, batch_size=4)
        rows.append((label, cost.step_ratio,
                     cost.parameter_bytes + cost.gradient_bytes + cost.optimizer_state_bytes))
    return rows


def test_candidates_go_from_full_to_everything_but_the_head(model):
    labels = [label for label, _ in budget_module.candidates(anatomy(model))]
    assert labels == ["full fine-tuning"] + [f"bottom_n(n={n})" for n in range(5)]


@pytest.mark.parametrize("index", range(1, 6))
def test_the_shallowest_candidate_under_the_step_target_wins(model, index):
    rows = known_costs(model)
    ratios = [ratio for _, ratio, _ in rows]
    assert ratios == sorted(ratios, reverse=True)  # deeper is cheaper
    target = rows[index][1]
    expected = next(label for label, ratio, _ in rows if ratio <= target)
    choice = choose_frozen_depth(model, max_step_ratio=target, seq_len=12, batch_size=4)
    assert choice.label == expected
    if expected == "full fine-tuning":  # frozen embeddings save no FLOPs (a lookup)
        assert index == 1 and choice.policy is None
    else:
        assert choice.policy.name == "bottom_n"
        assert choice.policy.n == int(expected.split("=")[1].rstrip(")"))


def test_the_memory_target_and_both_targets_together(model):
    rows = known_costs(model)
    memory_target = rows[2][2]  # bottom_n(n=1)'s accounted memory
    choice = choose_frozen_depth(model, max_memory_bytes=memory_target, seq_len=12, batch_size=4)
    assert choice.label == "bottom_n(n=1)"
    both = choose_frozen_depth(model, max_memory_bytes=memory_target, max_step_ratio=rows[4][1],
                               seq_len=12, batch_size=4)
    assert both.label == "bottom_n(n=3)"  # the step target asks for more than the memory one


def test_full_fine_tuning_when_it_fits(model):
    choice = choose_frozen_depth(model, max_step_ratio=1.0, seq_len=12, batch_size=4)
    assert choice.policy is None and choice.label == "full fine-tuning"
    assert "-> full fine-tuning" in str(choice)


@pytest.mark.parametrize("kwargs,message", [
    ({}, "budget: give max_step_ratio and/or max_memory_bytes"),
    ({"max_step_ratio": -0.5}, r"budget: max_step_ratio=-0.5 must be a number > 0"),
    ({"max_memory_bytes": "8GB"}, r"budget: max_memory_bytes='8GB' must be a number > 0"),
    ({"max_step_ratio": 0.001},
     r"budget max_step_ratio=0.001 cannot be met: the deepest freeze, bottom_n\(n=4\)"),
    ({"max_memory_bytes": 10}, r"budget max_memory_bytes=10 B cannot be met"),
])
def test_bad_or_impossible_budgets_are_one_line_errors(model, kwargs, message):
    with pytest.raises(FreezePolicyError, match=message):
        choose_frozen_depth(model, seq_len=12, batch_size=4, **kwargs)


def test_an_encoder_decoder_needs_a_stack_and_freezes_only_that_one():
    from tiny_models import STACK_CASES

    t5 = next(case for case in STACK_CASES if case.id == "t5").build()
    with pytest.raises(FreezePolicyError, match=r"^budget: T5ForConditionalGeneration has 2 stacks "
                                                r"of blocks \(encoder, decoder\); name the one to "
                                                r"freeze from the bottom with stack"):
        choose_frozen_depth(t5, max_step_ratio=0.9, seq_len=12, batch_size=4)
    anat = anatomy(t5)
    labels = [label for label, _ in budget_module.candidates(anat, "encoder")]
    depth = len(anat.stack("encoder", "test").blocks)
    assert labels == ["full fine-tuning"] + [f"bottom_n(n={n}, stack='encoder')"
                                             for n in range(depth + 1)]
    choice = choose_frozen_depth(t5, max_step_ratio=0.95, seq_len=12, batch_size=4,
                                 stack="encoder")
    trainable = choice.policy.trainable_names(anat)
    assert all(name in trainable for name in anat.names()
               if name.startswith("decoder.") and "embed" not in name)


@pytest.mark.parametrize("kwargs,message", [
    ({"calibration_steps": -1, "max_step_ratio": 0.5}, r"calibration_steps=-1 must be an integer"),
    ({"calibration_steps": 2}, r"calibration_steps=2 is given without a budget"),
    ({"calibration_steps": 2, "max_memory": 8}, r"only max_step_ratio limits"),
    ({"stack": "encoder"}, r"stack='encoder' is given without a budget"),
    ({"max_step_ratio": float("inf")}, r"max_step_ratio=inf must be a number > 0"),
])
def test_check_budget_without_a_model(kwargs, message):
    with pytest.raises(FreezePolicyError, match=message):
        budget_module.check_budget(**kwargs)


def test_calibration_moves_deeper_while_the_measured_ratio_misses(model, monkeypatch):
    """Measured times made up per trainable-set size: the prediction's pick measures too slow."""
    total = len(list(model.parameters()))
    rows = known_costs(model)
    target = rows[2][1]  # predicted: bottom_n(n=0) fits

    def fake(model_, trainable, batch):
        return 1.0 if len(trainable) == total else (0.95 if len(trainable) > total * 0.6 else 0.4)

    monkeypatch.setattr(budget_module, "measure_step_seconds", fake)
    batch = {"input_ids": RandomTokens("bert", n=4).ids}
    choice = choose_frozen_depth(model, max_step_ratio=target, seq_len=12, batch_size=4,
                                 calibrate=batch)
    measured = [row.get("measured_step_ratio") for row in choice.rows]
    assert choice.label != rows[2][0]  # moved past the predicted pick
    chosen = next(row for row in choice.rows if row["label"] == choice.label)
    assert chosen["measured_step_ratio"] <= target
    assert measured[2] is not None and measured[2] > target


def test_measure_step_seconds_changes_no_weight_and_restores_requires_grad(model):
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    batch = RandomTokens("bert", n=4)
    inputs = {"input_ids": batch.ids, "labels": batch.classes}
    seconds = budget_module.measure_step_seconds(model, {"classifier.weight"}, inputs)
    assert seconds > 0
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert flags == {n: p.requires_grad for n, p in model.named_parameters()}
    assert all(p.grad is None for p in model.parameters())


def test_the_launcher_refuses_a_budget_beside_a_policy_before_loading_anything():
    from recipes.launcher.common import ConfigError
    from recipes.launcher.main import parse_args

    with pytest.raises(ConfigError, match=r"budget_step_ratio / budget_memory_gb pick the policy "
                                          r"\(bottom_n\); do not also give policy='top_n'"):
        parse_args(["--policy", "top_n", "--budget_step_ratio", "0.5"])
    with pytest.raises(ConfigError, match="need method='freeze', not 'peft'"):
        parse_args(["--method", "peft", "--peft_method", "lora", "--budget_step_ratio", "0.5"])
    *_, method, _ = parse_args(["--budget_memory_gb", "2"])
    assert method.method == "freeze" and method.policy is None


def test_the_launcher_reports_an_impossible_budget_in_one_line(tmp_path):
    from recipes.launcher.common import ConfigError
    from recipes.launcher.main import main

    with pytest.raises(ConfigError, match=r"^budget --budget_step_ratio 0.01 cannot be met: the "
                                          r"deepest "
                                          r"freeze, bottom_n\(n=6\)"):
        main(["--budget_step_ratio", "0.01", "--max_train_samples", "32",
              "--max_eval_samples", "16", "--output_dir", str(tmp_path / "run"),
              "--report_to", "none"])
    assert not (tmp_path / "run").exists()
