"""One process of the sharded-audit GPU tests: what the frozen-weights audit really compared.

    python -m accelerate.commands.launch --config_file configs/accelerate/fsdp2.yaml \\
        --num_processes 2 tests/sharded_audit_worker.py OUTDIR --device gpu
    python tests/sharded_audit_worker.py OUTDIR --device cpu      # one process, nothing sharded
    python -m accelerate.commands.launch --config_file configs/accelerate/ddp_cpu.yaml \
        tests/sharded_audit_worker.py OUTDIR --policy lisa --frozen-dtype bfloat16 --bf16

Trains a tiny BERT (2 blocks, dropout off, seed 0 on every rank) with ``FreezeTrainer`` and
``bottom_n`` (n=1) for 4 steps, and writes ``OUTDIR/rank<r>.pt`` with:

- ``init``: every parameter's full value before training (the model is built unsharded);
- ``audit_snapshot``: what the audit snapshotted when training started, per frozen name, as the
  audit holds it (``freeze_policies.training.audit.whole_values``: gathered under ZeRO-3 and FSDP1,
  a DTensor's full tensor under FSDP2; a placeholder or a shard here would fail the test);
- ``final``: every parameter's full value after training, gathered here independently of the
  library (ZeRO-3: ``deepspeed.zero.GatheredParameters``; FSDP1: ``summon_full_params``;
  FSDP2: ``DTensor.full_tensor``);
- ``frozen`` (the names the policy freezes at stage 0) and ``audit_passed``.

``--policy lisa`` (k=1, a new block every 2 steps, seed 6: block 1 for steps 0-1, block 0 for
steps 2-3), ``--frozen-dtype`` and ``--bf16`` serve the DDP test of dtype moves: the ranks must
end bit-identical after block 1 was downcast and block 0 upcast mid-run.

The test asserts that the audit's snapshot has each frozen parameter's full shape and initial
value on every rank, so a pass means real values were compared, not placeholders or one shard.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForSequenceClassification,
    TrainerCallback,
    TrainingArguments,
)

from freeze_policies import FreezeOptions, FreezeTrainer, get_policy  # noqa: E402

VOCAB, SEQ_LEN, STEPS, BATCH = 99, 12, 4, 4
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "module.")


def make_model():
    config = AutoConfig.for_model(
        "bert", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, vocab_size=VOCAB, max_position_embeddings=64, num_labels=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0,
    )
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config)


class Rows(torch.utils.data.Dataset):
    def __init__(self, n: int = STEPS * BATCH * 2):
        generator = torch.Generator().manual_seed(1)
        self.ids = torch.randint(3, VOCAB, (n, SEQ_LEN), generator=generator)
        self.labels = torch.randint(0, 3, (n,), generator=generator)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def clean(name: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def as_compared(tensor: torch.Tensor) -> torch.Tensor:
    """The value ``torch.equal`` compares for ``tensor``: a DTensor's full value, else itself."""
    full = getattr(tensor, "full_tensor", None)
    return (full() if callable(full) else tensor).detach().clone().cpu()


def full_values(trainer) -> dict[str, torch.Tensor]:
    """Every parameter's full value, gathered whatever shards it (see the module docstring)."""
    model = trainer.model
    context = contextlib.nullcontext()
    if trainer.is_deepspeed_enabled:
        import deepspeed

        context = deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
    elif trainer.is_fsdp_enabled:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        wrapped = trainer.model_wrapped
        if isinstance(wrapped, FSDP):  # FSDP1; FSDP2 parameters are DTensors
            context = FSDP.summon_full_params(wrapped, writeback=False)
            model = wrapped
    with context:
        return {clean(n): as_compared(p) for n, p in model.named_parameters()}


class SnapshotRecorder(TrainerCallback):
    """Added after FreezeTrainer's own callback: reads the audit's snapshot once it is taken."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.snapshot: dict[str, torch.Tensor] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        auditor = self.trainer.freeze_callback._auditor
        self.snapshot = {clean(n): as_compared(t) for n, t in auditor.snapshot.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--policy", choices=("bottom_n", "lisa"), default="bottom_n")
    parser.add_argument("--frozen-dtype", default=None)
    parser.add_argument("--bf16", action="store_true")
    options = parser.parse_args(argv)
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", 0))
    model = make_model()
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    if options.policy == "lisa":
        policy = get_policy("lisa", k=1, every=2, unit="steps", seed=6)
    else:
        policy = get_policy("bottom_n", n=1)
    frozen = sorted(set(init) - policy.trainable_names(policy.anatomy(model), 0))
    args = TrainingArguments(
        output_dir=str(options.outdir / "run"), max_steps=STEPS, per_device_train_batch_size=BATCH,
        learning_rate=1e-3, weight_decay=0.01, lr_scheduler_type="constant", report_to=[],
        save_strategy="no", logging_steps=1000, seed=0, dataloader_num_workers=0,
        disable_tqdm=True, use_cpu=options.device == "cpu", bf16=options.bf16,
        train_sampling_strategy="sequential",
    )
    trainer = FreezeTrainer(model=model, args=args, train_dataset=Rows(), freeze_policy=policy,
                            freeze_options=FreezeOptions(frozen_dtype=options.frozen_dtype))
    recorder = SnapshotRecorder(trainer)
    trainer.add_callback(recorder)
    trainer.train()
    result = {
        "init": init,
        "final": full_values(trainer),
        "audit_snapshot": recorder.snapshot,
        "frozen": frozen,
        "audit_passed": trainer.frozen_audit.passed if trainer.frozen_audit else None,
    }
    options.outdir.mkdir(parents=True, exist_ok=True)
    torch.save(result, options.outdir / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
