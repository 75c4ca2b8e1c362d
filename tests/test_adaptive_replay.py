"""The frozen-prefix cache under auto_freeze: a freeze in the first epoch replays in every later
one, exactly as the uncached run computes it, and a deeper level is built from the shallower one
bit for bit as if recorded from scratch."""

from __future__ import annotations

import copy

import datasets
import pytest
import torch
from test_prefix_cache import MODELS, batches, pad_collator
from trainer_support import one_torch_thread  # noqa: F401
from transformers import TrainingArguments

from freeze_policies import FreezeTrainer, anatomy, get_policy
from freeze_policies.training.prefix_cache import PrefixCache


def levels(cache: PrefixCache) -> dict[int, dict[bytes, torch.Tensor]]:
    return {level: {key: store.get(key) for key in store.entries}
            for level, store in cache.levels.items()}


def run_batches(model, cache, causal):
    for batch in batches(causal):
        model.train()
        with cache.step(batch) as mode:
            model(**batch)
        assert mode == "record"


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_a_deeper_level_built_from_the_shallower_one_equals_one_recorded_from_scratch(arch):
    causal = arch == "llama"
    options = {"tied_weights": "freeze"} if causal else {}
    base = MODELS[arch]()
    deepened, scratch = copy.deepcopy(base), copy.deepcopy(base)

    get_policy("bottom_n", n=1, **options).apply(deepened)
    cache = PrefixCache(deepened, anatomy(deepened))
    run_batches(deepened, cache, causal)  # level 1: 12 examples
    get_policy("bottom_n", n=3, **options).apply(deepened)  # freeze blocks 1 and 2 as well
    assert cache.refresh() and cache.depth == 3
    run_batches(deepened, cache, causal)  # level 3 from level 1: blocks 1, 2 only
    assert cache.stats["rows_deepened"] == 12 and cache.stats["rows_filled"] == 24
    assert set(cache.levels) == {3}  # level 1 emptied into level 3, then dropped

    get_policy("bottom_n", n=3, **options).apply(scratch)
    fresh = PrefixCache(scratch, anatomy(scratch))
    run_batches(scratch, fresh, causal)
    assert fresh.stats["rows_deepened"] == 0
    ours, theirs = levels(cache)[3], levels(fresh)[3]
    assert ours.keys() == theirs.keys() and len(ours) == 12
    assert [key for key in ours if not torch.equal(ours[key], theirs[key])] == []


def test_a_shallower_depth_drops_the_deeper_levels():
    model = MODELS["bert"]()
    get_policy("bottom_n", n=1).apply(model)
    cache = PrefixCache(model, anatomy(model))
    run_batches(model, cache, False)
    get_policy("bottom_n", n=2).apply(model)
    cache.refresh()
    assert set(cache.levels) == {1, 2} and len(cache.levels[1]) == 12
    get_policy("bottom_n", n=1).apply(model)  # block 1 trains again: level 2 is stale
    cache.refresh()
    assert set(cache.levels) == {1} and len(cache.store) == 12


def test_a_batch_mixing_cached_and_new_examples_fills_only_the_new_ones():
    model = MODELS["bert"]()
    get_policy("bottom_n", n=2).apply(model)
    cache = PrefixCache(model, anatomy(model))
    first, second = batches(False)[:2]
    with cache.step(first):
        model(**first)
    mixed = {name: torch.cat([first[name][:2], second[name][:2]]) for name in first}
    with cache.step(mixed) as mode:
        model(**mixed)
    assert mode == "record" and cache.stats["rows_filled"] == 6 and len(cache.store) == 6
    with cache.step(mixed) as mode:
        model(**mixed)
    assert mode == "replay" and cache.stats["rows_filled"] == 6


# -- through FreezeTrainer: a freeze in epoch 1, replayed in epochs 2 and 3 ----------------------
def varied_dataset(n=32):
    generator = torch.Generator().manual_seed(4)
    rows = []
    for i in range(n):
        ids = torch.randint(3, 99, (5 + i % 7,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": i % 3})
    return datasets.Dataset.from_list(rows)


def trainer_run(tmp_path, **options):
    torch.manual_seed(0)
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=3,
                             per_device_train_batch_size=4, learning_rate=1e-2, weight_decay=0.1,
                             logging_steps=1, report_to=[], use_cpu=True, save_strategy="no",
                             seed=0, dataloader_num_workers=0, disable_tqdm=True)
    trainer = FreezeTrainer(
        model=MODELS["bert"](), args=args, train_dataset=varied_dataset(),
        data_collator=pad_collator, **options,
        # percentile=100: the lowest trainable block freezes at every decision (steps 4 and 6 of
        # the first epoch's 8), down to the floor of one trainable block (depth 3 of 4)
        freeze_policy={"name": "auto_freeze", "every": 2, "percentile": 100.0},
    )
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return trainer, losses


def test_in_epoch_freezes_replay_in_later_epochs_bit_for_bit(tmp_path):
    uncached, losses_u = trainer_run(tmp_path / "u", frozen_prefix_eval=True)
    cached, losses_c = trainer_run(tmp_path / "c", cache_frozen_prefix=True)
    depths = [(e["step"], e["auto_freeze_depth"]) for e in cached.state.log_history
              if "auto_freeze_depth" in e]
    assert depths[:3] == [(4, 1), (6, 2), (8, 3)]
    assert depths == [(e["step"], e["auto_freeze_depth"]) for e in uncached.state.log_history
                      if "auto_freeze_depth" in e]
    assert len(losses_c) == 24 and losses_c == losses_u
    for (name, a), b in zip(uncached.model.named_parameters(), cached.model.parameters()):
        assert torch.equal(a, b), name
    stats = cached.prefix_cache.stats
    # steps 5-6 fill level 1 (8 rows), 7-8 level 2 (8 rows); epoch 2 (depth 3 from step 9)
    # deepens those 16 to level 3 and fills the other 16 from the embeddings: 48 rows filled,
    # 16 of them deepened; epoch 3 replays every step
    assert stats["rows_filled"] == 48 and stats["rows_deepened"] == 16
    assert stats["hits"] + stats["records"] == 20 and stats["hits"] >= 8
    # the run ends at depth 3; FreezeTrainer.train released the levels (and their files) then
    assert cached.prefix_cache.depth == 3 and cached.prefix_cache.levels == {}
    assert uncached.prefix_cache.stats["hits"] == 0 and cached.frozen_audit.passed
