"""Frozen-prefix cache: cached training equals uncached training, and refusals are clear."""

import copy

import pytest
import torch
from tiny_models import TINY
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from freeze_policies import FreezeOptions, FreezePolicyError, anatomy, get_policy, set_trainable
from freeze_policies.training.prefix_cache import PrefixCache, frozen_prefix_depth

DEPTH4 = dict(TINY, num_hidden_layers=4)
MODELS = {
    "bert": lambda: AutoModelForSequenceClassification.from_config(AutoConfig.for_model(
        "bert", num_labels=3, hidden_dropout_prob=0.2, **DEPTH4)),
    "llama": lambda: AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "llama", num_key_value_heads=1, **DEPTH4)),
}


def batches(causal: bool):
    generator = torch.Generator().manual_seed(1)
    out = []
    for _ in range(3):
        ids = torch.randint(3, 99, (4, 10), generator=generator)
        mask = torch.ones_like(ids)
        mask[0, 6:] = 0  # one padded row
        ids[0, 6:] = 0
        labels = (ids.masked_fill(mask == 0, -100) if causal
                  else torch.randint(0, 3, (4,), generator=generator))
        out.append({"input_ids": ids, "attention_mask": mask, "labels": labels})
    return out


def train(model, policy, *, replay, epochs=3, directory=None):
    torch.manual_seed(5)
    policy.apply(model)
    cache = PrefixCache(model, anatomy(model), directory=directory, replay=replay)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses, modes = [], []
    for _ in range(epochs):
        for batch in batches(causal=model.get_output_embeddings() is not None):
            model.train()
            with cache.step(batch) as mode:
                loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
            modes.append(mode)
    return losses, modes, cache


