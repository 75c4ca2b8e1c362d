"""An embedding model trained the way most people train one: sentence-transformers'
``SentenceTransformerTrainer`` (a Trainer subclass) with ``FreezeScheduleCallback``, mean pooling
and an in-batch contrastive loss. Every registered policy either trains, with its frozen weights
bit-identical, or is refused in one line before any weight moves; never torch's "element 0 of
tensors does not require grad" (the anatomy calls BERT's pooler the head, and mean pooling never
reads it)."""

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from freeze_policies import (
    FreezePolicyError,
    FreezeScheduleCallback,
    anatomy,
    get_policy,
    list_policies,
)
from freeze_policies.__main__ import example_options
from recipes.launcher.models import resolve_model_path

st = pytest.importorskip("sentence_transformers")  # in the dev extra: make setup installs it
from sentence_transformers import losses, models  # noqa: E402

# Policies whose first stage trains only the pooler, which mean pooling never reads.
REFUSED = {"all_but_head", "gradual_unfreeze", "train_parts", "freeze_parts"}


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-encoder")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    torch.manual_seed(0)
    config = AutoConfig.for_model("bert", hidden_size=32, num_hidden_layers=3,
                                  num_attention_heads=2, intermediate_size=37,
                                  vocab_size=tokenizer.vocab_size)
    AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def embedding_model(folder):
    modules = [models.Transformer(folder), models.Pooling(32, "mean")]
    return st.SentenceTransformer(modules=modules, device="cpu")


def pairs():
    import datasets

    return datasets.Dataset.from_dict({"anchor": [f"a sentence about {i}" for i in range(16)],
                                       "positive": [f"one more about {i}" for i in range(16)]})


def test_the_pooler_is_found_unread_through_the_wrapper(tiny_encoder):
    anat = anatomy(embedding_model(tiny_encoder))
    assert anat.traced and len(anat.blocks) == 3
    assert anat.head_unread == anat.head == ["0.model.pooler.dense.weight",
                                             "0.model.pooler.dense.bias"]


@pytest.mark.parametrize("name", list_policies())
def test_every_policy_trains_or_is_refused_before_training(name, tiny_encoder, tmp_path):
    model = embedding_model(tiny_encoder)
    options = example_options(name, 3)
    if name in ("gradual_unfreeze", "lisa", "auto_freeze"):
        options = {**options, "every": 1, "unit": "steps"}
    callback = FreezeScheduleCallback(get_policy(name, **options))
    args = st.SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2,
        report_to="none", save_strategy="no", use_cpu=True, logging_strategy="no", seed=0,
        disable_tqdm=True)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def train():
        trainer = st.SentenceTransformerTrainer(
            model=model, args=args, train_dataset=pairs(),
            loss=losses.MultipleNegativesRankingLoss(model),
            callbacks=[callback])
        trainer.train()
        return trainer

    if name in REFUSED:  # refused when the trainer is built (the callback sees the model then)
        with pytest.raises(FreezePolicyError, match=rf"^policy '{name}' would train only "
                           r"0\.model\.pooler\.dense\.bias, 0\.model\.pooler\.dense\.weight of "
                           r"SentenceTransformer at stage 0, which its output never reads"):
            train()
        assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
        return
    trainer = train()
    moved = {n for n, p in model.named_parameters() if not torch.equal(before[n], p)}
    assert moved, "nothing trained"
    assert moved <= set(callback.ever_trainable)  # what no stage opened stayed bit-identical
    assert not moved & {"0.model.pooler.dense.weight", "0.model.pooler.dense.bias"}
    audit = [e for e in trainer.state.log_history if "frozen_audit_passed" in e]
    assert audit and audit[-1]["frozen_audit_passed"] is True
