"""A bare encoder trained on mean pooling (as sentence-transformers trains an embedding model):
its pooler is the anatomy's head but the loss never reads it. Every policy either trains one step
or is refused in one line before training; never torch's "does not require grad"."""

import pytest
import torch
import transformers
from tiny_models import TINY
from trainer_support import one_torch_thread  # noqa: F401
from transformers import AutoConfig, TrainingArguments

from freeze_policies import FreezePolicyError, FreezeTrainer, anatomy, get_policy, list_policies
from freeze_policies.__main__ import example_options


def bare_bert():
    torch.manual_seed(0)
    return transformers.AutoModel.from_config(AutoConfig.for_model("bert", **TINY))


class MeanPooled(FreezeTrainer):
    """Mean of last_hidden_state, pulled towards a fixed target (a stand-in for a contrastive
    loss: what matters is which parameters the loss reaches)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        hidden = model(input_ids=inputs["input_ids"]).last_hidden_state
        loss = (hidden.mean(1) - 1.0).pow(2).mean()
        return (loss, None) if return_outputs else loss


class Texts(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return {"input_ids": torch.arange(3, 10) + i}


def test_the_pooler_is_the_head_and_the_output_never_reads_it():
    anat = anatomy(bare_bert())
    assert anat.head == ["pooler.dense.weight", "pooler.dense.bias"]
    assert anat.head_unread == anat.head
    classifier = transformers.AutoModelForSequenceClassification.from_config(
        AutoConfig.for_model("bert", **TINY, num_labels=2))
    assert anatomy(classifier).head_unread == []  # the classifier reads the pooler


REFUSED = {"all_but_head", "gradual_unfreeze", "train_parts", "freeze_parts"}


@pytest.mark.parametrize("name", list_policies())
def test_every_policy_trains_or_is_refused_in_one_line_before_training(name, tmp_path):
    model = bare_bert()
    options = example_options(name, 3)
    if name in ("gradual_unfreeze", "lisa", "auto_freeze"):
        options = {**options, "every": 1, "unit": "steps"}
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4,
                             max_steps=2, learning_rate=1e-2, report_to="none",
                             save_strategy="no", use_cpu=True, logging_strategy="no", seed=0,
                             disable_tqdm=True, remove_unused_columns=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    if name in REFUSED:
        with pytest.raises(FreezePolicyError, match=rf"^policy '{name}' would train only "
                           r"pooler.dense.bias, pooler.dense.weight of BertModel at stage 0, "
                           r"which its output never reads \(a pooler that mean pooling skips\)"):
            MeanPooled(model=model, args=args, train_dataset=Texts(),
                       freeze_policy={"name": name, **options}).train()
        assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
        return
    trainer = MeanPooled(model=model, args=args, train_dataset=Texts(),
                         freeze_policy={"name": name, **options})
    trainer.train()
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert moved and not moved & {"pooler.dense.weight", "pooler.dense.bias"}
    assert trainer.frozen_audit.passed


def test_top_blocks_by_role_train_through_mean_pooling(tmp_path):
    model = bare_bert()
    policy = get_policy("train_parts", parts=["attention", "mlp"],
                        policy={"name": "top_n", "n": 1})
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4,
                             max_steps=1, learning_rate=1e-2, report_to="none",
                             save_strategy="no", use_cpu=True, logging_strategy="no", seed=0,
                             disable_tqdm=True, remove_unused_columns=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    MeanPooled(model=model, args=args, train_dataset=Texts(), freeze_policy=policy).train()
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert moved and all(n.startswith("encoder.layer.2.") for n in moved)
