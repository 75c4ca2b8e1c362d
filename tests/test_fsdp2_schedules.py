"""Schedules on a model sharded with FSDP2 (``fully_shard``), on 2 CPU processes over gloo.

One launch of ``tests/fsdp2_schedule_worker.py`` (2 processes) drives the library's own schedule
machinery (``FreezeScheduleCallback``, ``create_optimizer``, ``DDPRewrapper``, the sharded
checkpoint of ``freeze_policies.distributed.fsdp2``) through ``gradual_unfreeze``, ``lisa`` and
``auto_freeze`` and compares, on both ranks:

- the ranks with each other: bit-identical;
- every tensor frozen for the whole run with its initial value: bit-identical (``full_tensor()``),
  and the audit passed having checked them;
- FSDP2 with DDP on the same global batch: equal within ``ATOL`` / ``RTOL`` (measured: 0.0);
- optimizer state: exactly for the parameters some stage opened;
- a run interrupted after ``RESUME_AT`` steps and resumed from the sharded checkpoint (new model,
  new optimizer, the schedule's state from ``trainer_state.json``) with the uninterrupted one:
  bit-identical; and the same resume through a fresh optimizer's template as it comes (the
  negative control, what accelerate's FSDP2 loader does) loses the state of blocks closed at
  load time, or fails where a block open at load time has none.

On a GPU (``-m gpu``, run by ``make gpu-check``): the same three schedules through
``FreezeTrainer`` and accelerate's FSDP2 plugin (``configs/accelerate/fsdp2.yaml``,
``tests/fsdp2_trainer_worker.py``), with a resume from accelerate's sharded checkpoint, against
the same worker under DDP (``configs/accelerate/ddp.yaml``), within ``GPU_ATOL`` / ``GPU_RTOL``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from torch import nn

from freeze_policies.distributed.fsdp2 import (
    fsdp2_rank_memory,
    optimizer_state_visible,
    prime_optimizer_state,
    shard_numel,
)

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "fsdp2_schedule_worker.py"
sys.path.insert(0, str(ROOT / "tests"))
from fsdp2_schedule_worker import POLICIES, RESUME_AT, full  # noqa: E402

ATOL, RTOL = 1e-6, 1e-5  # FSDP2 (reduce-scatter) against DDP (all-reduce), float32
RUNS = ("fsdp2", "resumed", "unprimed", "ddp")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def launched_all(tmp_path_factory) -> Path:
    """One launch of 2 processes for the three policies (the imports are most of its time)."""
    outdir = tmp_path_factory.mktemp("fsdp2")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_port", str(free_port()), str(WORKER), str(outdir), ",".join(POLICIES)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return outdir


@pytest.fixture(params=list(POLICIES))
def launched(request, launched_all):
    policy = request.param
    return policy, [torch.load(launched_all / policy / f"rank{rank}.pt", weights_only=False)
                    for rank in (0, 1)]


def test_ranks_agree_and_frozen_tensors_stay_bit_identical(launched):
    policy, ranks = launched
    init = ranks[0]["init"]
    for run in RUNS:
        first, second = ranks[0][run], ranks[1][run]
        if "error" in first:  # the negative control of auto_freeze (see the resume test)
            continue
        assert all(torch.equal(first["final"][n], second["final"][n]) for n in init), run
        assert first["stages"] == second["stages"] and first["decisions"] == second["decisions"]
    for rank in ranks:
        run = rank["fsdp2"]
        sharded = [n for n, shape in run["local_shapes"].items() if shape != init[n].shape]
        assert sharded, "fully_shard left every parameter whole: nothing was tested"
        assert len({stage for _, stage in run["stages"]}) >= 2, "the schedule never moved"
        never_open = sorted(set(init) - set(run["ever_open"]))
        assert never_open, "every parameter opened: the frozen check would be empty"
        for name in never_open:
            assert torch.equal(run["final"][name], init[name]), (policy, name)
        for name in run["ever_open"]:  # what opened did train
            assert not torch.equal(run["final"][name], init[name]), (policy, name)
        audit = run["audit"]  # also checks blocks from the step a stage closed them
        assert audit["passed"], audit
        closes = policy != "gradual_unfreeze"
        assert (audit["checked"] > len(never_open)) if closes else \
            (audit["checked"] == len(never_open)), audit


def test_fsdp2_equals_ddp_on_the_same_global_batch(launched):
    policy, ranks = launched
    fsdp2, ddp = ranks[0]["fsdp2"], ranks[0]["ddp"]
    assert fsdp2["stages"] == ddp["stages"]
    for name, value in ddp["final"].items():
        torch.testing.assert_close(fsdp2["final"][name], value, atol=ATOL, rtol=RTOL)
    if policy == "auto_freeze":  # measured on whole gradients, not one rank's shard
        assert [d["auto_freeze_depth"] for d in fsdp2["decisions"]] == \
            [d["auto_freeze_depth"] for d in ddp["decisions"]]
        start = POLICIES[policy]["initial_depth"]
        assert max(d["auto_freeze_depth"] for d in fsdp2["decisions"]) > start, "nothing froze"
        for mine, theirs in zip(fsdp2["decisions"], ddp["decisions"], strict=True):
            assert mine["auto_freeze_rates"].keys() == theirs["auto_freeze_rates"].keys()
            for block, rate in theirs["auto_freeze_rates"].items():
                assert mine["auto_freeze_rates"][block] == pytest.approx(rate, abs=1e-5)


def test_optimizer_state_only_for_what_has_been_open(launched):
    _, ranks = launched
    opened = ranks[0]["fsdp2"]["ever_open"]  # the resumed run opened some before its restart
    for run in ("fsdp2", "ddp", "resumed"):
        assert ranks[0][run]["with_state"] == opened, run


def test_resume_mid_schedule_from_a_sharded_checkpoint_equals_the_uninterrupted_run(launched):
    policy, ranks = launched
    whole, resumed, unprimed = (ranks[0][run] for run in ("fsdp2", "resumed", "unprimed"))
    assert resumed["stages"][0][0] == RESUME_AT  # started from the checkpoint's step
    assert resumed["stages"][1:] == [s for s in whole["stages"] if s[0] > RESUME_AT]
    assert resumed["decisions"] == whole["decisions"]
    for name, value in whole["final"].items():
        assert torch.equal(resumed["final"][name], value), (policy, name)
    # the state loaded: every parameter some stage opened before the checkpoint
    opened_before = {n for n in resumed["state_after_load"]}
    assert opened_before < set(whole["ever_open"]) or policy == "auto_freeze"
    # the negative control: a fresh optimizer's template as it comes (accelerate's FSDP2 load)
    if policy == "auto_freeze":  # stage 0 opens block 0, which has no saved state
        assert "Missing key in checkpoint state_dict" in unprimed["error"]
        assert "layer.0." in unprimed["error"]
    else:  # the state of blocks closed at load time is dropped, and the run drifts
        assert len(unprimed["state_after_load"]) < len(resumed["state_after_load"])
        assert any(not torch.equal(unprimed["final"][n], v) for n, v in whole["final"].items())


# -- the helpers on one process: accounting, priming, visibility ------------------------------
def test_shard_numel_follows_torch_chunk():
    assert [shard_numel((10, 3), 4, r) for r in range(4)] == [9, 9, 9, 3]  # 3, 3, 3, 1 rows
    assert [shard_numel((2, 5), 4, r) for r in range(4)] == [5, 5, 0, 0]
    assert shard_numel((), 8) == 1
    for rows, world in ((10, 4), (7, 3), (128256, 8)):
        chunks = torch.arange(rows).chunk(world)
        sizes = [len(c) for c in chunks] + [0] * (world - len(chunks))
        assert [shard_numel((rows,), world, r) for r in range(world)] == sizes


def test_rank_memory_adds_up_to_the_whole_model_and_refuses_unknown_names():
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 3))
    trainable, with_state = ["1.weight", "1.bias"], ["0.weight", "1.weight", "1.bias"]
    ranks = [fsdp2_rank_memory(model, trainable=trainable, with_state=with_state, world_size=2,
                               rank=r) for r in (0, 1)]
    sizes = {n: p.numel() * 4 for n, p in model.named_parameters()}
    assert sum(r.parameter_bytes for r in ranks) == sum(sizes.values())
    assert sum(r.gradient_bytes for r in ranks) == sizes["1.weight"] + sizes["1.bias"]
    assert sum(r.optimizer_state_bytes for r in ranks) == 2 * sum(sizes[n] for n in with_state)
    assert ranks[0].as_dict()["total_bytes"] == ranks[0].total_bytes
    with pytest.raises(ValueError, match="1 names are not parameters of Sequential: 2.weight"):
        fsdp2_rank_memory(model, trainable=["2.weight"], with_state=[], world_size=2)


def test_priming_makes_slots_for_the_named_parameters_only_and_moves_nothing():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)
    for param in model[0].parameters():
        param.requires_grad_(False)  # closed, as a schedule leaves a block
    model[1].weight.grad = torch.ones_like(model[1].weight)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    primed = prime_optimizer_state(optimizer, model, ["0.weight", "1.bias", "missing"])
    assert primed == ["0.weight", "1.bias"]
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p, s in optimizer.state.items() if s) == primed
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert [g["lr"] for g in optimizer.param_groups] == [0.1]
    assert torch.equal(model[1].weight.grad, torch.ones(2, 4)) and model[0].weight.grad is None
    assert prime_optimizer_state(optimizer, model, ["0.weight"]) == []  # has state already


def test_visibility_sets_requires_grad_to_the_chosen_ones_and_back():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model[1].weight.requires_grad_(False)
    optimizer.state[model[1].weight]["momentum_buffer"] = torch.zeros(2, 2)
    with optimizer_state_visible(model, optimizer):  # saving: what has state
        assert [n for n, p in model.named_parameters() if p.requires_grad] == ["1.weight"]
    with optimizer_state_visible(model, optimizer, ["0.bias"]):  # loading: what was saved
        assert [n for n, p in model.named_parameters() if p.requires_grad] == ["0.bias"]
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == ["1.weight"]


@pytest.fixture
def gloo_group():
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


def test_accelerates_fsdp2_optimizer_save_and_load_keep_closed_blocks(gloo_group, tmp_path):
    """The calls accelerate's ``save_fsdp_optimizer`` / ``load_fsdp_optimizer`` make under FSDP2
    (``get_optimizer_state_dict`` into ``{"optimizer": ...}``, ``dcp.save``; a fresh optimizer's
    ``get_optimizer_state_dict`` as template, ``dcp.load``, ``set_optimizer_state_dict``), wrapped
    as ``FreezeTrainer`` wraps them; without the wrappers the moments of a block closed at load
    time are lost."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )
    from torch.distributed.fsdp import fully_shard

    from freeze_policies.distributed.fsdp2 import loading_into

    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
        for layer in model:
            fully_shard(layer)
        fully_shard(model)
        return model, torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.5)

    model, optimizer = build()
    for block in (0, 1):  # block 0 trains a step, closes; block 1 opens (a LISA switch)
        for index, layer in enumerate(model):
            layer.requires_grad_(index in (block, 2))
        model(torch.ones(3, 4)).sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    moments = {n: full(optimizer.state[p]["exp_avg"]) for n, p in model.named_parameters()}
    assert set(moments) == {n for n, _ in model.named_parameters()}

    def save(path, wrapped):
        with optimizer_state_visible(model, optimizer) if wrapped else nullcontext():
            state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
        dcp.save(state, checkpoint_id=str(path))

    def load(path, wrapped):
        fresh, fresh_optimizer = build()
        for index, layer in enumerate(fresh):  # stage 0 again, as a resumed trainer starts
            layer.requires_grad_(index in (0, 2))
        with loading_into(fresh, fresh_optimizer, path) if wrapped else nullcontext():
            state = {"optimizer": get_optimizer_state_dict(fresh, fresh_optimizer)}
            dcp.load(state, checkpoint_id=str(path))
            set_optimizer_state_dict(fresh, fresh_optimizer, state["optimizer"])
        names = {id(p): n for n, p in fresh.named_parameters()}
        return {names[id(p)]: full(s["exp_avg"]) for p, s in fresh_optimizer.state.items() if s}

    save(tmp_path / "wrapped", wrapped=True)
    loaded = load(tmp_path / "wrapped", wrapped=True)
    assert loaded.keys() == moments.keys()
    assert all(torch.equal(loaded[n], moments[n]) for n in moments)
    assert [p.requires_grad for p in model.parameters()] == [False, False, True, True, True, True]
    save(tmp_path / "plain", wrapped=False)  # the negative control: block 1 is closed at load
    plain = load(tmp_path / "plain", wrapped=False)
    assert "0.weight" in plain and "1.weight" not in plain


