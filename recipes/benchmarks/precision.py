"""Training memory with frozen weights in bfloat16 vs float32, on one policy and model.

    python recipes/bench.py precision --out results/bench_precision.json \\
        [--model smollm2] [--policy bottom_n] [--n 24] [--batch-size 8] [--seq-len 64] [--steps 2]

Two variants of the same run, each in a fresh child process (so that each has its own peak
RSS), both under bf16 autocast (``bf16=True``):

- ``fp32_frozen``: the model loaded in float32; every parameter stays float32.
- ``bf16_frozen``: the model loaded in bfloat16 (``from_pretrained(dtype=torch.bfloat16)``),
  ``frozen_dtype="bfloat16"``: the trainable parameters are upcast to float32, the frozen
  matrices stay bfloat16 as loaded (``freeze_policies.training.precision``).

Each child builds a ``FreezeTrainer`` (AdamW lr 1e-5, weight decay 0.01, ``adamw_torch``) with
``bottom_n`` (``--n`` blocks frozen, with the embeddings) on a fixed random batch (``--batch-size``
x ``--seq-len`` tokens, 3 labels, seed 0, the batch ``recipes/bench.py`` uses) and trains
``--steps`` steps. Reported per variant:

- **accounted memory** (``freeze_policies.costs.measure.account_memory``): parameter bytes as stored
  (frozen and trainable, by dtype) + gradient bytes (the most held at an optimizer step) +
  optimizer state (with AdamW's step scalars) + bytes saved for backward by one training-mode
  forward under the same autocast (parameters' own storages excluded).
- **peak RSS** of the child (``ru_maxrss``: loading, building and training together) and, on
  CUDA, ``torch.cuda.max_memory_allocated`` during training.
- the frozen-weights audit, the step time (median) and the dtype moves made.

The target: accounted memory of ``bf16_frozen`` at most 0.75 of ``fp32_frozen``. The JSON
(written atomically) has both variants, the target, the command, hardware and versions; a
markdown table is printed. Flags, model, batch, step timer and the JSON are
``recipes.benchmarks.harness``'s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from recipes.benchmarks import harness as benchlib
from recipes.report.benches import precision_table

TARGET_RATIO = 0.75
VARIANTS = {
    "fp32_frozen": {"load_dtype": None, "frozen_dtype": None},
    "bf16_frozen": {"load_dtype": "bfloat16", "frozen_dtype": "bfloat16"},
}


def measure(args) -> dict:
    """One variant, in this process: build, train ``--steps`` steps, account the memory."""
    import datasets
    from transformers import default_data_collator

    from freeze_policies import FreezeOptions, FreezeTrainer, get_policy, saved_for_backward_bytes
    from freeze_policies.costs.measure import account_memory, peak_rss_bytes
    from freeze_policies.training.precision import dtype_bytes

    variant = VARIANTS[args.child]
    device = torch.device(args.device)
    load_dtype = variant["load_dtype"]
    dtype = None if load_dtype is None else getattr(torch, load_dtype)
    model = benchlib.load_classifier(args.model, dtype)
    batch = benchlib.random_batch(model.config.vocab_size, args.batch_size, args.seq_len)
    rows = benchlib.repeated_rows(batch, args.steps)
    policy = get_policy(args.policy, n=args.n)

    with tempfile.TemporaryDirectory(prefix="bench-precision-") as scratch:
        arguments = benchlib.training_args(scratch, args.batch_size, args.steps, device, bf16=True)
        timer = benchlib.StepTimer(device)
        trainer = FreezeTrainer(
            model=model,
            args=arguments,
            train_dataset=datasets.Dataset.from_dict(rows),
            data_collator=default_data_collator,
            callbacks=[timer],
            freeze_policy=policy,
            freeze_options=FreezeOptions(frozen_dtype=variant["frozen_dtype"]),
        )
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        metrics = trainer.train().metrics
        cuda_peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        model.train()
        on_device = {k: v.to(model.device) for k, v in batch.items()}
        with trainer.accelerator.autocast():
            saved = saved_for_backward_bytes(model, on_device)
    account = account_memory(
        model,
        gradient_bytes=metrics["gradient_bytes"],
        optimizer_state_bytes=metrics["optimizer_state_bytes"],
        saved_for_backward_bytes=saved,
    )
    anat = trainer.freeze_callback.anat
    frozen = [p for p in model.parameters() if not p.requires_grad]
    return {
        "variant": args.child,
        **variant,
        "policy": args.policy,
        "frozen_blocks": args.n,
        "depth": anat.depth,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "total_params": sum(p.numel() for p in model.parameters()),
        "frozen_matrix_elements": sum(p.numel() for p in frozen if p.dim() >= 2),
        **{key: value for key, value in account.as_dict().items() if key != "total_bytes"},
        "accounted_bytes": account.total_bytes,
        "dtype_bytes": dtype_bytes(model),
        "dtype_moves": len(trainer.dtype_moves),
        "peak_rss_bytes": peak_rss_bytes(),
        "cuda_max_memory_allocated": cuda_peak,
        "frozen_audit_passed": metrics.get("frozen_audit_passed"),
        "step_times_s": timer.times,
        "median_step_s": statistics.median(timer.times) if timer.times else None,
    }


def run_variant(name: str, args) -> dict:
    """``measure`` in a fresh child process (its own peak RSS)."""
    with tempfile.TemporaryDirectory(prefix="bench-precision-") as scratch:
        out = Path(scratch) / "variant.json"
        command = [
            sys.executable, "-m", "recipes.benchmarks.precision", "--child", name,
            "--child-out", str(out),
            "--model", args.model, "--policy", args.policy, "--n", str(args.n),
            "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
            "--steps", str(args.steps), "--device", args.device,
        ]
        repository = Path(__file__).resolve().parents[2]  # so the child imports `recipes`
        done = subprocess.run(command, capture_output=True, text=True, cwd=repository)
        if done.returncode != 0:
            raise SystemExit(f"error: variant {name} failed:\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchlib.add_flags(parser, out="results/bench_precision.json", model="smollm2", batch_size=8)
    parser.add_argument("--policy", default="bottom_n", help="a policy with an option n")
    parser.add_argument("--n", type=int, default=24, help="blocks frozen (with the embeddings)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--child", choices=list(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    benchlib.check_positive(args, "steps", "batch_size", "seq_len")
    if args.child:
        result = measure(args)
        Path(args.child_out).write_text(json.dumps(result))
        return result

    started = time.perf_counter()
    rows = [run_variant(name, args) for name in VARIANTS]
    by_name = {row["variant"]: row for row in rows}
    fp32, low = by_name["fp32_frozen"], by_name["bf16_frozen"]
    ratio = low["accounted_bytes"] / fp32["accounted_bytes"]
    rss = low["peak_rss_bytes"] / fp32["peak_rss_bytes"]
    targets = {
        "accounted_memory_ratio": {
            "value": ratio,
            "threshold": f"<= {TARGET_RATIO}",
            "passed": ratio <= TARGET_RATIO,
        },
    }
    payload = {
        "model": args.model,
        "policy": {"name": args.policy, "n": args.n},
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "steps": args.steps,
        "device": args.device,
        "autocast": "bf16",
        "optimizer": f"torch.optim.AdamW(lr={benchlib.LEARNING_RATE}, "
                     f"weight_decay={benchlib.WEIGHT_DECAY})",
        "variants": rows,
        "targets": targets,
        "peak_rss_ratio": rss,
    }
    payload = benchlib.write_result(args.out, payload, "recipes/bench.py precision", argv, started)
    print(precision_table(payload))
    print(f"\npeak RSS ratio (bf16_frozen / fp32_frozen): {rss:.3f}")
    print(f"wrote {args.out} ({payload['bench_runtime_s']} s)")
    return payload


if __name__ == "__main__":
    main()