@pytest.mark.parametrize("arch", ["bert", "llama"])
@pytest.mark.parametrize("policy_name,options", [("bottom_n", {"n": 2}), ("all_but_head", {})])
def test_cached_run_equals_uncached_run_step_by_step(arch, policy_name, options):
    base = MODELS[arch]()
    if arch == "llama":
        options = dict(options, tied_weights="freeze")
    policy = get_policy(policy_name, **options)
    uncached, cached = copy.deepcopy(base), copy.deepcopy(base)
    losses_u, modes_u, _ = train(uncached, policy, replay=False)
    losses_c, modes_c, cache = train(cached, policy, replay=True)

    assert modes_u == ["record"] * 9
    assert modes_c == ["record"] * 3 + ["replay"] * 6  # built in epoch 1, replayed after
    assert losses_c == pytest.approx(losses_u, abs=1e-6)
    for (name, a), b in zip(uncached.named_parameters(), cached.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    assert cache.depth == (2 if policy_name == "bottom_n" else 4)
    assert len(cache.store) == 12  # one entry per distinct example
    assert cache.nbytes == sum(int(b["attention_mask"].sum()) for b in batches(False)) * 32 * 4


def test_prefix_runs_in_eval_mode_so_dropout_is_off_there():
    model = MODELS["bert"]()
    get_policy("bottom_n", n=2).apply(model)
    cache = PrefixCache(model, anatomy(model))
    model.train()
    with cache.step(batches(False)[0]):
        model(**batches(False)[0])
    assert not model.bert.embeddings.dropout.training
    assert not model.bert.encoder.layer[1].training
    assert model.bert.encoder.layer[2].training  # the trained top keeps its dropout


def test_disk_store_gives_the_same_run(tmp_path):
    base = MODELS["bert"]()
    policy = get_policy("bottom_n", n=3)
    memory, disk = copy.deepcopy(base), copy.deepcopy(base)
    losses_m, _, _ = train(memory, policy, replay=True)
    losses_d, modes, cache = train(disk, policy, replay=True, directory=tmp_path)
    assert losses_d == losses_m and modes.count("replay") == 6
    assert cache.store.path.stat().st_size == cache.nbytes > 0
    cache.close()
    assert not any(tmp_path.iterdir())


def test_depth_change_empties_and_rebuilds_the_cache():
    model = MODELS["bert"]()
    policy = get_policy("gradual_unfreeze", every=1, unit="steps")
    anat = anatomy(model)
    set_trainable(model, policy.trainable_names(anat, 0))  # head only: depth 4
    cache = PrefixCache(model, anat)
    with cache.step(batches(False)[0]):
        model(**batches(False)[0])
    assert cache.depth == 4 and len(cache.store) == 4
    set_trainable(model, policy.trainable_names(anat, 1))  # top block opens
    assert cache.refresh() is True
    assert cache.depth == 3 and len(cache.store) == 0 and cache.stats["rebuilds"] == 1
    assert cache.refresh() is False
    set_trainable(model, policy.trainable_names(anat, 5))  # everything open: cache off
    assert cache.refresh() is True and cache.depth == 0 and cache.store is None
    with cache.step(batches(False)[0]) as mode:
        model(**batches(False)[0])
    assert mode == "off"


@pytest.mark.parametrize("policy,options", [("lisa", {"k": 1}), ("embeddings", {}),
                                            ("bitfit", {}), ("top_n", {"n": 4})])
def test_policies_without_a_frozen_prefix_are_refused(policy, options):
    model = MODELS["bert"]()
    get_policy(policy, **options).apply(model)
    assert frozen_prefix_depth(model, anatomy(model)) == 0
    with pytest.raises(FreezePolicyError, match=r"the current trainable set has no frozen prefix"):
        PrefixCache(model, anatomy(model))


# -- through FreezeTrainer -------------------------------------------------------------------

def padded_dataset(causal: bool):
    """16 examples of varying length (right-padded by the collator below)."""
    import datasets

    generator = torch.Generator().manual_seed(3)
    rows = []
    for i in range(16):
        ids = torch.randint(3, 99, (6 + i % 5,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": ids if causal else i % 3})
    return datasets.Dataset.from_list(rows)


def pad_collator(features):
    width = max(len(f["input_ids"]) for f in features)
    ids = torch.zeros((len(features), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = []
    for row, feature in enumerate(features):
        n = len(feature["input_ids"])
        ids[row, :n] = torch.tensor(feature["input_ids"])
        mask[row, :n] = 1
        labels.append(feature["labels"])
    if isinstance(labels[0], list):
        label_tensor = torch.full_like(ids, -100)
        for row, seq in enumerate(labels):
            label_tensor[row, : len(seq)] = torch.tensor(seq)
    else:
        label_tensor = torch.tensor(labels)
    return {"input_ids": ids, "attention_mask": mask, "labels": label_tensor}


def trainer_run(tmp_path, arch, policy, **options):
    from transformers import TrainingArguments

    from freeze_policies import FreezeTrainer

    torch.manual_seed(0)
    model = MODELS[arch]()
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=3,
                             per_device_train_batch_size=4, learning_rate=1e-2, weight_decay=0.1,
                             logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
                             seed=0, dataloader_num_workers=0, disable_tqdm=True)
    trainer = FreezeTrainer(model=model, args=args, train_dataset=padded_dataset(arch == "llama"),
                            data_collator=pad_collator, freeze_policy=policy,
                            freeze_options=FreezeOptions(**options))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return trainer, losses


@pytest.mark.parametrize("arch,policy", [
    ("bert", {"name": "bottom_n", "n": 2}),
    ("llama", {"name": "all_but_head", "tied_weights": "freeze"}),
    ("bert", {"name": "gradual_unfreeze", "every": 3, "unit": "steps"}),
])
def test_freeze_trainer_cached_equals_uncached(tmp_path, arch, policy):
    uncached, losses_u = trainer_run(tmp_path / "u", arch, policy, frozen_prefix_eval=True)
    cached, losses_c = trainer_run(tmp_path / "c", arch, policy, cache_frozen_prefix=True)
    assert len(losses_c) == 12
    assert losses_c == pytest.approx(losses_u, abs=1e-5)
    for (name, a), b in zip(uncached.model.named_parameters(), cached.model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=name)
    stats = cached.prefix_cache.stats
    if policy["name"] == "gradual_unfreeze":  # stages 0..3 in 12 steps: depth 4 -> 3 -> 2 -> 1
        assert stats["rebuilds"] == 3 and cached.prefix_cache.depth == 1
        assert stats["hits"] > 0
    else:
        assert stats["records"] == 4 and stats["hits"] == 8  # epoch 1 builds, 2 and 3 replay
    assert uncached.prefix_cache.stats["hits"] == 0


@pytest.mark.parametrize("options,message", [
    ({"freeze_policy": {"name": "lisa", "k": 1}, "cache_frozen_prefix": True},
     r"the current trainable set has no frozen prefix"),
    ({"freeze_policy": {"name": "bottom_n", "n": 2}, "cache_frozen_prefix": True,
      "freeze_mode": "zero_lr"}, r"cache_frozen_prefix needs freeze_mode='requires_grad'"),
    ({"cache_frozen_prefix": True}, r"need a freeze_policy with a frozen prefix"),
])
def test_freeze_trainer_refuses_cache_without_a_frozen_prefix(tmp_path, options, message):
    from transformers import TrainingArguments

    from freeze_policies import FreezeTrainer

    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    with pytest.raises(FreezePolicyError, match=message):
        FreezeTrainer(model=MODELS["bert"](), args=args, train_dataset=padded_dataset(False),
                      data_collator=pad_collator, **options)
