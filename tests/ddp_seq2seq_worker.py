"""One process of the encoder-decoder DDP test: a tiny T5, its encoder frozen, a decoder schedule.

    python -m accelerate.commands.launch --config_file configs/accelerate/ddp_cpu.yaml \\
        --main_process_port PORT tests/ddp_seq2seq_worker.py OUTDIR --batch 2
    python tests/ddp_seq2seq_worker.py OUTDIR --batch 4   # the 1-process run

``freeze_parts(parts=["encoder"], tied_weights="freeze")`` composed with ``gradual_unfreeze`` on
the decoder (a new stage every 2 steps), 6 optimizer steps over the same in-memory pairs, read
in order, dropout off. Each rank writes ``OUTDIR/rank<r>.pt``: ``{"state", "init", "info"}``
(``info``: world size, the stage log, the audit, the DDP re-wraps).
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
from transformers import AutoConfig, AutoModelForSeq2SeqLM, TrainingArguments  # noqa: E402

from freeze_policies import FreezeTrainer, get_policy  # noqa: E402

STEPS, GLOBAL_BATCH = 6, 4


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n: int = STEPS * GLOBAL_BATCH):
        generator = torch.Generator().manual_seed(0)
        self.source = torch.randint(3, 99, (n, 7), generator=generator)
        self.target = torch.randint(3, 99, (n, 5), generator=generator)

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        return {"input_ids": self.source[i], "labels": self.target[i]}


def make_model():
    config = AutoConfig.for_model("t5", d_model=32, d_ff=37, num_layers=2, num_decoder_layers=3,
                                  num_heads=2, d_kv=16, vocab_size=99, decoder_start_token_id=0,
                                  dropout_rate=0.0)
    torch.manual_seed(0)
    return AutoModelForSeq2SeqLM.from_config(config)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--batch", type=int, required=True, help="per-device batch size")
    options = parser.parse_args(argv)
    torch.set_num_threads(1)
    model = make_model()
    init = {k: v.clone() for k, v in model.state_dict().items()}
    policy = get_policy("freeze_parts", parts=["encoder"], tied_weights="freeze", policy={
        "name": "gradual_unfreeze", "stack": "decoder", "every": 2, "unit": "steps"})
    args = TrainingArguments(
        output_dir=str(options.outdir), max_steps=STEPS, per_device_train_batch_size=options.batch,
        learning_rate=1e-3, lr_scheduler_type="constant", report_to=[], save_strategy="no",
        logging_steps=1000, seed=0, train_sampling_strategy="sequential", disable_tqdm=True,
        dataloader_num_workers=0, use_cpu=True,
    )
    trainer = FreezeTrainer(model=model, args=args, train_dataset=Pairs(), freeze_policy=policy)
    # transformers 5 would scale the loss by the world size for models taking loss kwargs; a
    # plain mean keeps the 1- and 2-process runs equal up to rounding
    trainer.model_accepts_loss_kwargs = False
    trainer.train()
    rewrapper = getattr(trainer, "_ddp_rewrapper", None)
    info = {
        "world_size": trainer.args.world_size,
        "stages": [(e["step"], e["freeze_stage"]) for e in trainer.state.log_history
                   if "freeze_stage" in e],
        "audit": [e["frozen_audit_passed"] for e in trainer.state.log_history
                  if "frozen_audit_passed" in e],
        "rewraps": len(rewrapper.events) if rewrapper else 0,
    }
    options.outdir.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", 0))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"state": state, "init": init, "info": info}, options.outdir / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
