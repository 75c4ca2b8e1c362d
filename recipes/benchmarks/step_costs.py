"""Cost benchmark: step time, FLOP-model prediction and memory of every method on one model.

    python recipes/bench.py --out results/bench.json [--rounds 10] [--warmup 2] [--model minilm]

What is measured, and how:

- **One process, one batch, interleaved.** The model is loaded once; every method gets a deep
  copy, its own freezing or adapters and its own ``torch.optim.AdamW`` (lr 1e-5, weight decay
  0.01), all built before any timing. A fixed random batch (``--batch-size`` x ``--seq-len``
  tokens, seed 0, 3 labels) is used for every step. After ``--warmup`` rounds, each timed round
  times one step of every method (forward + backward + ``optimizer.step`` + ``zero_grad``),
  starting from a different method each round, so that drift in the machine's speed spreads over
  all methods. Every round does the same work; a round that took more than
  ``--round-tolerance`` (1.2) times the fastest one was disturbed by other work on the machine
  and is left out (see ``Rounds``). Rounds go on until ``--rounds`` undisturbed ones are in (at
  most ``--max-rounds`` timed). A method's step time is its median over the kept rounds; its
  ratio is that median over full fine-tuning's. Torch uses as many threads as it is given.
- **The FLOP-model ratio** is ``freeze_policies.costs.flops.predict_cost`` for the method's
  trainable set over the prediction for full fine-tuning of the plain model (prompt tuning is
  priced at ``seq_len + num_virtual_tokens``).
- **Bytes, measured on the method's own step**: gradients (``.grad`` tensors after backward),
  optimizer state (Adam moments after the warm-up; ``step`` scalars excluded), the part of it
  held for parameters the method freezes (0 unless frozen parameters are in the optimizer), and
  tensors saved for backward (one forward under ``saved_tensors_hooks``, parameters excluded).
- **Memory per method.** On CPU the process's peak RSS covers all methods at once, so per method
  this reports *accounted* memory: parameters + gradients + optimizer state (with ``step``
  scalars) + saved-for-backward bytes. On CUDA it also reports the peak of
  ``torch.cuda.max_memory_allocated`` during the method's steps, minus what other methods hold.
- **Freeze modes** for ``bottom_n (n=4)``: ``zero_lr`` (every parameter requires grad, the frozen
  ones sit in an lr=0 group) and ``zero_grad`` (every parameter trains, the frozen ones' gradients
  are zeroed after backward).
- **FreezeTrainer** (when importable): ``FreezeTrainer`` with ``bottom_n (n=4)`` runs its own
  ``train()`` loop; a callback runs one round of the plain-loop methods at each of its
  ``on_step_begin`` events, then times the trainer's step from ``on_step_begin`` to
  ``on_step_end`` (``training_step``, gradient clipping, optimizer and scheduler step,
  ``zero_grad``; data loading and logging excluded). Its ratio to the plain ``bottom_n (n=4)``
  loop is the overhead of the trainer.

The JSON (written atomically) has every method's figures, the targets
(``recipes.benchmarks.targets``: each with value, threshold, passed and, when missed, an
explanation), the command, hardware and versions. A markdown table is printed. The methods and
their steps are ``recipes.benchmarks.methods``,
the trainer's row ``recipes.benchmarks.trainer``, the flags, batch, model and rounds
``recipes.benchmarks.harness``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

from freeze_policies import anatomy
from freeze_policies.costs.flops import predict_cost
from freeze_policies.costs.measure import optimizer_state_bytes, saved_for_backward_bytes
from recipes.benchmarks.harness import (
    LEARNING_RATE,
    WEIGHT_DECAY,
    Rounds,
    add_flags,
    load_classifier,
    random_batch,
    write_result,
)
from recipes.benchmarks.methods import METHODS, Runner, build_runner
from recipes.benchmarks.targets import evaluate_targets
from recipes.benchmarks.trainer import run_trainer_rounds, trainer_driver, trainer_row
from recipes.report.benches import bench_markdown


def benchmark(args) -> dict:
    device = torch.device(args.device)
    base = load_classifier(args.model).to(device)
    batch = random_batch(base.config.vocab_size, args.batch_size, args.seq_len, device)
    base_anat = anatomy(base)
    full_prediction = predict_cost(
        base, base_anat.names(), base_anat, seq_len=args.seq_len, batch_size=args.batch_size
    )

    runners = [build_runner(spec, base, args.seq_len) for spec in METHODS]
    rounds = Rounds(
        runners,
        batch,
        device,
        warmup=args.warmup,
        wanted=args.rounds,
        limit=args.max_rounds,
        tolerance=args.round_tolerance,
    )
    trainer, trainer_note, trainer_measured = None, "disabled with --no-trainer", None
    with tempfile.TemporaryDirectory(prefix="freeze-bench-") as scratch:
        if not args.no_trainer:
            total = args.warmup + args.max_rounds
            trainer, trainer_note = trainer_driver(base, batch, total, device, scratch)
        if trainer is not None:
            trainer_measured = run_trainer_rounds(trainer, rounds)
        else:
            r = 0
            while not rounds.done():
                rounds.run(r)
                r += 1

    full_median = statistics.median(rounds.times_of(runners[0].spec.label))
    rows = [
        method_row(runner, rounds, batch, full_median, full_prediction, args, device)
        for runner in runners
    ]
    if trainer_measured is not None:
        rows.append(trainer_row(trainer, trainer_measured, rounds, batch, full_median, rows))
    notes = [trainer_note] if trainer_note else []
    disturbed = disturbance_note(rounds)
    if disturbed:
        notes.append(disturbed)
    targets = evaluate_targets(rows, trainer_note, disturbed)
    return {
        "model": args.model,
        "model_class": type(base).__name__,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "warmup": args.warmup,
        "rounds": len(rounds.kept()),
        "rounds_wanted": args.rounds,
        "rounds_detail": rounds.summary(),
        "device": str(device),
        "optimizer": f"torch.optim.AdamW(lr={LEARNING_RATE}, weight_decay={WEIGHT_DECAY})",
        "memory_kind": (
            "cuda_step_peak + parameters + optimizer state"
            if device.type == "cuda"
            else "accounted: parameters + gradients + optimizer state + saved for backward"
        ),
        "full_step_flops_predicted": full_prediction.step_flops,
        "methods": rows,
        "targets": targets,
        "notes": notes,
    }


def method_row(runner: Runner, rounds: Rounds, batch, full_median, full_prediction, args, device):
    model = runner.model
    # priced on what requires grad: everything under zero_lr and zero_grad, as autograd sees it
    prediction = predict_cost(model, seq_len=runner.seq_len_priced, batch_size=args.batch_size)
    saved = saved_for_backward_bytes(model, batch)
    optimizer_bytes = optimizer_state_bytes(runner.optimizer)
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    memory = (
        parameter_bytes
        + runner.gradient_bytes
        + optimizer_state_bytes(runner.optimizer, include_scalars=True)
        + saved
    )
    times = rounds.times_of(runner.spec.label)
    median = statistics.median(times)
    trainable = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in runner.frozen)
    row = {
        "label": runner.spec.label,
        **runner.spec.as_dict(),
        "trainable_params": trainable,
        "total_params": prediction.total_params,
        "step_times_s": times,
        "median_step_s": median,
        "step_ratio": median / full_median,
        "flop_ratio": prediction.step_flops / full_prediction.step_flops,
        "gradient_bytes": runner.gradient_bytes,
        "optimizer_state_bytes": optimizer_bytes,
        "frozen_optimizer_state_bytes": optimizer_state_bytes(runner.optimizer, runner.frozen),
        "saved_for_backward_bytes": saved,
        "parameter_bytes": parameter_bytes,
        "memory_bytes": memory,
    }
    if device.type == "cuda":
        row["memory_bytes"] = (
            parameter_bytes
            + optimizer_state_bytes(runner.optimizer, include_scalars=True)
            + runner.cuda_step_peak
        )
    return row


def disturbance_note(rounds: Rounds) -> str | None:
    """What the left-out rounds say about the machine, or None when every round was kept."""
    kept, timed = len(rounds.kept()), len(rounds.timed)
    if kept == timed:
        return None
    short = f"; only {kept} of the {rounds.wanted} wanted" if kept < rounds.wanted else ""
    return (
        f"the machine was shared: {timed - kept} of {timed} timed rounds took more than "
        f"{rounds.tolerance}x the fastest round and were left out{short} (1-minute load average "
        f"up to {max(rounds.load):.1f} on {os.cpu_count()} cores, this process running "
        f"{torch.get_num_threads()} threads); other work inflates and scatters step times"
    )


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_flags(parser, out="results/bench.json")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--rounds", type=int, default=10, help="undisturbed timed rounds wanted")
    parser.add_argument("--max-rounds", type=int, default=20, help="stop after this many timed")
    parser.add_argument(
        "--round-tolerance",
        type=float,
        default=1.2,
        help="a timed round slower than this times the fastest one is left out",
    )
    parser.add_argument("--no-trainer", action="store_true", help="skip the FreezeTrainer row")
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = make_parser().parse_args(argv)
    if not 1 <= args.rounds <= args.max_rounds or args.warmup < 0 or args.round_tolerance < 1:
        raise SystemExit(
            "error: need 1 <= --rounds <= --max-rounds, --warmup >= 0, --round-tolerance >= 1"
        )
    started = time.perf_counter()
    payload = write_result(args.out, benchmark(args), "recipes/bench.py steps", argv, started)
    print(bench_markdown(payload))  # the same table the report shows
    print(f"\nwrote {args.out} ({payload['bench_runtime_s']} s)")
    return payload


if __name__ == "__main__":
    main()
