"""One process of the DDP tests: train a tiny BERT under each scenario, save what each rank has.

    python -m accelerate.commands.launch --config_file configs/accelerate/ddp_cpu.yaml \\
        --main_process_port PORT tests/ddp_worker.py OUTDIR --batch 4 --scenarios gradual,lisa
    python tests/ddp_worker.py OUTDIR --batch 8 --scenarios gradual,lisa   # the 1-process run

Scenarios (each a fresh, identically seeded model and the same 8 optimizer steps over the same
in-memory rows, read in order, dropout off):

- ``gradual``: ``FreezeTrainer`` with ``gradual_unfreeze`` (a new stage every 2 steps).
- ``lisa``: ``FreezeTrainer`` with ``lisa`` (k=1, resampled every 2 steps).
- ``callback``: a plain ``Trainer`` with ``FreezeScheduleCallback(gradual_unfreeze)``.
- ``naive``: the trap, for the negative control: a plain ``Trainer`` holding every parameter in
  its optimizer, and a callback that flips ``requires_grad`` stage by stage after DDP wrapped
  the model.
- ``zero_lr``: ``FreezeTrainer`` with ``bottom_n`` under ``freeze_mode="zero_lr"``, with
  gradient clipping that acts (``max_grad_norm=0.05``).
- ``zero_grad``: the same under ``freeze_mode="zero_grad"`` without weight decay.
- ``accum``: ``gradual`` with 2 micro-batches of half the size per optimizer step.
- ``fixed``: ``FreezeTrainer`` with ``bottom_n`` (the FSDP / DeepSpeed GPU tests use it).
- ``callback_no_unused``: ``callback`` with ``ddp_find_unused_parameters=False``, refused.
- ``auto``: ``FreezeTrainer`` with ``auto_freeze`` (windows of 2 steps, the lowest block freezes
  at every decision); on every rank but the first, the local criterion is replaced by one that
  never freezes, so the ranks agree only if the main process's decision reaches them all.

``--device gpu`` trains on the GPU (the launch config decides DDP, FSDP or DeepSpeed and the
precision); the default is ``use_cpu=True``. A ``FreezePolicyError`` is written to
``OUTDIR/<scenario>/error<rank>.txt`` (and the next scenario runs).

Each rank writes ``OUTDIR/<scenario>/rank<r>.pt``: ``{"state": state_dict, "init": state_dict,
"info": {...}}`` (``info``: the stage log, the audit, the DDP re-wraps, per forward the wrapper
and its sync flag, the world size; ``state`` is None under FSDP and DeepSpeed, which shard it).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForSequenceClassification,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from freeze_policies import (  # noqa: E402
    FreezePolicyError,
    FreezeScheduleCallback,
    FreezeTrainer,
    get_policy,
)
from freeze_policies.training.optim import create_optimizer  # noqa: E402

STEPS = 8
GLOBAL_BATCH = 8
VOCAB, SEQ_LEN = 99, 12
SCENARIOS = (
    "gradual", "lisa", "callback", "naive", "zero_lr", "zero_grad", "accum", "fixed",
    "callback_no_unused", "auto",
)


def make_model(depth: int = 2):
    config = AutoConfig.for_model(
        "bert", hidden_size=32, num_hidden_layers=depth, num_attention_heads=2,
        intermediate_size=37, vocab_size=VOCAB, max_position_embeddings=64, num_labels=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0,
    )
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config)


class Rows(torch.utils.data.Dataset):
    """``STEPS * GLOBAL_BATCH`` fixed rows of random tokens and labels."""

    def __init__(self, n: int = STEPS * GLOBAL_BATCH):
        generator = torch.Generator().manual_seed(1)
        self.ids = torch.randint(3, VOCAB, (n, SEQ_LEN), generator=generator)
        self.labels = torch.randint(0, 3, (n,), generator=generator)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def make_args(outdir: Path, batch: int, device: str = "cpu", **overrides) -> TrainingArguments:
    options = dict(
        output_dir=str(outdir),
        max_steps=STEPS,
        per_device_train_batch_size=batch,
        learning_rate=1e-3,
        weight_decay=0.01,
        lr_scheduler_type="constant",
        report_to=[],
        save_strategy="no",
        logging_steps=1000,
        seed=0,
        train_sampling_strategy="sequential",
        dataloader_num_workers=0,
        disable_tqdm=True,
        use_cpu=device == "cpu",
    )
    options.update(overrides)
    return TrainingArguments(**options)


class RecordingTrainer(FreezeTrainer):
    """``FreezeTrainer`` that records, per forward, the DDP wrapper it ran on and its sync flag.

    It also treats the loss as a plain mean: transformers 5 sees ``**kwargs`` in BERT's forward,
    assumes the model divides by ``num_items_in_batch`` (BERT does not) and then multiplies the
    loss by the world size and skips the division by the accumulation steps, which would make
    the 1- and 2-process runs differ by more than rounding.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False
        self.forwards: list[tuple[int, bool | None]] = []

    def compute_loss(self, model, inputs, *args, **kwargs):
        self.forwards.append((id(model), getattr(model, "require_backward_grad_sync", None)))
        return super().compute_loss(model, inputs, *args, **kwargs)


