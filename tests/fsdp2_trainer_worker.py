"""One process of the GPU check of schedules through ``FreezeTrainer`` and accelerate.

    python -m accelerate.commands.launch --config_file configs/accelerate/fsdp2.yaml \\
        --num_processes 2 --mixed_precision no tests/fsdp2_trainer_worker.py OUTDIR
    python -m accelerate.commands.launch --config_file configs/accelerate/ddp.yaml \\
        --num_processes 2 --mixed_precision no tests/fsdp2_trainer_worker.py OUTDIR   # reference
    python -m accelerate.commands.launch --config_file configs/accelerate/ddp_cpu.yaml \\
        tests/fsdp2_trainer_worker.py OUTDIR --device cpu     # the worker itself, on CPU (DDP)

For each policy of ``tests/fsdp2_schedule_worker.py`` (``gradual_unfreeze``, ``lisa``,
``auto_freeze``, same options, same tiny BERT): ``FreezeTrainer`` trains ``STEPS`` steps saving a
checkpoint after ``RESUME_AT`` (accelerate's sharded FSDP2 checkpoint under FSDP2), then a new
``FreezeTrainer`` resumes from that checkpoint and trains to the end. Writes
``OUTDIR/<policy>/rank<r>.pt`` with every parameter's full value before, after the whole run and
after the resumed run (``full_tensor()`` under FSDP2), the names with optimizer state, the names
some stage opened, the audit and the stages from ``log_history``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from fsdp2_schedule_worker import (  # noqa: E402
    LOCAL_BATCH,
    POLICIES,
    RESUME_AT,
    SEQ_LEN,
    STEPS,
    VOCAB,
    make_model,
)
from transformers import TrainingArguments  # noqa: E402

from freeze_policies import FreezeTrainer  # noqa: E402


class Rows(torch.utils.data.Dataset):
    def __init__(self, n: int = 2 * LOCAL_BATCH * STEPS):
        generator = torch.Generator().manual_seed(7)
        self.ids = torch.randint(3, VOCAB, (n, SEQ_LEN), generator=generator)
        self.labels = torch.randint(0, 3, (n,), generator=generator)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def full(tensor: torch.Tensor) -> torch.Tensor:
    full_tensor = getattr(tensor, "full_tensor", None)
    return (full_tensor() if callable(full_tensor) else tensor).detach().float().cpu().clone()


def arguments(outdir: Path, device: str) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(outdir), max_steps=STEPS, per_device_train_batch_size=LOCAL_BATCH,
        learning_rate=1e-2, weight_decay=0.5, lr_scheduler_type="constant", report_to=[],
        save_strategy="steps", save_steps=RESUME_AT, logging_steps=1, seed=0,
        dataloader_num_workers=0, disable_tqdm=True, use_cpu=device == "cpu",
        train_sampling_strategy="sequential",
    )


def train(policy: dict, outdir: Path, device: str, resume: str | None = None) -> FreezeTrainer:
    trainer = FreezeTrainer(model=make_model(), args=arguments(outdir, device),
                            train_dataset=Rows(), freeze_policy=dict(policy))
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def summary(trainer: FreezeTrainer) -> dict:
    model = trainer.model
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    names = {id(p): n for n, p in model.named_parameters()}
    callback = trainer.freeze_callback
    stages = [(row["step"], row["freeze_stage"]) for row in trainer.state.log_history
              if "freeze_stage" in row]
    return {
        "final": {n: full(p) for n, p in model.named_parameters()},
        "with_state": sorted(names[id(p)] for p, s in optimizer.state.items() if s),
        "stages": stages,
        "ever_open": sorted(set().union(*(callback.trainable_at(s) for _, s in stages))),
        "audit": trainer.frozen_audit.as_dict() if trainer.frozen_audit else None,
        "fsdp": bool(trainer.is_fsdp_enabled),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="gpu")
    parser.add_argument("--policies", default=",".join(POLICIES))
    options = parser.parse_args(argv)
    init = {n: p.detach().clone() for n, p in make_model().named_parameters()}
    for name in options.policies.split(","):
        policy = POLICIES[name]
        out = options.outdir / name
        whole = train(policy, out / "whole", options.device)
        result = {"init": init, "whole": summary(whole)}
        rank = whole.args.process_index
        del whole
        resumed = train(policy, out / "resumed", options.device,
                        resume=str(out / "whole" / f"checkpoint-{RESUME_AT}"))
        result["resumed"] = summary(resumed)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(result, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
