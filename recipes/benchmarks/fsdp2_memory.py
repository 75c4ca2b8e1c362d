"""Per-rank memory of LISA under FSDP2 against full fine-tuning under FSDP2.

    python recipes/bench.py fsdp2_memory [--out results/bench_fsdp2_memory.json]
    make bench-fsdp2-memory

Two tables, in Markdown (pasted into docs/distributed.md):

1. **Accounted**, from the cost model (``freeze_policies.distributed.fsdp2.fsdp2_rank_memory``,
   the per-rank counterpart of ``costs.flops.predict_cost``): Llama-3-8B's sizes (hidden 4096,
   32 layers, intermediate 14336, 32 heads, 8 KV heads, vocabulary 128256) built on the meta
   device (no weights, no memory), float32 sharded parameters, AdamW, ``--world-size`` ranks
   (default 8). Rows: full fine-tuning; LISA (``k`` blocks, default 2, plus the embeddings and
   the head) with the optimizer state of the blocks open now; and LISA once every block has
   been open (this library keeps a closed block's optimizer state, so it resumes its moments
   when it opens again: the state grows to every block LISA has drawn).
2. **Measured** on a tiny Llama (4 blocks, 2 CPU processes over gloo, ``fully_shard`` per block
   and on the root, the library's ``FreezeScheduleCallback`` and ``create_optimizer``): rank 0's
   local shards of the parameters, of the gradients at the optimizer step and of the optimizer
   state (``DTensor.to_local()``), at the last step of LISA's first stage, at the end of the run,
   and for full fine-tuning; next to what ``fsdp2_rank_memory`` predicts for the same names.
   The script fails if the two differ on any rank.

The measured part launches this file as its own worker
(``python -m torch.distributed.run --nproc_per_node 2 ... --worker OUTFILE``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parent.parent.parent
if __package__ in (None, ""):  # launched as the worker: make the packages importable
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    TrainerControl,
    TrainerState,
)

from freeze_policies.costs.flops import format_bytes, predict_cost  # noqa: E402
from freeze_policies.distributed.fsdp2 import fsdp2_rank_memory  # noqa: E402
from freeze_policies.policies.registry import resolve_policy  # noqa: E402

LLAMA3_8B = dict(hidden_size=4096, num_hidden_layers=32, intermediate_size=14336,
                 num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                 tie_word_embeddings=False)
TINY = dict(hidden_size=32, num_hidden_layers=4, intermediate_size=40, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=101, max_position_embeddings=64,
            tie_word_embeddings=False)
TINY_STEPS, TINY_EVERY, TINY_BATCH, TINY_SEQ = 6, 2, 2, 8


def lisa(k: int, every: int = 20, seed: int = 0) -> dict:
    return {"name": "lisa", "k": k, "every": every, "unit": "steps", "seed": seed}


# -- accounted: Llama-3-8B on the meta device --------------------------------------------------
def accounted(world_size: int, k: int) -> dict:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**LLAMA3_8B))
    names = [n for n, _ in model.named_parameters()]
    policy = resolve_policy(lisa(k))
    anat = policy.anatomy(model)
    open_now = policy.trainable_names(anat, 0)
    ever = set(names)  # LISA's draws reach every block in a long run
    rows = {
        "full fine-tuning": fsdp2_rank_memory(model, trainable=names, with_state=names,
                                              world_size=world_size),
        f"LISA k={k}, optimizer state of the open blocks": fsdp2_rank_memory(
            model, trainable=open_now, with_state=open_now, world_size=world_size),
        f"LISA k={k}, after every block has been open": fsdp2_rank_memory(
            model, trainable=open_now, with_state=ever, world_size=world_size),
    }
    # the per-rank shards add up to the cost model's whole-model figures
    whole = predict_cost(model, open_now, anat, seq_len=1, batch_size=1)
    shards = [fsdp2_rank_memory(model, trainable=open_now, with_state=open_now,
                                world_size=world_size, rank=r) for r in range(world_size)]
    assert sum(s.gradient_bytes for s in shards) == whole.gradient_bytes
    assert sum(s.optimizer_state_bytes for s in shards) == whole.optimizer_state_bytes
    assert sum(s.parameter_bytes for s in shards) == whole.parameter_bytes
    return {
        "model": "Llama-3-8B sizes (meta device)",
        "total_params": whole.total_params,
        "lisa_trainable_params": whole.trainable_params,
        "world_size": world_size,
        "rows": {name: account.as_dict() for name, account in rows.items()},
    }


# -- measured: a tiny Llama, 2 processes -------------------------------------------------------
def local_bytes(tensor) -> int:
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
    return local.numel() * local.element_size()


def measure_worker(outfile: Path) -> None:
    """One rank of the measured run (see the module docstring)."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from freeze_policies.policies.trainable import set_trainable
    from freeze_policies.training.callbacks import FreezeScheduleCallback
    from freeze_policies.training.optim import create_optimizer

    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    for label, policy in (("LISA k=1", lisa(1, every=TINY_EVERY)), ("full fine-tuning", None)):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **TINY))
        reference = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **TINY))
        names = [n for n, _ in model.named_parameters()]
        callback = FreezeScheduleCallback(policy, audit="off")
        callback.bind(model)
        if policy is not None:
            set_trainable(model, callback.trainable_at(0))
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        optimizer = create_optimizer(model, _Args(), policy, anat=callback.anat,
                                     cls_and_kwargs=(torch.optim.AdamW, {}))
        state, control = TrainerState(), TrainerControl()
        callback.on_train_begin(None, state, control, model=model, optimizer=optimizer)
        opened: set[str] = set()
        for step in range(TINY_STEPS):
            callback.on_step_begin(None, state, control, model=model)
            trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
            opened |= set(trainable)
            generator = torch.Generator().manual_seed(step * world + rank)
            ids = torch.randint(0, TINY["vocab_size"], (TINY_BATCH, TINY_SEQ), generator=generator)
            model(input_ids=ids, labels=ids).loss.backward()
            grads = sum(local_bytes(p.grad) for p in model.parameters() if p.grad is not None)
            optimizer.step()
            held = {id(p): n for n, p in model.named_parameters()}
            measured = {
                "parameter_bytes": sum(local_bytes(p) for p in model.parameters()),
                "gradient_bytes": grads,
                "optimizer_state_bytes": sum(
                    local_bytes(v) for p, s in optimizer.state.items() for v in s.values()
                    if torch.is_tensor(v) and v.dim() > 0),  # AdamW's step scalars left out
            }
            with_state = sorted(held[id(p)] for p, s in optimizer.state.items() if s)
            assert set(with_state) == opened, "optimizer state for a block that never opened"
            predicted = fsdp2_rank_memory(reference, trainable=trainable, with_state=with_state,
                                          world_size=world, rank=rank).as_dict()
            model.zero_grad()
            state.global_step += 1
            callback.on_step_end(None, state, control, model=model)
            if step == TINY_EVERY - 1 or step == TINY_STEPS - 1:
                when = "first stage" if step == TINY_EVERY - 1 else "end"
                if policy is None and when != "end":
                    continue
                key = label if policy is None else f"{label}, {when} (step {step + 1})"
                results[key] = {"measured": measured, "predicted": predicted,
                                "opened_blocks": sorted({n.split(".")[2] for n in with_state
                                                         if n.startswith("model.layers.")}),
                                "of_params": len(names)}
    mismatched = [key for key, row in results.items()
                  if any(row["measured"][f] != row["predicted"][f] for f in row["measured"])]
    gathered = [None] * world
    dist.all_gather_object(gathered, {"rank": rank, "rows": results, "mismatched": mismatched})
    if rank == 0:
        outfile.write_text(json.dumps(gathered, indent=2))
    dist.destroy_process_group()