def test_accounted_table_for_llama3_8b_on_the_meta_device():
    """recipes/bench.py fsdp2_memory's first table (its asserts tie the shards to predict_cost)."""
    from recipes.benchmarks.fsdp2_memory import accounted

    result = accounted(world_size=8, k=2)
    assert result["total_params"] == 8_030_261_248  # Llama-3-8B
    full, now, ever = result["rows"].values()
    assert full["parameter_bytes"] == now["parameter_bytes"] == ever["parameter_bytes"]
    assert full["parameter_bytes"] == pytest.approx(4 * 8_030_261_248 / 8, rel=1e-3)
    assert now["gradient_bytes"] == ever["gradient_bytes"] < full["gradient_bytes"] / 5
    assert now["optimizer_state_bytes"] == 2 * now["gradient_bytes"]
    assert ever["optimizer_state_bytes"] == full["optimizer_state_bytes"]


# -- GPU: the same schedules through accelerate's FSDP2 plugin and FreezeTrainer (-m gpu) ------
TRAINER_WORKER = ROOT / "tests" / "fsdp2_trainer_worker.py"
GPU_ATOL, GPU_RTOL = 1e-4, 1e-3  # CUDA kernels (atomics in the embedding backward) reorder sums


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def trainer_launch(outdir: Path, config: str) -> Path:
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(ROOT / "configs/accelerate" / config), "--num_processes", str(min(2, gpu_count())),
        "--main_process_port", str(free_port()), "--mixed_precision", "no",
        str(TRAINER_WORKER), str(outdir),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return outdir


