"""Each family trains through FreezeTrainer on tiny inputs of the shape its forward takes: frozen
weights bit-identical, the optimizer holding exactly what the policy trains, the audit passing."""

import pytest
import torch
from tiny_models import FAMILY_CASES, family_batch
from trainer_support import one_torch_thread  # noqa: F401
from transformers import TrainingArguments

from freeze_policies import FreezeTrainer, anatomy, get_policy

FAMILIES = {case.id: case for case in FAMILY_CASES}
POLICIES = {
    # LLaMA-Factory's freeze_vision_tower: the merger inside `visual` still trains
    "qwen2-vl": {"name": "freeze_parts", "parts": ["vision_tower"]},
    "qwen2.5-vl": {"name": "freeze_parts", "parts": ["vision_tower"]},
    # LLaVA's second stage: projector, language model and head
    "llava-next": {"name": "train_parts", "parts": ["projector", "language_model", "head"]},
    # the first stage: the projector alone
    "idefics3": {"name": "train_parts", "parts": ["projector"]},
    "gemma3": {"name": "freeze_parts", "parts": ["vision_tower"]},
    "mllama": {"name": "freeze_parts", "parts": ["vision_tower", "projector"]},
    "speech2text": {"name": "freeze_parts", "parts": ["encoder"]},
    # every block but its router; the top block but its router
    "mixtral": {"name": "freeze_parts", "parts": ["router"]},
    "olmoe": {"name": "freeze_parts", "parts": ["router"], "policy": {"name": "top_n", "n": 1}},
    # the experts alone; the shared experts and attention
    "qwen3-moe": {"name": "train_parts", "parts": ["experts"]},
    "qwen2-moe": {"name": "train_parts", "parts": ["shared_experts", "attention"]},
}


class Batches(torch.utils.data.Dataset):
    """Indices only: the collator builds the family's batch (images and grids go together)."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"index": i}


def test_every_family_has_a_training_policy():
    assert set(POLICIES) == set(FAMILIES)


@pytest.mark.parametrize("case_id", list(POLICIES))
def test_one_step_through_freeze_trainer_keeps_frozen_weights_bit_identical(case_id, tmp_path):
    model = FAMILIES[case_id].build()
    policy = POLICIES[case_id]
    expected = get_policy(**policy).trainable_names(anatomy(model))
    steps = iter(range(1000))
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=2,
                             max_steps=1, learning_rate=1e-2, report_to="none",
                             save_strategy="no", use_cpu=True, logging_strategy="no", seed=0,
                             disable_tqdm=True, remove_unused_columns=False)
    trainer = FreezeTrainer(
        model=model, args=args, freeze_policy=policy, train_dataset=Batches(),
        data_collator=lambda rows: family_batch(case_id, model, n=len(rows), seed=next(steps)))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.train()
    by_id = {id(p): n for n, p in model.named_parameters()}
    held = {by_id[id(p)] for group in trainer.optimizer.param_groups for p in group["params"]}
    assert held == set(expected)
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert moved and moved <= set(expected)
    assert trainer.frozen_audit.passed
