"""``FreezeTrainer`` inside ``recipes/bench.py``'s rounds: its overhead over the plain loop.

``FreezeTrainer`` with ``bottom_n (n=4)`` runs its own ``train()`` loop on the benchmark's batch;
a callback runs one round of the plain-loop methods at each of its ``on_step_begin`` events, then
times the trainer's step from ``on_step_begin`` to ``on_step_end`` (``training_step``, gradient
clipping, optimizer and scheduler step, ``zero_grad``; data loading and logging excluded) and adds
it to that round. Its row is priced like the plain ``bottom_n (n=4)`` loop's, so the two differ
only by what the trainer does per step.
"""

from __future__ import annotations

import copy
import statistics
import time

from torch import nn

from freeze_policies import anatomy, get_policy
from freeze_policies.costs.measure import (
    gradient_bytes,
    optimizer_state_bytes,
    saved_for_backward_bytes,
)
from recipes.benchmarks.harness import Rounds, repeated_rows, synchronize, training_args
from recipes.benchmarks.methods import BOTTOM_4

TRAINER_LABEL = "FreezeTrainer bottom_n (n=4)"


def trainer_driver(base: nn.Module, batch: dict, total_steps: int, device, output_dir: str):
    """FreezeTrainer with bottom_n (n=4) on ``batch``, or the reason it cannot run.

    Returns ``(trainer, None)`` or ``(None, reason)``. See the module docstring for how its steps
    are timed; ``run_trainer_rounds`` drives it.
    """
    try:
        from freeze_policies import FreezeTrainer
    except ImportError as error:
        return None, f"freeze_policies.FreezeTrainer is not importable ({error})"
    import datasets
    from transformers import default_data_collator

    rows = repeated_rows(batch, total_steps)
    args = training_args(output_dir, len(batch["labels"]), total_steps, device)
    try:
        trainer = FreezeTrainer(
            model=copy.deepcopy(base),
            args=args,
            train_dataset=datasets.Dataset.from_dict(rows),
            data_collator=default_data_collator,
            freeze_policy=get_policy(BOTTOM_4.policy, **BOTTOM_4.policy_options),
        )
    except Exception as error:  # the trainer is optional here: say why it did not run
        return None, f"FreezeTrainer could not be built: {type(error).__name__}: {error}"
    return trainer, None


def run_trainer_rounds(trainer, rounds: Rounds) -> dict:
    """``trainer.train()``, running one round of the plain loops before each of its steps.

    The trainer's own step is timed from ``on_step_begin`` to ``on_step_end`` and added to the
    round; training stops as soon as ``rounds`` is done.
    """
    from transformers import TrainerCallback

    measured = {}
    device = rounds.device

    class Interleave(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            rounds.run(state.global_step)
            synchronize(device)
            self.start = time.perf_counter()

        def on_optimizer_step(self, args, state, control, model=None, **kwargs):
            if "gradient_bytes" not in measured:  # grads are still there, before zero_grad
                measured["gradient_bytes"] = gradient_bytes(model)

        def on_step_end(self, args, state, control, **kwargs):
            synchronize(device)
            seconds = time.perf_counter() - self.start
            if state.global_step > rounds.warmup:
                rounds.add(TRAINER_LABEL, seconds)
                control.should_training_stop = rounds.done()

    trainer.add_callback(Interleave())
    trainer.train()
    return measured


def trainer_row(trainer, measured: dict, rounds: Rounds, batch, full_median, rows) -> dict:
    """The FreezeTrainer's figures, priced like the plain ``bottom_n (n=4)`` loop."""
    plain = next(row for row in rows if row["label"] == BOTTOM_4.label)
    model = trainer.model
    params = dict(model.named_parameters())
    trainable = get_policy(BOTTOM_4.policy, **BOTTOM_4.policy_options).trainable_names(
        anatomy(model)
    )
    frozen = [param for name, param in params.items() if name not in trainable]
    times = rounds.times_of(TRAINER_LABEL)
    median = statistics.median(times)
    audit = trainer.frozen_audit
    saved = saved_for_backward_bytes(model, batch)
    return {
        **plain,
        "label": TRAINER_LABEL,
        "step_times_s": times,
        "median_step_s": median,
        "step_ratio": median / full_median,
        "ratio_to_plain_loop": median / plain["median_step_s"],
        "gradient_bytes": measured.get("gradient_bytes", 0),
        "optimizer_state_bytes": optimizer_state_bytes(trainer.optimizer),
        "frozen_optimizer_state_bytes": optimizer_state_bytes(trainer.optimizer, frozen),
        "saved_for_backward_bytes": saved,
        "memory_bytes": plain["parameter_bytes"]
        + measured.get("gradient_bytes", 0)
        + optimizer_state_bytes(trainer.optimizer, include_scalars=True)
        + saved,
        "frozen_audit": audit.as_dict() if audit is not None else None,
    }
