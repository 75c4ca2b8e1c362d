"""One process of the CPU tests of schedules on sharded models (2 processes, gloo).

    python -m torch.distributed.run --nproc_per_node 2 tests/fsdp2_schedule_worker.py OUTDIR \
        gradual_unfreeze,lisa,auto_freeze

Each policy named (options in ``POLICIES``) in turn, in one launch. A tiny
BERT (4 blocks, dropout off, seed 0 on every rank) is trained ``STEPS`` optimizer steps by the
library's own schedule machinery, driven as ``Trainer`` drives it: ``FreezeScheduleCallback``
(stage changes, ``grad = None`` on what closes, the audit, ``auto_freeze``'s measured and
broadcast decisions), ``create_optimizer`` (groups of every parameter the policy will ever
train) and, under DDP, ``DDPRewrapper``. Each step's global batch of ``2 * LOCAL_BATCH`` rows is
split between the ranks the same way in every run. Four runs per policy:

- ``fsdp2``: ``fully_shard`` on every block and on the root, the optimizer built on the sharded
  model (as ``Trainer`` does under FSDP: after wrapping);
- ``resumed``: the same run interrupted after ``RESUME_AT`` steps (a sharded checkpoint through
  ``torch.distributed.checkpoint`` plus ``trainer_state.json`` with the callback's state), then a
  fresh model, sharded, loaded and trained to the end;
- ``unprimed``: the same resume loading into the template of a fresh optimizer as it comes, as
  accelerate's FSDP2 loader does (the negative control of ``load_sharded_checkpoint``): it
  drops the state of blocks closed at load time, or fails (``{"error": ...}``) where a block
  that requires grad at load time has no saved state;
- ``ddp``: the same schedule under ``DistributedDataParallel`` (re-wrapped at stage changes).

Writes ``OUTDIR/<policy>/rank<r>.pt``: for each run, every parameter's full value at the end
(``full_tensor()`` under FSDP2), the names with optimizer state (after the run and, for the
resumed run, right after loading), the stages applied, the audit, ``auto_freeze``'s decisions
and the local shapes (to show that the parameters were sharded); plus ``init``, the values
before training.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch.distributed.checkpoint.api import CheckpointException  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForSequenceClassification,
    TrainerControl,
    TrainerState,
)

from freeze_policies.distributed.ddp import DDPRewrapper  # noqa: E402
from freeze_policies.distributed.fsdp2 import (  # noqa: E402
    load_sharded_checkpoint,
    save_sharded_checkpoint,
)
from freeze_policies.policies.trainable import set_trainable  # noqa: E402
from freeze_policies.training.callbacks import FreezeScheduleCallback  # noqa: E402
from freeze_policies.training.optim import create_optimizer  # noqa: E402

VOCAB, SEQ_LEN, LAYERS = 99, 12, 4
STEPS, LOCAL_BATCH, RESUME_AT = 8, 4, 5
ARGS = SimpleNamespace(learning_rate=1e-2, weight_decay=0.5)  # what create_optimizer reads
ADAMW = (torch.optim.AdamW, {"betas": (0.9, 0.999), "eps": 1e-8})
POLICIES = {
    # stages every 2 steps: head; + block 3; + block 2; + block 1 (block 0, embeddings never)
    "gradual_unfreeze": {"name": "gradual_unfreeze", "every": 2, "unit": "steps"},
    # one block of 4 every 2 steps (seed 0 draws 3, 1, 1, 0: block 2 never opens)
    "lisa": {"name": "lisa", "k": 1, "every": 2, "unit": "steps", "seed": 0},
    # embeddings and block 0 frozen from the start; decisions at steps 4, 6 and 8 from the
    # measured gradient norms freeze more
    "auto_freeze": {"name": "auto_freeze", "every": 2, "percentile": 75.0, "initial_depth": 1},
}
CALLBACK = "FreezeScheduleCallback"


def make_model():
    config = AutoConfig.for_model(
        "bert", hidden_size=32, num_hidden_layers=LAYERS, num_attention_heads=2,
        intermediate_size=37, vocab_size=VOCAB, max_position_embeddings=64, num_labels=3,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0,
    )
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_config(config)


def batch(step: int, rank: int) -> dict:
    """This rank's half of step ``step``'s global batch (the same rows whatever the wrapper)."""
    generator = torch.Generator().manual_seed(1000 + step)
    ids = torch.randint(3, VOCAB, (2 * LOCAL_BATCH, SEQ_LEN), generator=generator)
    labels = torch.randint(0, 3, (2 * LOCAL_BATCH,), generator=generator)
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    return {"input_ids": ids[rows], "labels": labels[rows]}


def full(tensor: torch.Tensor) -> torch.Tensor:
    full_tensor = getattr(tensor, "full_tensor", None)
    return (full_tensor() if callable(full_tensor) else tensor).detach().clone()


def with_state(optimizer, model) -> list[str]:
    """Names of the parameters the optimizer holds state for."""
    names = {id(p): n for n, p in model.named_parameters()}
    return sorted(names[id(p)] for p, s in optimizer.state.items() if s)


class Run:
    """One model, its callback, its optimizer and (DDP) its re-wrapper, set up as ``Trainer``
    sets them up: policy bound and stage 0 applied before wrapping, optimizer after."""

    def __init__(self, policy: dict, wrap: str):
        from torch.distributed.fsdp import fully_shard

        self.wrap = wrap
        self.model = model = make_model()
        self.callback = FreezeScheduleCallback(dict(policy), audit="raise")
        self.callback.bind(model)
        set_trainable(model, self.callback.trainable_at(0))
        if wrap == "fsdp2":
            for layer in model.bert.encoder.layer:
                fully_shard(layer)
            fully_shard(model)
            self.runner, self.rewrapper = model, None
        else:
            self.rewrapper = DDPRewrapper()
            self.rewrapper.before_prepare(model)
            self.runner = torch.nn.parallel.DistributedDataParallel(model)
        self.optimizer = create_optimizer(model, ARGS, self.callback.policy,
                                          anat=self.callback.anat, cls_and_kwargs=ADAMW)
        self.state, self.control = TrainerState(), TrainerControl()
        self.stages: list[tuple[int, int]] = []
        self.state_after_load: list[str] | None = None

    def load(self, directory: Path, prime: bool = True) -> None:
        self.state = TrainerState.load_from_json(str(directory / "trainer_state.json"))
        if prime:
            load_sharded_checkpoint(self.model, self.optimizer, directory / "sharded")
        else:  # the negative control: the template of a fresh optimizer, as is
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

            model_state, optimizer_state = get_state_dict(self.model, self.optimizer)
            both = {"model": model_state, "optimizer": optimizer_state}
            dcp.load(both, checkpoint_id=str(directory / "sharded"))
            set_state_dict(self.model, self.optimizer, model_state_dict=both["model"],
                           optim_state_dict=both["optimizer"])
        self.state_after_load = with_state(self.optimizer, self.model)

    def save(self, directory: Path) -> None:
        self.state.stateful_callbacks[CALLBACK] = self.callback.state()  # as Trainer does
        save_sharded_checkpoint(self.model, self.optimizer, directory / "sharded")
        if dist.get_rank() == 0:
            self.state.save_to_json(str(directory / "trainer_state.json"))
        dist.barrier()

    def train(self, until: int = STEPS) -> None:
        callback, state, control, model = self.callback, self.state, self.control, self.model
        callback.on_train_begin(None, state, control, model=model, optimizer=self.optimizer)
        self.stages.append((state.global_step, callback.stage))
        rank = dist.get_rank()
        while state.global_step < until:
            callback.on_step_begin(None, state, control, model=model)
            if not self.stages or self.stages[-1][1] != callback.stage:
                self.stages.append((state.global_step, callback.stage))
            runner = self.runner
            if self.rewrapper is not None:
                runner = self.rewrapper.current(self.runner, None, state.global_step)
            runner(**batch(state.global_step, rank)).loss.backward()
            callback.on_pre_optimizer_step(None, state, control, model=model)
            self.optimizer.step()
            callback.on_optimizer_step(None, state, control, model=model)
            model.zero_grad()
            state.global_step += 1
            state.epoch = state.global_step / STEPS
            callback.on_step_end(None, state, control, model=model)
        if until == STEPS:
            callback.on_train_end(None, state, control, model=model, optimizer=self.optimizer)

    def result(self) -> dict:
        controller = self.callback.controller
        audit = self.callback.audit_result
        return {
            "final": {n: full(p) for n, p in self.model.named_parameters()},
            "local_shapes": {n: tuple(getattr(p, "to_local", lambda p=p: p)().shape)
                             for n, p in self.model.named_parameters()},
            "with_state": with_state(self.optimizer, self.model),
            "state_after_load": self.state_after_load,
            "stages": self.stages,
            "ever_open": sorted(set().union(*(self.callback.trainable_at(s)
                                              for _, s in self.stages))),
            "audit": audit.as_dict() if audit is not None else None,
            "decisions": list(controller.decisions) if controller is not None else None,
            "optimizer_state_bytes": self.callback.audit_metrics.get("optimizer_state_bytes"),
        }


def schedule(policy: dict, outdir: Path) -> dict:
    """The four runs of one policy (see the module docstring)."""
    results = {"init": {n: p.detach().clone() for n, p in make_model().named_parameters()}}
    run = Run(policy, "fsdp2")
    run.train()
    results["fsdp2"] = run.result()

    checkpoint = outdir / "checkpoint"
    first = Run(policy, "fsdp2")
    first.train(until=RESUME_AT)
    first.save(checkpoint)
    del first
    resumed = Run(policy, "fsdp2")
    resumed.load(checkpoint)
    resumed.train()
    results["resumed"] = resumed.result()
    unprimed = Run(policy, "fsdp2")
    try:
        unprimed.load(checkpoint, prime=False)
    except CheckpointException as error:  # raised on every rank (a BaseException)
        results["unprimed"] = {"error": f"{type(error).__name__}: {error}"}
    else:
        unprimed.train()
        results["unprimed"] = unprimed.result()

    run = Run(policy, "ddp")
    run.train()
    results["ddp"] = run.result()
    return results


def main():
    outdir, names = Path(sys.argv[1]), sys.argv[2].split(",")
    unknown = [name for name in names if name not in POLICIES]
    if unknown:
        raise SystemExit(f"unknown policy {unknown[0]!r}; choose from {', '.join(POLICIES)}")
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    for name in names:
        results = schedule(POLICIES[name], outdir / name)
        (outdir / name).mkdir(parents=True, exist_ok=True)
        torch.save(results, outdir / name / f"rank{dist.get_rank()}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
