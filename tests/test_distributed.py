"""Freezing under DDP, FSDP and DeepSpeed.

- Guards: ``check_distributed`` is a pure function of a ``DistributedSetup``; every refusal and
  every allowed combination has a row here, and ``FreezeTrainer`` / ``FreezeScheduleCallback``
  are shown to call it with their own setup.
- DDP, for real: ``tests/ddp_worker.py`` is launched as 2 CPU processes over gloo
  (``configs/accelerate/ddp_cpu.yaml``) and as 1 process with twice the per-device batch. After
  ``gradual_unfreeze`` / ``lisa`` / gradient accumulation / ``zero_lr`` the ranks' weights are
  bit-identical and match the 1-process run; the naive ``requires_grad`` flip (the negative
  control) leaves them different. About 20 s on 2 cores.
- GPU (``-m gpu``, on a machine with CUDA): the same worker under the FSDP1, FSDP2 and
  DeepSpeed configs: fixed policies train; schedules train under FSDP2 (proven on CPU by
  ``tests/test_fsdp2_schedules.py``); schedules under FSDP1 or DeepSpeed and FSDP1 without
  ``use_orig_params`` are refused before training.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from trainer_support import RandomTokens, make_args, make_model
from transformers import Trainer

from freeze_policies import (
    FreezeOptions,
    FreezePolicyError,
    FreezeScheduleCallback,
    FreezeTrainer,
    get_policy,
)
from freeze_policies.distributed import guards as dist_module
from freeze_policies.distributed.ddp import REGISTERED, DDPRewrapper
from freeze_policies.distributed.guards import (
    DistributedSetup,
    check_distributed,
    setup_from_state,
    trainer_find_unused_parameters,
)
from freeze_policies.policies.base import policy_mixes

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "ddp_worker.py"

FSDP1 = DistributedSetup("fsdp", 2, fsdp_version=1, use_orig_params=False)
FSDP1_ORIG = DistributedSetup("fsdp", 2, fsdp_version=1, use_orig_params=True)
FSDP2 = DistributedSetup("fsdp", 2, fsdp_version=2)
FSDP2_COMPILED = DistributedSetup("fsdp", 2, fsdp_version=2, compiled=True)
ZERO2 = DistributedSetup("deepspeed", 2, zero_stage=2)
ZERO3 = DistributedSetup("deepspeed", 2, zero_stage=3)
DDP = DistributedSetup("ddp", 2, find_unused_parameters=True)
DDP_NO_UNUSED = DistributedSetup("ddp", 2, find_unused_parameters=False)
DDP_COMPILED = DistributedSetup("ddp", 2, compiled=True)
SINGLE = DistributedSetup()

FIXED = dict(policy_name="bottom_n", scheduled=False, mixed=True)
FIXED_ALL = dict(policy_name="custom", scheduled=False, mixed=False)  # trains every parameter
GRADUAL = dict(policy_name="gradual_unfreeze", scheduled=True, mixed=True)
LISA = dict(policy_name="lisa", scheduled=True, mixed=True)


# -- guards: what each refuses, and what it lets through ------------------------------------
REFUSED = [
    ("fsdp1-mixed", FSDP1, FIXED, {},
     r"FSDP1, use_orig_params=False.*FlatParameter whose requires_grad must be uniform.*"
     r"`fsdp_use_orig_params: true`.*FSDP2 \(`fsdp_version: 2`"),
    ("fsdp1-schedule", FSDP1_ORIG, GRADUAL, {},
     r"'gradual_unfreeze' changes the trainable set.*FSDP1, use_orig_params=True does not "
     r"support: FSDP1 builds its FlatParameters.*use FSDP2 \(`fsdp_version: 2`"),
    ("fsdp1-flat-schedule", FSDP1, LISA, {}, r"'lisa' changes the trainable set.*FSDP1"),
    ("fsdp2-compiled-schedule", FSDP2_COMPILED, LISA, {},
     r"'lisa' changes the trainable set.*under FSDP2 with torch_compile is not proven"),
    ("fsdp2-prefix-cache-schedule", FSDP2, GRADUAL, {"prefix_cache": True},
     r"'gradual_unfreeze' with the frozen-prefix cache under FSDP2 is not proven"),
    ("fsdp2-zero_lr", FSDP2, FIXED, {"freeze_mode": "zero_lr"},
     r"freeze_mode='zero_lr' is not supported under FSDP2"),
    ("fsdp1-zero_grad", FSDP1_ORIG, FIXED, {"freeze_mode": "zero_grad"},
     r"freeze_mode='zero_grad' is not supported under FSDP1"),
    ("zero2-schedule", ZERO2, GRADUAL, {},
     r"DeepSpeed ZeRO-2 does not support: DeepSpeed fixes its parameter groups when the engine "
     r"is built.*use a fixed policy or DDP"),
    ("zero3-schedule", ZERO3, LISA, {}, r"DeepSpeed ZeRO-3 does not support: DeepSpeed fixes"),
    ("zero3-zero_lr", ZERO3, FIXED, {"freeze_mode": "zero_lr"},
     r"freeze_mode='zero_lr' is not supported under DeepSpeed ZeRO-3"),
    ("ddp-compiled-schedule", DDP_COMPILED, GRADUAL, {},
     r"re-wraps the model in a new DistributedDataParallel.*torch_compile"),
    ("ddp-plain-trainer-no-unused", DDP_NO_UNUSED, GRADUAL, {"rewraps": False},
     r"plain Trainer under DDP over 2 processes.*needs find_unused_parameters=True.*"
     r"ddp_find_unused_parameters=True, or use FreezeTrainer"),
]

ALLOWED = [
    ("fsdp1-orig-mixed", FSDP1_ORIG, FIXED, {}),
    ("fsdp1-uniform", FSDP1, FIXED_ALL, {}),  # nothing frozen: flat params are uniform
    ("fsdp2-mixed", FSDP2, FIXED, {}),
    # proven on 2 CPU processes: tests/test_fsdp2_schedules.py
    ("fsdp2-gradual", FSDP2, GRADUAL, {}),
    ("fsdp2-lisa-plain-trainer", FSDP2, LISA, {"rewraps": False}),
    ("fsdp2-compiled-fixed", FSDP2_COMPILED, FIXED, {}),
    ("ddp-prefix-cache-schedule", DDP, GRADUAL, {"prefix_cache": True}),
    ("zero2-fixed", ZERO2, FIXED, {}),
    ("zero3-fixed", ZERO3, FIXED, {}),
    ("ddp-gradual", DDP, GRADUAL, {}),
    ("ddp-lisa-no-unused", DDP_NO_UNUSED, LISA, {}),  # FreezeTrainer re-wraps: not needed
    ("ddp-plain-trainer-unused", DDP, GRADUAL, {"rewraps": False}),
    ("ddp-zero_lr", DDP, FIXED, {"freeze_mode": "zero_lr"}),
    ("ddp-zero_grad", DDP, FIXED, {"freeze_mode": "zero_grad"}),
    ("ddp-compiled-fixed", DDP_COMPILED, FIXED, {}),
    ("single-schedule", SINGLE, GRADUAL, {}),
    ("no-policy-fsdp1", FSDP1, dict(policy_name=None, scheduled=False, mixed=True), {}),
    ("no-policy-zero3", ZERO3, dict(policy_name=None, scheduled=False, mixed=True), {}),
]


@pytest.mark.parametrize("setup,policy,extra,message",
                         [row[1:] for row in REFUSED], ids=[row[0] for row in REFUSED])
def test_guard_refuses(setup, policy, extra, message):
    with pytest.raises(FreezePolicyError, match=message):
        check_distributed(setup, **policy, **extra)


@pytest.mark.parametrize("setup,policy,extra",
                         [row[1:] for row in ALLOWED], ids=[row[0] for row in ALLOWED])
def test_guard_allows(setup, policy, extra):
    assert check_distributed(setup, **policy, **extra) is None


def test_setup_is_read_from_the_accelerate_state():
    def state(kind, processes=2, **extra):
        return SimpleNamespace(distributed_type=kind, num_processes=processes, **extra)

    # accelerate's own plugin: FSDP1 defaults to use_orig_params=False, which the guard refuses
    fsdp1 = setup_from_state(state(DistributedType.FSDP,
                                   fsdp_plugin=FullyShardedDataParallelPlugin(fsdp_version=1)))
    assert fsdp1 == FSDP1
    orig = FullyShardedDataParallelPlugin(fsdp_version=1, use_orig_params=True)
    assert setup_from_state(state(DistributedType.FSDP, fsdp_plugin=orig)) == FSDP1_ORIG
    fsdp2 = FullyShardedDataParallelPlugin(fsdp_version=2)
    assert setup_from_state(state(DistributedType.FSDP, fsdp_plugin=fsdp2)) == FSDP2
    zero = SimpleNamespace(zero_stage=3)
    assert setup_from_state(state(DistributedType.DEEPSPEED, deepspeed_plugin=zero)) == ZERO3
    for kind in (DistributedType.MULTI_GPU, DistributedType.MULTI_CPU):
        assert setup_from_state(state(kind), find_unused_parameters=True) == DDP
    compiled = SimpleNamespace(backend=SimpleNamespace(value="INDUCTOR"))
    assert setup_from_state(state(DistributedType.MULTI_GPU, dynamo_plugin=compiled)).compiled
    assert setup_from_state(state(DistributedType.NO, 1)) == SINGLE
    assert setup_from_state(state(DistributedType.MULTI_GPU, 1)) == SINGLE  # one process
    assert FSDP1.describe() == "FSDP1, use_orig_params=False"
    assert FSDP2.describe() == "FSDP2" and ZERO2.describe() == "DeepSpeed ZeRO-2"


def test_policy_mixes_says_whether_a_stage_leaves_frozen_and_trainable_side_by_side():
    model = make_model("bert")
    anat = get_policy("embeddings").anatomy(model)
    assert policy_mixes(get_policy("bottom_n", n=1), anat)
    assert policy_mixes(get_policy("gradual_unfreeze"), anat)  # stage 0 trains the head only
    assert policy_mixes(get_policy("lisa", k=1), anat)
    assert not policy_mixes(get_policy("lisa", k=3), anat)  # every block, every stage
    assert not policy_mixes(get_policy("custom", trainable=["."]), anat)


def test_find_unused_parameters_follows_trainer(tmp_path):
    model = make_model("bert")
    assert trainer_find_unused_parameters(make_args(tmp_path), model) is True
    checkpointing = make_args(tmp_path, gradient_checkpointing=True)
    assert trainer_find_unused_parameters(checkpointing, model) is False
    off = make_args(tmp_path, ddp_find_unused_parameters=False)
    assert trainer_find_unused_parameters(off, model) is False
    on = make_args(tmp_path, gradient_checkpointing=True, ddp_find_unused_parameters=True)
    assert trainer_find_unused_parameters(on, model) is True


def _pretend(monkeypatch, setup):
    """Make the trainer and the callback see ``setup`` instead of this one-process run."""
    monkeypatch.setattr(dist_module, "setup_from_state", lambda state, *a, **k: setup)
    monkeypatch.setattr("freeze_policies.training.callbacks.current_setup", lambda *a, **k: setup)


@pytest.mark.parametrize("setup,policy,options,message", [
    (FSDP1, get_policy("bottom_n", n=1), {}, "fsdp_use_orig_params: true"),
    (FSDP1_ORIG, get_policy("gradual_unfreeze"), {}, "FSDP1 builds its FlatParameters"),
    (ZERO2, get_policy("lisa", k=1), {}, "DeepSpeed fixes its parameter groups"),
    (ZERO3, get_policy("bottom_n", n=1), {"freeze_mode": "zero_grad"},
     "freeze_mode='zero_grad' is not supported under DeepSpeed ZeRO-3"),
    (DDP_COMPILED, get_policy("gradual_unfreeze"), {}, "torch_compile"),
], ids=["fsdp1", "fsdp1-schedule", "zero2-schedule", "zero3-zero_grad", "ddp-compiled"])
def test_freeze_trainer_runs_the_guards_when_built(monkeypatch, tmp_path, setup, policy,
                                                   options, message):
    _pretend(monkeypatch, setup)
    with pytest.raises(FreezePolicyError, match=message):
        FreezeTrainer(model=make_model("bert"), args=make_args(tmp_path),
                      train_dataset=RandomTokens("bert"), freeze_policy=policy,
                      freeze_options=FreezeOptions(**options))
    # the same trainer is built where the setup allows it
    _pretend(monkeypatch, FSDP1_ORIG if setup.kind == "fsdp" else SINGLE)
    FreezeTrainer(model=make_model("bert"), args=make_args(tmp_path),
                  train_dataset=RandomTokens("bert"), freeze_policy=get_policy("bottom_n", n=1))


@pytest.mark.parametrize("policy", ["gradual_unfreeze", "lisa", "auto_freeze"])
def test_freeze_trainer_and_callback_accept_schedules_under_fsdp2(monkeypatch, tmp_path, caplog,
                                                                  policy):
    _pretend(monkeypatch, FSDP2)
    trainer = FreezeTrainer(model=make_model("bert"), args=make_args(tmp_path),
                            train_dataset=RandomTokens("bert"), freeze_policy=policy)
    assert trainer.freeze_policy.scheduled
    with caplog.at_level(logging.WARNING, logger="freeze_policies"):
        Trainer(model=make_model("bert"), args=make_args(tmp_path),
                train_dataset=RandomTokens("bert"), callbacks=[FreezeScheduleCallback(policy)])
    assert "under FSDP2 with a plain Trainer" in caplog.text and "use FreezeTrainer" in caplog.text
    with pytest.raises(FreezePolicyError, match="frozen-prefix cache under FSDP2 is not proven"):
        FreezeTrainer(model=make_model("bert"), args=make_args(tmp_path),
                      train_dataset=RandomTokens("bert"), freeze_policy=policy,
                      frozen_prefix_eval=True)
    _pretend(monkeypatch, FSDP2_COMPILED)
    with pytest.raises(FreezePolicyError, match="torch_compile is not proven"):
        FreezeTrainer(model=make_model("bert"), args=make_args(tmp_path),
                      train_dataset=RandomTokens("bert"), freeze_policy=policy)


def test_plain_trainer_callback_runs_the_guards_when_built(monkeypatch, tmp_path):
    _pretend(monkeypatch, ZERO2)
    with pytest.raises(FreezePolicyError, match="DeepSpeed fixes its parameter groups"):
        Trainer(model=make_model("bert"), args=make_args(tmp_path),
                train_dataset=RandomTokens("bert"),
                callbacks=[FreezeScheduleCallback(get_policy("gradual_unfreeze"))])
    _pretend(monkeypatch, FSDP1)
    with pytest.raises(FreezePolicyError, match="fsdp_use_orig_params: true"):
        Trainer(model=make_model("bert"), args=make_args(tmp_path),
                train_dataset=RandomTokens("bert"),
                callbacks=[FreezeScheduleCallback(get_policy("top_n", n=1))])


# -- DDPRewrapper in one process (a 1-rank gloo group) ---------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def gloo_group():
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


def test_rewrapper_registers_exactly_the_trainable_parameters(gloo_group):
    from accelerate.utils import DistributedDataParallelKwargs

    model = make_model("bert")
    policy = get_policy("gradual_unfreeze")
    policy.apply(model, 0)
    rewrapper = DDPRewrapper()
    rewrapper.before_prepare(model)
    handler = DistributedDataParallelKwargs(find_unused_parameters=True, bucket_cap_mb=5)
    first = torch.nn.parallel.DistributedDataParallel(model, **handler.to_kwargs())
    accelerator = SimpleNamespace(ddp_handler=handler, _models=[first])

    assert rewrapper.current(first, accelerator, step=0) is first  # matches: no re-wrap
    assert rewrapper.events == []

    policy.apply(model, 1)  # a stage opens the top block
    with first.no_sync():  # Trainer's loop: first micro-batch of an accumulation window
        second = rewrapper.current(first, accelerator, step=2)
        assert second is not first and second.module is model
        assert second.require_backward_grad_sync is False  # no_sync carried over
    assert second.find_unused_parameters is True
    assert second.bucket_bytes_cap == 5 * 1024 * 1024  # the accelerator's kwargs
    assert getattr(second, REGISTERED) == frozenset(
        id(p) for p in model.parameters() if p.requires_grad
    )
    assert accelerator._models == [second]
    assert [e.step for e in rewrapper.events] == [2]
    assert rewrapper.events[0].tensors == sum(p.requires_grad for p in model.parameters())

    assert rewrapper.current(first, accelerator, step=3) is second  # same stage: kept
    assert second.require_backward_grad_sync is True
    policy.apply(model, 2)
    third = rewrapper.current(first, accelerator, step=4)
    assert third is not second and len(rewrapper.events) == 2
    # a new train() that starts from the last wrapper adopts it without re-wrapping
    fresh = DDPRewrapper()
    assert fresh.current(third, accelerator, step=0) is third and fresh.events == []
    # a wrapper of unknown registration (nothing recorded before prepare) is replaced
    unknown = DDPRewrapper()
    assert unknown.current(first, accelerator, step=0) is not first
    # not DDP: untouched
    assert DDPRewrapper().current(model) is model


# -- DDP for real: 2 CPU processes over gloo vs 1 process ------------------------------------
TWO_PROCESS_SCENARIOS = (
    "gradual,lisa,accum,zero_lr,zero_grad,callback,naive,callback_no_unused,auto"
)
ONE_PROCESS_SCENARIOS = "gradual,lisa,accum,zero_lr,zero_grad,callback,auto"


def worker_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def launch(outdir: Path, config: str, scenarios: str, batch: int, *extra: str, timeout=300):
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", config,
        "--main_process_port", str(free_port()), *extra,
        str(WORKER), str(outdir), "--batch", str(batch), "--scenarios", scenarios,
    ]
    done = subprocess.run(command, cwd=ROOT, env=worker_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """One 2-process launch (per-device batch 4) and one 1-process run (batch 8)."""
    base = tmp_path_factory.mktemp("ddp")
    launch(base / "two", str(ROOT / "configs/accelerate/ddp_cpu.yaml"), TWO_PROCESS_SCENARIOS, 4)
    done = subprocess.run(
        [sys.executable, str(WORKER), str(base / "one"), "--batch", "8",
         "--scenarios", ONE_PROCESS_SCENARIOS],
        cwd=ROOT, env=worker_env(), capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return base


def load(base: Path, run: str, scenario: str, rank: int = 0) -> dict:
    return torch.load(base / run / scenario / f"rank{rank}.pt", weights_only=False)


def assert_ranks_identical(base: Path, scenario: str) -> dict:
    rank0, rank1 = load(base, "two", scenario, 0), load(base, "two", scenario, 1)
    assert rank0["info"]["world_size"] == 2
    assert rank0["state"].keys() == rank1["state"].keys()
    different = [k for k in rank0["state"] if not torch.equal(rank0["state"][k],
                                                             rank1["state"][k])]
    assert different == []
    return rank0


def assert_matches_one_process(base: Path, scenario: str) -> None:
    two, one = load(base, "two", scenario), load(base, "one", scenario)
    assert one["info"]["world_size"] == 1
    assert torch.equal(two["init"]["bert.embeddings.word_embeddings.weight"],
                       one["init"]["bert.embeddings.word_embeddings.weight"])
    for name, value in one["state"].items():
        torch.testing.assert_close(two["state"][name], value, atol=1e-5, rtol=0, msg=name)
    assert two["info"]["stages"] == one["info"]["stages"]


def moved(result: dict) -> set[str]:
    return {k for k in result["state"] if not torch.equal(result["state"][k], result["init"][k])}


def test_ddp_gradual_unfreeze_keeps_ranks_bit_identical_and_matches_one_process(ddp_runs):
    result = assert_ranks_identical(ddp_runs, "gradual")
    assert_matches_one_process(ddp_runs, "gradual")
    info = result["info"]
    assert info["stages"] == [(0, 0), (2, 1), (4, 2), (6, 3)]  # head, block 1, block 0, all
    assert info["audit"] == [True]
    assert moved(result) == set(result["state"])  # the last stage trained the embeddings too
    # one re-wrap per stage change, each registering more parameters; then the forwards ran on
    # the new wrapper, not on the one Trainer's loop holds
    assert [e["step"] for e in info["rewraps"]] == [2, 4, 6]
    sizes = [e["elements"] for e in info["rewraps"]]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3
    assert [on_first for on_first, _ in info["forwards"]] == [True] * 2 + [False] * 6


def test_ddp_lisa_keeps_ranks_bit_identical_and_matches_one_process(ddp_runs):
    result = assert_ranks_identical(ddp_runs, "lisa")
    assert_matches_one_process(ddp_runs, "lisa")
    # seed 6 draws block 1, 0, 1, 1: re-wraps when the set changes (steps 2, 4), not at step 6
    assert [e["step"] for e in result["info"]["rewraps"]] == [2, 4]
    assert any(k.startswith("bert.encoder.layer.0.") for k in moved(result))
    assert any(k.startswith("bert.encoder.layer.1.") for k in moved(result))


def test_ddp_auto_freeze_takes_the_main_process_decision_on_every_rank(ddp_runs):
    """Rank 1's own criterion never freezes (see ddp_worker's ``auto``); rank 0's does, at the
    end of the second window. Both ranks freeze block 0 at step 4 and stay bit-identical."""
    result = assert_ranks_identical(ddp_runs, "auto")
    assert_matches_one_process(ddp_runs, "auto")
    for rank in (0, 1):
        info = load(ddp_runs, "two", "auto", rank)["info"]
        assert info["stages"] == [(0, 0), (4, 1)]
        assert info["audit"] == [True]
    assert [e["step"] for e in result["info"]["rewraps"]] == [4]  # fewer parameters to reduce
    assert any(k.startswith("bert.encoder.layer.0.") for k in moved(result))


def test_ddp_gradient_accumulation_carries_no_sync_to_the_new_wrapper(ddp_runs):
    result = assert_ranks_identical(ddp_runs, "accum")
    assert_matches_one_process(ddp_runs, "accum")  # 2 x 2 rows x 2 ranks == 8 rows in one
    forwards = result["info"]["forwards"]
    assert len(forwards) == 16
    # first micro-batch of each step under no_sync (False), the second syncs (True), also on
    # the re-wrapped model
    assert [sync for _, sync in forwards] == [False, True] * 8
    assert [on_first for on_first, _ in forwards[4:]] == [False] * 12


def test_ddp_zero_lr_keeps_ranks_identical(ddp_runs):
    # zero_lr makes every parameter require grad after DDP wrapped the model; unless DDP is
    # re-wrapped, the frozen ones' unsynchronised gradients enter the gradient-norm clipping
    # and the ranks' trainable weights drift apart
    result = assert_ranks_identical(ddp_runs, "zero_lr")
    assert_matches_one_process(ddp_runs, "zero_lr")
    assert [e["step"] for e in result["info"]["rewraps"]] == [0]
    assert result["info"]["audit"] == [True]
    assert not any(k.startswith(("bert.embeddings.", "bert.encoder.layer.0."))
                   for k in moved(result))


def test_ddp_zero_grad_keeps_frozen_gradients_zero_through_the_all_reduce(ddp_runs):
    # after the re-wrap DDP all-reduces the frozen parameters' gradients too; the zeroing hook
    # runs before DDP reads them, so they stay zero (no weight decay here: nothing moves them)
    result = assert_ranks_identical(ddp_runs, "zero_grad")
    assert_matches_one_process(ddp_runs, "zero_grad")
    assert [e["step"] for e in result["info"]["rewraps"]] == [0]
    assert result["info"]["audit"] == [True]
    assert not any(k.startswith(("bert.embeddings.", "bert.encoder.layer.0."))
                   for k in moved(result))


def test_plain_trainer_with_the_callback_is_right_under_ddp(ddp_runs):
    # DDP registered every parameter the schedule opens (on_init_end); no re-wrap needed
    result = assert_ranks_identical(ddp_runs, "callback")
    assert_matches_one_process(ddp_runs, "callback")
    assert result["info"]["audit"] == [True]
    gradual = load(ddp_runs, "two", "gradual")
    for name, value in gradual["state"].items():
        torch.testing.assert_close(result["state"][name], value, atol=1e-5, rtol=0)


def test_negative_control_naive_requires_grad_flip_diverges_ranks(ddp_runs):
    rank0, rank1 = load(ddp_runs, "two", "naive", 0), load(ddp_runs, "two", "naive", 1)
    diffs = {k: (rank0["state"][k] - rank1["state"][k]).abs().max().item()
             for k in rank0["state"] if rank0["state"][k].is_floating_point()}
    # the blocks opened after DDP wrapped the model are not all-reduced: each rank trains them
    # on its own half of the batch
    assert diffs["bert.encoder.layer.0.attention.self.query.weight"] > 1e-4
    assert diffs["bert.embeddings.word_embeddings.weight"] > 1e-4
    assert max(diffs.values()) > 1e-3


def test_plain_trainer_without_find_unused_parameters_is_refused(ddp_runs):
    for rank in (0, 1):
        message = (ddp_runs / "two" / "callback_no_unused" / f"error{rank}.txt").read_text()
        assert "needs find_unused_parameters=True" in message
        assert "use FreezeTrainer" in message
    assert not (ddp_runs / "two" / "callback_no_unused" / "rank0.pt").exists()


# -- GPU: FSDP and DeepSpeed through accelerate launch (run with -m gpu) ---------------------
def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


needs_gpu = pytest.mark.skipif(gpu_count() == 0, reason="needs CUDA")


def gpu_launch(tmp_path: Path, config: Path, scenarios: str) -> Path:
    processes = min(2, gpu_count())
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
        "--num_processes", str(processes), "--main_process_port", str(free_port()),
        str(WORKER), str(tmp_path), "--batch", "4", "--scenarios", scenarios, "--device", "gpu",
    ]
    done = subprocess.run(command, cwd=ROOT, env=worker_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp_path


def assert_fixed_trained(outdir: Path) -> None:
    result = torch.load(outdir / "fixed" / "rank0.pt", weights_only=False)
    assert result["info"]["audit"] == [True]  # bottom_n's frozen weights did not move
    assert not (outdir / "fixed" / "error0.txt").exists()


def assert_refused(outdir: Path, scenario: str, message: str) -> None:
    text = (outdir / scenario / "error0.txt").read_text()
    assert message in text
    assert not (outdir / scenario / "rank0.pt").exists()


@pytest.mark.gpu
@needs_gpu
def test_fsdp1_trains_fixed_policies_and_refuses_schedules(tmp_path):
    out = gpu_launch(tmp_path, ROOT / "configs/accelerate/fsdp.yaml", "fixed,gradual,lisa")
    assert_fixed_trained(out)
    assert_refused(out, "gradual", "FSDP1 builds its FlatParameters")
    assert_refused(out, "lisa", "FSDP1 builds its FlatParameters")


@pytest.mark.gpu
@needs_gpu
def test_fsdp2_trains_fixed_policies_and_schedules(tmp_path):
    out = gpu_launch(tmp_path, ROOT / "configs/accelerate/fsdp2.yaml", "fixed,gradual,lisa")
    assert_fixed_trained(out)
    for scenario in ("gradual", "lisa"):  # schedules are allowed under FSDP2 (issue 30)
        assert not (out / scenario / "error0.txt").exists()
        assert (out / scenario / "rank0.pt").exists()


@pytest.mark.gpu
@needs_gpu
def test_fsdp1_without_use_orig_params_is_refused_before_training(tmp_path):
    import yaml

    config = yaml.safe_load((ROOT / "configs/accelerate/fsdp.yaml").read_text())
    config["fsdp_config"]["fsdp_use_orig_params"] = False
    path = tmp_path / "fsdp_no_orig.yaml"
    path.write_text(yaml.safe_dump(config))
    out = gpu_launch(tmp_path / "out", path, "fixed")
    assert_refused(out, "fixed", "fsdp_use_orig_params: true")


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("config", ["deepspeed_zero2.yaml", "deepspeed_zero3.yaml"])
def test_deepspeed_trains_fixed_policies_and_refuses_schedules(tmp_path, config):
    pytest.importorskip("deepspeed")
    out = gpu_launch(tmp_path, ROOT / "configs/accelerate" / config, "fixed,gradual")
    assert_fixed_trained(out)
    assert_refused(out, "gradual", "DeepSpeed fixes its parameter groups when the engine is built")


@pytest.mark.gpu
@pytest.mark.skipif(gpu_count() < 2, reason="needs 2 GPUs")
def test_ddp_on_gpus_keeps_ranks_bit_identical(tmp_path):
    out = gpu_launch(tmp_path, ROOT / "configs/accelerate/ddp.yaml", "gradual,lisa")
    for scenario in ("gradual", "lisa"):
        rank0 = torch.load(out / scenario / "rank0.pt", weights_only=False)
        rank1 = torch.load(out / scenario / "rank1.pt", weights_only=False)
        assert all(torch.equal(v, rank1["state"][k]) for k, v in rank0["state"].items())