def plain_trainer(**kwargs) -> Trainer:
    trainer = Trainer(**kwargs)
    trainer.model_accepts_loss_kwargs = False  # see RecordingTrainer
    return trainer


class NaiveFlip(TrainerCallback):
    """The trap: set ``requires_grad`` for the schedule's stage, after DDP wrapped the model."""

    def __init__(self, policy):
        self.policy = policy

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.policy.apply(model, self.policy.stage_at(state.global_step, state.epoch or 0.0))


def gradual():
    return get_policy("gradual_unfreeze", every=2, unit="steps")


def run(scenario: str, outdir: Path, batch: int, device: str = "cpu") -> dict:
    model = make_model()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    overrides = {}
    if scenario == "accum":
        overrides = dict(per_device_train_batch_size=batch // 2, gradient_accumulation_steps=2)
    if scenario == "zero_lr":  # clipping active: its norm sums over every gradient
        overrides = dict(max_grad_norm=0.05)
    if scenario == "zero_grad":  # no weight decay: a zeroed gradient then moves nothing
        overrides = dict(max_grad_norm=0.05, weight_decay=0.0)
    if scenario == "callback_no_unused":
        overrides = dict(ddp_find_unused_parameters=False)
    args = make_args(outdir / scenario, batch, device, **overrides)
    common = dict(model=model, args=args, train_dataset=Rows())
    if scenario in ("gradual", "accum"):
        trainer = RecordingTrainer(**common, freeze_policy=gradual())
    elif scenario == "lisa":
        # seed 6 draws block 1, 0, 1, 1 for stages 0..3: changes at steps 2 and 4, none at 6
        lisa = get_policy("lisa", k=1, every=2, unit="steps", seed=6)
        trainer = RecordingTrainer(**common, freeze_policy=lisa)
    elif scenario == "zero_lr":
        trainer = RecordingTrainer(
            **common, freeze_policy=get_policy("bottom_n", n=1), freeze_mode="zero_lr"
        )
    elif scenario == "zero_grad":
        trainer = RecordingTrainer(
            **common, freeze_policy=get_policy("bottom_n", n=1), freeze_mode="zero_grad"
        )
    elif scenario == "auto":
        import freeze_policies.policies.adaptive as adaptive

        if int(os.environ.get("RANK", 0)) != 0:  # per-rank disagreement, overruled by rank 0
            adaptive.decide = lambda policy, depth, max_depth, rates: depth
        policy = get_policy("auto_freeze", every=2, percentile=100.0)
        trainer = RecordingTrainer(**common, freeze_policy=policy)
    elif scenario == "fixed":
        trainer = RecordingTrainer(**common, freeze_policy=get_policy("bottom_n", n=1))
    elif scenario in ("callback", "callback_no_unused"):
        trainer = plain_trainer(**common, callbacks=[FreezeScheduleCallback(gradual())])
    elif scenario == "naive":
        policy = gradual()
        optimizer = create_optimizer(model, args, policy)  # holds every ever-trainable param
        policy.apply(model, 0)
        trainer = plain_trainer(
            **common, optimizers=(optimizer, None), callbacks=[NaiveFlip(policy)]
        )
    else:
        raise SystemExit(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
    trainer.train()
    rewrapper = getattr(trainer, "_ddp_rewrapper", None)
    forwards = getattr(trainer, "forwards", [])
    first = forwards[0][0] if forwards else None
    info = {
        "world_size": trainer.args.world_size,
        "wrapper": type(trainer.model_wrapped).__name__,
        "stages": [
            (e["step"], e["freeze_stage"]) for e in trainer.state.log_history if "freeze_stage" in e
        ],
        "audit": [
            e["frozen_audit_passed"] for e in trainer.state.log_history
            if "frozen_audit_passed" in e
        ],
        "rewraps": [vars(e) for e in rewrapper.events] if rewrapper else [],
        # per forward: (ran on the wrapper Trainer's loop holds, that wrapper's sync flag)
        "forwards": [(key == first, sync) for key, sync in forwards],
    }
    sharded = trainer.is_fsdp_enabled or trainer.is_deepspeed_enabled  # no full weights here
    state = None if sharded else {k: v.detach().clone() for k, v in model.state_dict().items()}
    return {"state": state, "init": init, "info": info}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--batch", type=int, required=True, help="per-device batch size")
    parser.add_argument("--scenarios", default="gradual,lisa")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    options = parser.parse_args(argv)
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", 0))
    for scenario in options.scenarios.split(","):
        folder = options.outdir / scenario
        folder.mkdir(parents=True, exist_ok=True)
        try:
            result = run(scenario, options.outdir, options.batch, options.device)
        except FreezePolicyError as error:
            (folder / f"error{rank}.txt").write_text(str(error))
            continue
        torch.save(result, folder / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