@pytest.mark.gpu
@pytest.mark.skipif(gpu_count() == 0, reason="needs CUDA")
def test_freeze_trainer_runs_schedules_under_accelerate_fsdp2(tmp_path):
    fsdp2 = trainer_launch(tmp_path / "fsdp2", "fsdp2.yaml")
    ddp = trainer_launch(tmp_path / "ddp", "ddp.yaml")
    ranks = range(min(2, gpu_count()))
    for policy in POLICIES:
        results = [torch.load(fsdp2 / policy / f"rank{r}.pt", weights_only=False) for r in ranks]
        reference = torch.load(ddp / policy / "rank0.pt", weights_only=False)
        first, init = results[0], results[0]["init"]
        whole, resumed = first["whole"], first["resumed"]
        assert whole["fsdp"], "accelerate did not shard: the FSDP2 config was not applied"
        for other in results[1:]:
            for run in ("whole", "resumed"):
                assert all(torch.equal(other[run]["final"][n], first[run]["final"][n])
                           for n in init), (policy, run)
        never_open = set(init) - set(whole["ever_open"])
        assert never_open and whole["audit"]["passed"], policy
        for name in never_open:
            assert torch.equal(whole["final"][name], init[name]), (policy, name)
        assert whole["with_state"] == whole["ever_open"] == resumed["with_state"], policy
        for name, value in whole["final"].items():
            torch.testing.assert_close(resumed["final"][name], value, atol=GPU_ATOL,
                                       rtol=GPU_RTOL)
            torch.testing.assert_close(value, reference["whole"]["final"][name],
                                       atol=GPU_ATOL, rtol=GPU_RTOL)
