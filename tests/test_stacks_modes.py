"""Models with several stacks under resume and under the zero_lr / zero_grad freeze modes."""

import pytest
import torch
from test_stacks_training import CASES, Pairs, args_for, optimizer_names, snapshot

from freeze_policies import FreezeOptions, FreezeTrainer, anatomy, get_policy

# (model, a schedule over one stack, the input features of a speech model)
SCHEDULES = [
    ("t5", {"name": "gradual_unfreeze", "every": 2, "unit": "steps", "stack": "decoder",
            "tied_weights": "train"}, None),
    ("bart", {"name": "lisa", "k": 1, "every": 2, "stack": "encoder", "tied_weights": "freeze"},
     None),
    ("whisper", {"name": "gradual_unfreeze", "every": 2, "unit": "steps", "stack": "decoder",
                 "tied_weights": "train"}, (8, 32)),
]


@pytest.mark.parametrize("case_id,policy,features", SCHEDULES, ids=[s[0] for s in SCHEDULES])
def test_resume_mid_schedule_on_several_stacks_matches_the_uninterrupted_run(
        case_id, policy, features, tmp_path):
    def trainer(seed):
        torch.manual_seed(seed)
        return FreezeTrainer(model=CASES[case_id].build(), freeze_policy=dict(policy),
                             train_dataset=Pairs(n=16, features=features),
                             args=args_for(tmp_path, max_steps=6, save_strategy="steps",
                                           save_steps=3))

    uninterrupted = trainer(0)
    uninterrupted.train()
    resumed = trainer(7)  # other initial weights: everything must come from the checkpoint
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    expected, got = snapshot(uninterrupted.model), snapshot(resumed.model)
    assert [n for n in expected if not torch.equal(expected[n], got[n])] == []
    assert resumed.frozen_audit.passed and uninterrupted.frozen_audit.passed


@pytest.mark.parametrize("mode", ["zero_lr", "zero_grad"])
@pytest.mark.parametrize("case_id,policy,features", [
    ("t5", {"name": "freeze_parts", "parts": ["encoder"], "tied_weights": "freeze"}, None),
    ("whisper", {"name": "bottom_n", "n": 1, "stack": "encoder"}, (8, 32)),
], ids=["t5", "whisper"])
def test_zero_modes_on_several_stacks_freeze_the_policys_set(mode, case_id, policy, features,
                                                              tmp_path):
    """Every parameter is in the optimizer (that is what the modes are for); only the policy's
    set moves. No weight decay: AdamW's decoupled decay would move zero_grad's frozen weights."""
    torch.manual_seed(0)
    model = CASES[case_id].build()
    expected = get_policy(**policy).trainable_names(anatomy(model))
    trainer = FreezeTrainer(model=model, freeze_policy=policy,
        freeze_options=FreezeOptions(freeze_mode=mode),
                            train_dataset=Pairs(features=features),
                            args=args_for(tmp_path, weight_decay=0.0))
    before = snapshot(model)
    trainer.train()
    after = snapshot(model)
    moved = {n for n in after if not torch.equal(before[n], after[n])}
    assert optimizer_names(trainer) == set(after)
    assert moved and moved <= set(expected)
    assert trainer.frozen_audit.passed
