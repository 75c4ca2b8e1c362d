"""The frozen-weights audit under sharding compares whole values: FSDP1 and FSDP2 on 2 CPU
processes (gloo, tests/fsdp_audit_worker.py), ZeRO-3's gather on a stand-in placeholder."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from freeze_policies.training.audit import FrozenAudit, clean_name, whole_values

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "fsdp_audit_worker.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("kind", ["fsdp1", "fsdp2"])
def test_audit_under_fsdp_snapshots_and_checks_whole_values(tmp_path, kind):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(free_port()), str(WORKER), str(tmp_path), kind],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        init, snapshot, frozen = result["init"], result["snapshot"], result["frozen"]
        sharded = [n for n, shape in result["local_shapes"].items()
                   if clean_name(n) in init and shape != tuple(init[clean_name(n)].shape)]
        assert sharded, "the wrapper left every parameter whole: nothing was tested"
        assert sorted(snapshot) == frozen  # names without FSDP1's wrapper prefixes
        for name in frozen:  # whole and equal to the initial value, on every rank
            assert snapshot[name].shape == init[name].shape, (rank, name)
            assert torch.equal(snapshot[name], init[name]), (rank, name)
        assert result["passed"]["passed"] and result["passed"]["checked"] == len(frozen)
        tampered = result["tampered"]
        assert not tampered["passed"]
        assert tampered["moved"] == ["bert.encoder.layer.0.output.dense.weight"]
        assert tampered["max_abs_diff"] == pytest.approx(1.0)


def test_zero3_placeholders_are_gathered_one_parameter_at_a_time(monkeypatch):
    """A ZeRO-3 parameter (``ds_id``) is empty outside a gather; a stand-in for
    ``deepspeed.zero.GatheredParameters`` fills it while inside, as DeepSpeed does."""
    whole = {"0.weight": torch.arange(6.0).reshape(2, 3), "0.bias": torch.ones(2)}
    model = nn.Sequential(nn.Linear(3, 2))
    for ds_id, (name, param) in enumerate(model.named_parameters()):
        param.requires_grad_(False)
        param.data = torch.empty(0)
        param.ds_id = ds_id
        param.full = whole[name]
    gathered = []  # how many parameters each gather held

    class GatheredParameters:
        def __init__(self, params, modifier_rank=None):
            assert modifier_rank is None  # read-only: nothing is written back
            self.params = params

        def __enter__(self):
            gathered.append(len(self.params))
            for param in self.params:
                param.data = param.full.clone()

        def __exit__(self, *exc):
            for param in self.params:
                param.data = torch.empty(0)

    fake = types.ModuleType("deepspeed")
    fake.zero = types.SimpleNamespace(GatheredParameters=GatheredParameters)
    monkeypatch.setitem(sys.modules, "deepspeed", fake)

    audit = FrozenAudit(model)
    assert {n: t.shape for n, t in audit.snapshot.items()} == {n: t.shape for n, t in
                                                              whole.items()}
    assert all(torch.equal(audit.snapshot[n], whole[n]) for n in whole)
    assert gathered == [1, 1]  # one parameter per gather
    assert audit.check(model).passed
    model[0].bias.full = torch.full((2,), 3.0)  # the gathered value changed
    result = audit.check(model)
    assert not result.passed and result.moved == ["0.bias"] and result.max_abs_diff == 2.0


def test_whole_values_of_plain_parameters_are_copies_on_their_device():
    model = nn.Linear(2, 2)
    values = whole_values(model, ["weight"])
    assert list(values) == ["weight"] and torch.equal(values["weight"], model.weight)
    assert values["weight"].data_ptr() != model.weight.data_ptr()
