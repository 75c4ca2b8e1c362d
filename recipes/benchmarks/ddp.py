"""What keeping DDP right under a schedule costs: re-wrapping vs registering everything up front.

    python -m accelerate.commands.launch --multi_gpu --num_processes 2 --num_machines 1 \\
        --mixed_precision no --dynamo_backend no recipes/bench.py ddp [--steps-per-stage 3]
    accelerate launch --config_file configs/accelerate/ddp_cpu.yaml recipes/bench.py ddp \
        --out results/bench_ddp.json                                  # what `make bench` runs

(on a machine without GPUs: two CPU processes over gloo, ``use_cpu=True``). Trains MiniLM-L6
(``--model``, as the other benchmarks load it: ``recipes.benchmarks.harness.load_classifier``) on
random tokens (``recipes.benchmarks.harness.random_batches``) with ``gradual_unfreeze`` (one stage
every ``--steps-per-stage`` steps) twice:

- ``rewrap``: ``FreezeTrainer`` (a new DDP wrapper at each stage change, frozen parameters
  outside autograd and outside the all-reduce);
- ``register_all``: a plain ``Trainer`` with ``FreezeScheduleCallback`` (DDP registers every
  parameter the schedule will ever open; not-yet-open ones are frozen after wrapping and found
  unused at every step, ``find_unused_parameters=True``).

Prints, per stage, the trainable parameters and the median step time of each, the time of each
re-wrap, and a full fine-tuning step for scale. Rank 0 prints and writes the numbers to ``--out``
(atomically, with the command and the environment; ``--json`` is an older spelling of ``--out``).
"""

from __future__ import annotations

import argparse
import os
import statistics

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402

from freeze_policies import FreezeScheduleCallback, FreezeTrainer, get_policy  # noqa: E402
from recipes.benchmarks.harness import (  # noqa: E402
    StepTimer,
    add_flags,
    load_classifier,
    random_batches,
    write_result,
)


class Tokens(torch.utils.data.Dataset):
    """``n`` rows of random tokens and labels (one ``random_batches`` batch of ``n`` rows)."""

    def __init__(self, n: int, seq_len: int, vocab: int):
        self.rows = random_batches(1, vocab, n, seq_len)[0]

    def __len__(self):
        return len(self.rows["labels"])

    def __getitem__(self, i):
        return {key: value[i] for key, value in self.rows.items()}


def run(kind: str, name: str, steps_per_stage: int, batch: int, seq_len: int, outdir: str):
    torch.manual_seed(0)
    model = load_classifier(name)
    policy = get_policy("gradual_unfreeze", every=steps_per_stage, unit="steps")
    stages = policy.num_stages(policy.anatomy(model))
    steps = stages * steps_per_stage if kind != "full" else steps_per_stage
    args = TrainingArguments(
        output_dir=outdir, max_steps=steps, per_device_train_batch_size=batch,
        learning_rate=1e-5, use_cpu=True, report_to=[], save_strategy="no", logging_steps=10_000,
        seed=0, disable_tqdm=True, average_tokens_across_devices=False,
    )
    data = Tokens(steps * batch * args.world_size, seq_len, model.config.vocab_size)
    timer = StepTimer()
    common = dict(model=model, args=args, train_dataset=data)
    if kind == "rewrap":
        trainer = FreezeTrainer(**common, callbacks=[timer], freeze_policy=policy)
    elif kind == "register_all":
        trainer = Trainer(**common, callbacks=[timer, FreezeScheduleCallback(policy)])
    else:
        trainer = Trainer(**common, callbacks=[timer])
    trainer.train()
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    callback = next(
        (c for c in trainer.callback_handler.callbacks if isinstance(c, FreezeScheduleCallback)),
        None,
    )
    per_stage = []
    for stage in range(stages if kind != "full" else 1):
        times = timer.times[stage * steps_per_stage:(stage + 1) * steps_per_stage]
        trainable = (
            sum(sizes[n] for n in callback.trainable_at(stage)) if callback else sum(sizes.values())
        )
        per_stage.append({
            "stage": stage, "trainable_params": trainable,
            "first_step_s": times[0], "median_step_s": statistics.median(times[1:] or times),
        })
    rewraps = [vars(e) for e in getattr(trainer, "ddp_rewrapper", None).events] \
        if kind == "rewrap" else []
    return {"model": name, "kind": kind, "stages": per_stage, "rewraps": rewraps,
            "world_size": args.world_size}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_flags(parser, out="results/bench_ddp.json", batch_size=8, device=False)
    parser.add_argument("--json", dest="out", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    parser.add_argument("--steps-per-stage", type=int, default=3)
    parser.add_argument("--output-dir", default="outputs/bench_ddp", help="the trainers' scratch")
    options = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = [
        run(kind, options.model, options.steps_per_stage, options.batch_size, options.seq_len,
            options.output_dir)
        for kind in ("rewrap", "register_all", "full")
    ]
    if int(os.environ.get("RANK", 0)) != 0:
        return
    rewrap, register_all, full = results
    print(f"{rewrap['model']}, {rewrap['world_size']} processes, batch {options.batch_size} x "
          f"{options.seq_len} per process; median step seconds per stage")
    print(f"{'stage':>5} {'trainable':>11} {'rewrap':>8} {'reg_all':>8}   first step after change")
    for a, b in zip(rewrap["stages"], register_all["stages"]):
        print(f"{a['stage']:>5} {a['trainable_params']:>11,} {a['median_step_s']:>8.3f} "
              f"{b['median_step_s']:>8.3f}   {a['first_step_s']:.3f} / {b['first_step_s']:.3f}")
    print(f"full fine-tuning: {full['stages'][0]['median_step_s']:.3f} s/step")
    for event in rewrap["rewraps"]:
        print(f"re-wrap at step {event['step']}: {1000 * event['seconds']:.1f} ms "
              f"({event['elements']:,} trainable elements)")
    write_result(options.out, {"runs": results, "batch_size": options.batch_size,
                               "seq_len": options.seq_len,
                               "steps_per_stage": options.steps_per_stage},
                 "recipes/bench.py ddp", argv)
    print(f"wrote {options.out}")


if __name__ == "__main__":
    main()
