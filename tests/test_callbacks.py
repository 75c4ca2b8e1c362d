"""FreezeScheduleCallback in a plain Trainer and in a user's own Trainer subclass.

The first two tests train what docs/trainer.md shows and assert on the result; the docs' own
blocks run as written in tests/test_docs_examples.py.
"""

from __future__ import annotations

import pytest
import torch
from trainer_support import (
    RandomTokens,
    Recorder,
    changed,
    make_args,
    make_model,
    one_torch_thread,  # noqa: F401
    snapshot,
)
from transformers import Trainer

from freeze_policies import FreezeOptions, FreezePolicyError, FreezeScheduleCallback, get_policy
from freeze_policies.training.optim import create_optimizer


def test_plain_trainer_optimizer_holds_exactly_what_will_train(tmp_path):
    model = make_model("gpt2")
    policy = get_policy("bottom_n", n=2)
    trainer = Trainer(model=model, args=make_args(tmp_path), train_dataset=RandomTokens("gpt2"),
                      callbacks=[FreezeScheduleCallback(policy)])
    before = snapshot(model)
    trainer.train()
    trainable = policy.trainable_names(policy.anatomy(model))
    params = dict(model.named_parameters())
    held = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert held == {id(params[n]) for n in trainable}
    assert changed(before, snapshot(model), set(params) - trainable) == []
    assert trainer.state.log_history[-1]["frozen_audit_passed"] is True


def test_callback_added_after_the_optimizer_was_planned_is_refused(tmp_path):
    model = make_model("bert")
    get_policy("all_but_head").apply(model)  # Trainer will build its optimizer for the head only
    trainer = Trainer(model=model, args=make_args(tmp_path), train_dataset=RandomTokens("bert"))
    trainer.add_callback(FreezeScheduleCallback(get_policy("gradual_unfreeze", every=1,
                                                           unit="steps")))
    with pytest.raises(FreezePolicyError, match=r"stage 1 of 'gradual_unfreeze' trains \d+ "
                       r"parameters the optimizer does not hold .*FreezeTrainer"):
        trainer.train()


class OwnTrainer(Trainer):
    """A user's Trainer subclass with its own loss."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        loss = outputs.loss * 0.5
        return (loss, outputs) if return_outputs else loss


def test_lisa_callback_in_own_trainer_subclass(tmp_path):
    recorder = Recorder()
    model = make_model("llama", layers=4)
    policy = get_policy("lisa", k=1, every=2, seed=2)
    trainer = OwnTrainer(model=model, args=make_args(tmp_path, max_steps=8),
                         train_dataset=RandomTokens("llama"),
                         callbacks=[recorder, FreezeScheduleCallback(policy)])
    trainer.train()
    anat = policy.anatomy(model)
    for t in range(8):
        opened = policy.sampled_blocks(anat, policy.stage_at(t, 0))
        for b, names in enumerate(anat.blocks):
            moved = changed(recorder.snapshots[t], recorder.snapshots[t + 1], names)
            assert bool(moved) == (b in opened), (t, b)
    assert trainer.state.log_history[-1]["frozen_audit_passed"] is True


def test_plain_trainer_resume_matches(tmp_path):
    args = make_args(tmp_path, max_steps=8, save_strategy="steps", save_steps=5)

    def run(seed, **train_kwargs):
        model = make_model("llama", seed=seed)
        policy = get_policy("gradual_unfreeze", every=2, unit="steps")
        trainer = Trainer(model=model, args=args, train_dataset=RandomTokens("llama"),
                          callbacks=[FreezeScheduleCallback(policy)])
        trainer.train(**train_kwargs)
        return snapshot(model), trainer

    full, _ = run(0)
    resumed, trainer = run(7, resume_from_checkpoint=str(tmp_path / "checkpoint-5"))
    assert changed(full, resumed, full) == []
    callback = next(c for c in trainer.callback_handler.callbacks
                    if isinstance(c, FreezeScheduleCallback))
    assert callback.resumed_stage == 2


def test_zero_lr_needs_its_optimizer_groups(tmp_path):
    policy = get_policy("bottom_n", n=2)
    with pytest.raises(FreezePolicyError, match="freeze_mode='zero_lr' needs lr=0 optimizer"):
        Trainer(model=make_model("bert"), args=make_args(tmp_path),
                train_dataset=RandomTokens("bert"),
                callbacks=[FreezeScheduleCallback(policy,
                    freeze_options=FreezeOptions(freeze_mode="zero_lr"))])

    model = make_model("bert")
    wrong = torch.optim.AdamW(model.parameters(), lr=1e-2)
    trainer = Trainer(model=model, args=make_args(tmp_path), train_dataset=RandomTokens("bert"),
                      optimizers=(wrong, None),
                      callbacks=[FreezeScheduleCallback(policy,
                          freeze_options=FreezeOptions(freeze_mode="zero_lr"))])
    with pytest.raises(FreezePolicyError, match=r"frozen parameters sit in optimizer groups with "
                       r"lr != 0"):
        trainer.train()


def test_zero_lr_with_create_optimizer_in_plain_trainer(tmp_path):
    model = make_model("bert")
    args = make_args(tmp_path)
    policy = get_policy("bottom_n", n=2)
    optimizer = create_optimizer(model, args, policy, freeze_options=FreezeOptions(
        freeze_mode="zero_lr", layer_lr_decay=0.5))
    trainer = Trainer(model=model, args=args, train_dataset=RandomTokens("bert"),
                      optimizers=(optimizer, None),
                      callbacks=[FreezeScheduleCallback(policy,
                          freeze_options=FreezeOptions(freeze_mode="zero_lr"))])
    before = snapshot(model)
    trainer.train()
    frozen = set(before) - policy.trainable_names(policy.anatomy(model))
    assert changed(before, snapshot(model), frozen) == []
    # every parameter required grad during training; the policy's view is back afterwards
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == frozen
    assert trainer.state.log_history[-1]["gradient_bytes"] == 4 * sum(
        p.numel() for p in model.parameters()
    )


def test_callback_without_policy_audits_what_was_frozen(tmp_path):
    model = make_model("bert")
    get_policy("top_n", n=1).apply(model)
    before = snapshot(model)
    trainer = Trainer(model=model, args=make_args(tmp_path), train_dataset=RandomTokens("bert"),
                      callbacks=[FreezeScheduleCallback()])
    trainer.train()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert changed(before, snapshot(model), frozen) == []
    assert trainer.state.log_history[-1]["frozen_audit_checked"] == len(frozen)


def test_callback_state_round_trips():
    callback = FreezeScheduleCallback({"name": "lisa", "k": 1, "every": 3},
        freeze_options=FreezeOptions(audit="log"))
    callback.stage = 4
    saved = callback.state()
    rebuilt = FreezeScheduleCallback.from_state(saved)
    assert rebuilt.state() == saved
    assert rebuilt.policy.options() == callback.policy.options()


def test_saved_param_names_of_another_length_are_a_clear_error():
    import torch
    from torch import nn

    from freeze_policies.training.resume import check_saved_names

    model = nn.Linear(2, 2)
    optimizer = torch.optim.SGD(
        [{"params": [model.weight], "param_names": ["weight", "bias"], "name": "g"}], lr=0.1
    )
    with pytest.raises(FreezePolicyError, match=r"group 'g' holds nothing where its state was "
                       r"saved for bias"):
        check_saved_names(optimizer, model)
