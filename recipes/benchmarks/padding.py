"""How many of a step's tokens are padding: random against length-grouped batches.

    python recipes/bench.py padding --out results/bench_padding.json \\
        [--model minilm] [--batch-size 32] [--eval-batch-size 128] [--seq-len 64] \\
        [--max-train-samples 1500] [--max-eval-samples 2000]

The default profile's splits (the tweets, seed 42, the profile's sample sizes), tokenized by the
model's tokenizer and truncated to ``--seq-len``. The batches are not run: each sampler's order is
drawn, and a batch costs its row count times its longest row, as dynamic padding
(``DataCollatorWithPadding``) makes it. Compared are ``train``'s random batches (the Trainer's
default), ``test`` in order (the Trainer's default for evaluation), and both under
``train_sampling_strategy="group_by_length"`` (``LengthGroupedSampler``, seed 0), which
transformers applies to training and evaluation. The ratio to the real token count is the
compute that padding adds, to first order. No timing is involved, so the machine's load does
not matter.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from recipes.benchmarks import harness as benchlib


def padded_tokens(lengths: np.ndarray, order, batch_size: int) -> int:
    order = np.asarray(list(order))
    return int(sum(len(batch) * lengths[batch].max()
                   for batch in np.array_split(order, range(batch_size, len(order), batch_size))))


def measure(lengths: np.ndarray, batch_size: int, default: str) -> dict:
    from transformers.trainer_pt_utils import LengthGroupedSampler

    orders = {
        default: (np.random.default_rng(0).permutation(len(lengths)) if default == "random"
                  else np.arange(len(lengths))),
        "group_by_length": LengthGroupedSampler(batch_size, lengths=lengths.tolist(),
                                                generator=torch.Generator().manual_seed(0)),
    }
    real = int(lengths.sum())
    return {"rows": len(lengths), "batch_size": batch_size, "real_tokens": real,
            "mean_tokens": real / len(lengths),
            **{f"{name}_ratio": padded_tokens(lengths, order, batch_size) / real
               for name, order in orders.items()}}


def markdown(payload: dict) -> str:
    lines = ["| split | rows | batch | mean tokens | default order: padded / real | "
             "length-grouped: padded / real | tokens saved by grouping |",
             "|---|---|---|---|---|---|---|"]
    for split, default in (("train", "random"), ("test", "sequential")):
        row = payload[split]
        lines.append(f"| {split} | {row['rows']} | {row['batch_size']} | {row['mean_tokens']:.1f} "
                     f"| {row[f'{default}_ratio']:.2f} ({default}) | "
                     f"{row['group_by_length_ratio']:.2f} | "
                     f"{row[f'{default}_ratio'] / row['group_by_length_ratio']:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchlib.add_flags(parser, out="results/bench_padding.json", device=False)
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--max-train-samples", type=int, default=1500)
    parser.add_argument("--max-eval-samples", type=int, default=2000)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    from transformers import AutoTokenizer

    from recipes.data.sources import load_classification_splits
    from recipes.launcher.models import resolve_model_path

    splits, _ = load_classification_splits("tweets", seed=42,
                                           max_train_samples=args.max_train_samples,
                                           max_eval_samples=args.max_eval_samples)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.model))
    payload = {"model": args.model, "seq_len": args.seq_len}
    for split, batch_size, default in (("train", args.batch_size, "random"),
                                       ("test", args.eval_batch_size, "sequential")):
        encoded = tokenizer(list(splits[split]["text"]), truncation=True, max_length=args.seq_len)
        lengths = np.array([len(ids) for ids in encoded["input_ids"]])
        payload[split] = measure(lengths, batch_size, default)
    payload = benchlib.write_result(args.out, payload, "recipes/bench.py padding", argv, started)
    print(markdown(payload))
    return payload


if __name__ == "__main__":
    main()