class _Args:  # what create_optimizer reads from TrainingArguments
    learning_rate = 1e-3
    weight_decay = 0.0


def measured(scratch: Path) -> list[dict]:
    outfile = scratch / "measured.json"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(_free_port()), str(Path(__file__).resolve()), "--worker",
         str(outfile)],
        cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    if done.returncode != 0:
        raise SystemExit(f"the 2-process measurement failed:\n{done.stderr[-3000:]}")
    return json.loads(outfile.read_text())


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- tables ----------------------------------------------------------------------------------
def accounted_table(result: dict) -> str:
    lines = [f"Accounted per-rank memory, {result['model']}, FSDP2 over {result['world_size']} "
             f"ranks, float32 sharded parameters, AdamW "
             f"({result['total_params']:,} parameters; LISA trains "
             f"{result['lisa_trainable_params']:,} at a time):", "",
             "| run | parameters | gradients | optimizer state | total |", "|---|---|---|---|---|"]
    for name, row in result["rows"].items():
        lines.append(f"| {name} | {format_bytes(row['parameter_bytes'])} | "
                     f"{format_bytes(row['gradient_bytes'])} | "
                     f"{format_bytes(row['optimizer_state_bytes'])} | "
                     f"{format_bytes(row['total_bytes'])} |")
    return "\n".join(lines)


def measured_table(ranks: list[dict]) -> str:
    rows = ranks[0]["rows"]
    lines = ["Measured on rank 0 (tiny Llama, 4 blocks, FSDP2 over 2 CPU processes), bytes "
             "(measured = predicted by `fsdp2_rank_memory` on every rank: "
             f"{'yes' if not any(r['mismatched'] for r in ranks) else 'NO'}):", "",
             "| run | blocks with optimizer state | parameters | gradients | optimizer state |",
             "|---|---|---|---|---|"]
    for name, row in rows.items():
        m = row["measured"]
        lines.append(f"| {name} | {', '.join(row['opened_blocks'])} | {m['parameter_bytes']:,} "
                     f"| {m['gradient_bytes']:,} | {m['optimizer_state_bytes']:,} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="write the numbers as JSON here")
    parser.add_argument("--world-size", type=int, default=8)
    parser.add_argument("--k", type=int, default=2, help="LISA's blocks at a time (8B table)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.worker is not None:
        measure_worker(options.worker)
        return 0
    for name in ("world_size", "k"):
        if getattr(options, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')}={getattr(options, name)} "
                             "must be >= 1")
    started = time.perf_counter()
    big = accounted(options.world_size, options.k)
    with tempfile.TemporaryDirectory(prefix="fsdp2-memory-") as scratch:
        ranks = measured(Path(scratch))
    print(accounted_table(big))
    print()
    print(measured_table(ranks))
    if options.out:
        from recipes.benchmarks.harness import write_result

        write_result(options.out, {"accounted": big, "measured": ranks},
                     "recipes/bench.py fsdp2_memory", argv, started)
    return 1 if any(r["mismatched"] for r in ranks) else 0


if __name__ == "__main__":
    sys.exit(main())
