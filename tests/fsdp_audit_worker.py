"""One process of the CPU test of the audit under FSDP sharding (2 processes, gloo).

    python -m torch.distributed.run --nproc_per_node 2 tests/fsdp_audit_worker.py OUTDIR fsdp1|fsdp2

A tiny BERT (2 blocks, seed 0 on every rank), ``bottom_n`` (n=1: the embeddings and block 0
frozen) set before wrapping, wrapped with FSDP1 (``use_orig_params=True``, one unit per block and
the root) or FSDP2 (``fully_shard`` per block and the root), trained 3 steps by AdamW on this
rank's shards. ``FrozenAudit`` is given the wrapped model, as the callback is under a launcher.
Writes ``OUTDIR/rank<r>.pt``: the initial values, the audit's snapshot, the local shapes the
wrapper left (to show that the parameters really were sharded), the audit result after training,
and the result after one frozen weight was changed on purpose (it must fail, naming it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from sharded_audit_worker import make_model  # noqa: E402  (the same tiny BERT)
from transformers.models.bert.modeling_bert import BertLayer  # noqa: E402

from freeze_policies import get_policy, set_trainable  # noqa: E402
from freeze_policies.training.audit import FrozenAudit  # noqa: E402

TAMPERED = "bert.encoder.layer.0.output.dense.weight"


def wrap(model, kind: str):
    if kind == "fsdp1":
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        return FullyShardedDataParallel(model, auto_wrap_policy=ModuleWrapPolicy({BertLayer}),
                                        device_id=torch.device("cpu"), use_orig_params=True)
    from torch.distributed.fsdp import fully_shard

    for layer in model.bert.encoder.layer:
        fully_shard(layer)
    return fully_shard(model)


def tamper(model, kind: str) -> None:
    """Add 1 to one frozen weight on every rank (FSDP1: in the whole value, written back)."""
    with torch.no_grad():
        if kind == "fsdp1":
            from torch.distributed.fsdp import FullyShardedDataParallel

            with FullyShardedDataParallel.summon_full_params(model, writeback=True):
                dict(model.named_parameters())[TAMPERED].add_(1.0)
        else:
            dict(model.named_parameters())[TAMPERED].to_local().add_(1.0)


def main():
    outdir, kind = Path(sys.argv[1]), sys.argv[2]
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    model = make_model()
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    policy = get_policy("bottom_n", n=1)
    trainable = policy.trainable_names(policy.anatomy(model), 0)
    set_trainable(model, trainable)
    frozen = sorted(set(init) - trainable)
    wrapped = wrap(model, kind)
    local_shapes = {n: tuple(getattr(p, "to_local", lambda p=p: p)().shape)
                    for n, p in wrapped.named_parameters()}
    audit = FrozenAudit(wrapped, frozen=[n for n, p in wrapped.named_parameters()
                                         if not p.requires_grad])
    snapshot = {n: t.clone() for n, t in audit.snapshot.items()}
    optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-2)
    generator = torch.Generator().manual_seed(1 + dist.get_rank())
    for _ in range(3):
        ids = torch.randint(3, 99, (4, 12), generator=generator)
        labels = torch.randint(0, 3, (4,), generator=generator)
        wrapped(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    passed = audit.check(wrapped)
    tamper(wrapped, kind)
    tampered = audit.check(wrapped)
    outdir.mkdir(parents=True, exist_ok=True)
    torch.save({"init": init, "frozen": frozen, "snapshot": snapshot, "local_shapes": local_shapes,
                "passed": passed.as_dict(), "tampered": tampered.as_dict()},
               outdir / f"rank{dist.get_rank()}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
