"""Mixed precision and low-precision frozen weights (``freeze_policies.training.precision``).

On CPU: bf16 autocast with every registered policy (audit bit for bit, float32 trainable
weights, optimizer membership), ``frozen_dtype`` with every policy (dtypes at every optimizer
step, moves when a schedule opens or closes a parameter, optimizer state kept float32), exact
resume, a model loaded in bfloat16, fp16 loss scaling (a CPU ``GradScaler`` installed the way
accelerate installs one on a GPU: accelerate gives CPU fp16 neither autocast nor a scaler), the
memory accounting, the launcher, the precision benchmark on a tiny model and ``gpu_check``
without CUDA. GPU-marked tests (``-m gpu``) check ``max_memory_allocated`` and that the audit
under FSDP and DeepSpeed ZeRO compares full, gathered values.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_run import run
from trainer_support import (
    RandomTokens,
    make_args,
    make_model,
    one_torch_thread,  # noqa: F401
    snapshot,
)
from transformers import TrainerCallback

from freeze_policies import (
    FreezeOptions,
    FreezePolicyError,
    FreezeTrainer,
    get_policy,
    list_policies,
)
from freeze_policies.costs.measure import account_memory, parameter_bytes, peak_rss_bytes
from freeze_policies.training.precision import (
    check_frozen_dtype,
    check_precision_options,
    place,
    storage_dtype,
)

ROOT = Path(__file__).resolve().parent.parent
BF16 = torch.bfloat16
# Options that make each policy do something within a few steps on 3-block models; a policy
# registered later gets its defaults.
POLICY_OPTIONS = {
    "bottom_n": {"n": 1},
    "top_n": {"n": 1},
    "custom": {"frozen": [r"embed"]},
    "lisa": {"k": 1, "every": 2, "seed": 1},
    "gradual_unfreeze": {"every": 2, "unit": "steps"},
    "auto_freeze": {"every": 2},
}
POLICIES = list_policies()


def policy(name: str):
    return get_policy(name, **POLICY_OPTIONS.get(name, {}))


def make_trainer(arch, tmp_path, freeze_policy, model=None, callbacks=(), args=None, **options):
    return FreezeTrainer(
        model=model if model is not None else make_model(arch),
        args=args or make_args(tmp_path, bf16=True, max_steps=8),
        train_dataset=RandomTokens(arch),
        callbacks=list(callbacks),
        freeze_policy=freeze_policy,
        freeze_options=FreezeOptions(**options),  # the one way to give options
    )


def held_ids(optimizer) -> set[int]:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


class StepRecorder(TrainerCallback):
    """Per optimizer step: the parameters just before the update (after the forward, backward
    and any dtype move) and just after it, with the optimizer state after it; and the dtype
    invariants at each update (trainable = float32 with float32 gradients, frozen = stored
    dtype without gradient, optimizer state float32)."""

    def __init__(self, frozen_dtype=None):
        self.frozen_dtype = frozen_dtype
        self.start: dict[str, torch.Tensor] = {}
        self.pre: list[dict[str, torch.Tensor]] = []
        self.post: list[dict[str, torch.Tensor]] = []
        self.states: list[dict[str, dict]] = []
        self.violations: list[str] = []
        self.ids: list[dict[str, int]] = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.start = snapshot(model)

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kw):
        self.pre.append(snapshot(model))
        self.ids.append({n: id(p) for n, p in model.named_parameters()})
        for name, param in model.named_parameters():
            wanted = storage_dtype(param, param.requires_grad, self.frozen_dtype)
            if param.dtype != wanted:
                self.violations.append(f"step {state.global_step}: {name} {param.dtype}")
            if param.requires_grad and param.grad is not None and param.grad.dtype != param.dtype:
                self.violations.append(f"step {state.global_step}: grad of {name}")
            if not param.requires_grad and param.grad is not None:
                self.violations.append(f"step {state.global_step}: frozen {name} has a grad")

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.post.append(snapshot(model))
        names = {id(p): n for n, p in model.named_parameters()}
        self.states.append({
            names[id(p)]: {k: v.clone() for k, v in s.items() if torch.is_tensor(v)}
            for p, s in optimizer.state.items() if s
        })
        for name, values in self.states[-1].items():
            bad = [k for k, v in values.items() if v.is_floating_point() and v.dim()
                   and v.dtype != torch.float32]
            if bad:
                self.violations.append(f"step {state.global_step}: state {bad} of {name}")


class AutocastProbe(TrainerCallback):
    """Records the output dtypes of every ``nn.Linear`` during training forwards."""

    def __init__(self):
        self.dtypes: set[torch.dtype] = set()
        self.hooks = []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def record(module, inputs, output):
            self.dtypes.add(output.dtype)

        self.hooks = [m.register_forward_hook(record) for m in model.modules()
                      if isinstance(m, torch.nn.Linear)]

    def on_train_end(self, args, state, control, **kwargs):
        for hook in self.hooks:
            hook.remove()


# -- 1. bf16 autocast with every policy: audit, fp32 weights, optimizer membership ---------------
@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_bf16_autocast_keeps_the_audit_fp32_weights_and_optimizer_membership(arch, name, tmp_path):
    probe, recorder = AutocastProbe(), StepRecorder()
    trainer = make_trainer(arch, tmp_path, policy(name), callbacks=[probe, recorder])
    model = trainer.model
    before = snapshot(model)
    metrics = trainer.train().metrics

    assert probe.dtypes == {BF16}  # every matmul ran in bfloat16 under autocast
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # fp32 master weights
    assert recorder.violations == []
    callback = trainer.freeze_callback
    params = dict(model.named_parameters())
    ever = callback.ever_trainable
    assert held_ids(trainer.optimizer) == {id(params[n]) for n in ever}
    never = set(params) - ever
    assert metrics["frozen_audit_passed"] is True
    assert all(torch.equal(before[n], params[n]) for n in never)  # bit for bit
    trained = [n for n in ever if not torch.equal(before[n], params[n])]
    assert trained  # something trained under autocast
    assert set(trained) <= ever


# -- 2. frozen_dtype with every policy: stored dtypes at every step, moves, audit -----------------
@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_frozen_dtype_stores_frozen_weights_low_and_trains_in_fp32(arch, name, tmp_path):
    recorder = StepRecorder(frozen_dtype=BF16)
    trainer = make_trainer(arch, tmp_path, policy(name), callbacks=[recorder],
                           frozen_dtype="bfloat16")
    model = trainer.model
    params = dict(model.named_parameters())
    initial = {n: p.detach().clone() for n, p in params.items()}
    metrics = trainer.train().metrics

    assert recorder.violations == []  # stored dtypes, fp32 grads and fp32 state at every step
    assert len(recorder.pre) == 8
    callback = trainer.freeze_callback
    ever = callback.ever_trainable
    assert held_ids(trainer.optimizer) == {id(params[n]) for n in ever}  # same objects
    assert all(p is params[n] for n, p in model.named_parameters())
    assert metrics["frozen_audit_passed"] is True
    for name_, param in params.items():
        assert param.dtype == storage_dtype(param, param.requires_grad, BF16), name_
    never = set(params) - ever
    for n in never:  # frozen throughout: the bf16 rounding of the initial fp32 value, no drift
        assert torch.equal(params[n], initial[n].to(params[n].dtype)), n
    assert any(params[n].dtype == BF16 for n in params if not params[n].requires_grad) or not (
        set(params) - callback.current_trainable
    )
    assert metrics["parameter_bytes"] == sum(p.numel() * p.element_size() for p in params.values())


def test_frozen_dtype_halves_the_bytes_of_frozen_matrices(tmp_path):
    fp32 = make_trainer("llama", tmp_path / "a", get_policy("bottom_n", n=2))
    low = make_trainer("llama", tmp_path / "b", get_policy("bottom_n", n=2),
                       frozen_dtype="bfloat16")
    frozen_matrices = sum(p.numel() for p in low.model.parameters()
                          if not p.requires_grad and p.dim() >= 2)
    assert frozen_matrices > 0
    assert parameter_bytes(fp32.model) - parameter_bytes(low.model) == 2 * frozen_matrices
    fp32_bytes, low_bytes = fp32.train().metrics, low.train().metrics
    assert fp32_bytes["gradient_bytes"] == low_bytes["gradient_bytes"]  # same fp32 trainables
    assert fp32_bytes["optimizer_state_bytes"] == low_bytes["optimizer_state_bytes"]
    assert fp32_bytes["parameter_bytes"] - low_bytes["parameter_bytes"] == 2 * frozen_matrices


def _transitions(recorder: StepRecorder, low=BF16):
    """(opened, closed) events: (step, name) where a parameter went low -> fp32 / fp32 -> low,
    checked value by value against the stored value it had before the move."""
    opened, closed, problems = [], [], []
    after = [recorder.start, *recorder.post]  # after[t] = values before step t's update
    for t, pre in enumerate(recorder.pre):
        for name, value in pre.items():
            previous = after[t][name]
            if previous.dtype == value.dtype:
                continue
            if value.dtype == torch.float32:  # opened: trains on from its low-precision value
                opened.append((t, name))
                if not torch.equal(value, previous.float()):
                    problems.append(f"opened {name} at {t}")
            else:  # closed: its value at that step, rounded once
                closed.append((t, name))
                if not torch.equal(value, previous.to(low)):
                    problems.append(f"closed {name} at {t}")
    return opened, closed, problems


@pytest.mark.parametrize("name", ["lisa", "gradual_unfreeze", "auto_freeze"])
def test_schedules_move_parameters_between_dtypes_from_their_stored_values(name, tmp_path):
    recorder = StepRecorder(frozen_dtype=BF16)
    options = {"auto_freeze": {"every": 2, "percentile": 100.0}}.get(name, POLICY_OPTIONS[name])
    trainer = make_trainer("bert", tmp_path, get_policy(name, **options), callbacks=[recorder],
                           model=make_model("bert", layers=4), frozen_dtype="bfloat16",
                           args=make_args(tmp_path, bf16=True, max_steps=12))
    assert trainer.train().metrics["frozen_audit_passed"] is True
    opened, closed, problems = _transitions(recorder)
    assert problems == []
    assert recorder.violations == []
    if name in ("lisa", "gradual_unfreeze"):
        assert opened  # a block opened during training
    if name in ("lisa", "auto_freeze"):
        assert closed  # a block closed during training
    # a closed parameter keeps its optimizer state untouched until it reopens, in float32
    for t, param in closed:
        if t == 0 or param not in recorder.states[t - 1]:
            continue
        reopen = next((s for s, n in opened if n == param and s > t), len(recorder.states))
        for later in range(t, reopen):
            for key, value in recorder.states[t - 1][param].items():
                assert torch.equal(recorder.states[later][param][key], value), (param, later)
    logged = {(move.step, move.name) for move in trainer.dtype_moves}
    assert {(t, n) for t, n in opened + closed} <= logged


def test_lisa_reopened_block_trains_from_its_bf16_value(tmp_path):
    recorder = StepRecorder(frozen_dtype=BF16)
    trainer = make_trainer("bert", tmp_path, get_policy("lisa", k=1, every=2, seed=2),
                           model=make_model("bert", layers=4), callbacks=[recorder],
                           frozen_dtype="bfloat16",
                           args=make_args(tmp_path, bf16=True, max_steps=12))
    trainer.train()
    opened, closed, problems = _transitions(recorder)
    assert problems == []
    reopened = [(t, n) for t, n in opened if any(c < t and c_n == n for c, c_n in closed)]
    assert reopened  # seed 2 closes a block and opens it again
    t, name = reopened[0]
    value = recorder.pre[t][name]
    assert value.dtype == torch.float32
    assert torch.equal(value, value.to(BF16).float())  # exactly a bf16 value: the low bits are gone
    assert not torch.equal(recorder.post[t][name], value)  # and it trains from there


# -- 3. resume is exact with bf16 autocast, for a fixed and a scheduled policy ------------------
# lisa seed 0 samples block 1 in stage 0 and block 0 in stage 1 (steps 2-3): at the checkpoint
# (step 3) block 0 trains in fp32 and block 1 is closed (bf16) with fp32 optimizer state, while
# a freshly built trainer starts in stage 0's layout, the other way round.
RESUMED = {"bottom_n": {"n": 1}, "lisa": {"k": 1, "every": 2, "seed": 0}}


@pytest.mark.parametrize("frozen_dtype", [None, "bfloat16"])
@pytest.mark.parametrize("name", list(RESUMED))
def test_resume_with_bf16_matches_the_uninterrupted_run(name, frozen_dtype, tmp_path):
    args = make_args(tmp_path, bf16=True, max_steps=8, save_strategy="steps", save_steps=3)
    full = make_trainer("llama", tmp_path, get_policy(name, **RESUMED[name]), args=args,
                        frozen_dtype=frozen_dtype)
    full.train()
    final = snapshot(full.model)
    final_state = _named_state(full)
    resumed = make_trainer("llama", tmp_path, get_policy(name, **RESUMED[name]), args=args,
                           model=make_model("llama", seed=123), frozen_dtype=frozen_dtype)
    metrics = resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3")).metrics
    assert metrics["frozen_audit_passed"] is True
    now = snapshot(resumed.model)
    assert [n for n in final if now[n].dtype != final[n].dtype] == []
    assert [n for n in final if not torch.equal(now[n], final[n])] == []
    resumed_state = _named_state(resumed)
    assert resumed_state.keys() == final_state.keys()
    for param, values in final_state.items():
        for key, value in values.items():
            assert torch.equal(resumed_state[param][key], value), (param, key)
    if name == "lisa":
        anat = resumed.freeze_callback.anat
        lisa = resumed.freeze_callback.policy
        assert lisa.sampled_blocks(anat, 0) != lisa.sampled_blocks(anat, 1)
        assert resumed.freeze_callback.resumed_stage == 1
    if frozen_dtype and name == "lisa":  # closed blocks kept their exact fp32 state
        assert [n for n in final_state if now[n].dtype == BF16]


def test_resume_with_restored_callback_states_keeps_the_dtype_moves(tmp_path):
    """Trainer rebuilds the callback from the checkpoint here; the rebuilt one still moves
    dtypes before its audit snapshot, so the audit passes and the resume stays exact."""
    args = make_args(tmp_path, bf16=True, max_steps=8, save_strategy="steps", save_steps=3,
                     restore_callback_states_from_checkpoint=True)
    lisa = dict(name="lisa", **RESUMED["lisa"])
    full = make_trainer("llama", tmp_path, lisa, args=args, frozen_dtype="bfloat16")
    full.train()
    resumed = make_trainer("llama", tmp_path, lisa, args=args, model=make_model("llama", seed=5),
                           frozen_dtype="bfloat16")
    original = resumed.freeze_callback
    metrics = resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3")).metrics
    assert resumed.freeze_callback is not original
    assert metrics["frozen_audit_passed"] is True
    final, now = snapshot(full.model), snapshot(resumed.model)
    assert [n for n in final if not torch.equal(now[n], final[n])] == []


def _named_state(trainer):
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    return {names[id(p)]: dict(s) for p, s in trainer.optimizer.state.items() if s}


# -- 4. a model loaded in bf16 --------------------------------------------------------------------
def test_model_loaded_in_bf16_gets_fp32_trainable_weights_and_keeps_frozen_storage(tmp_path):
    model = make_model("llama").to(BF16)
    pointers = {n: p.data_ptr() for n, p in model.named_parameters()}
    trainer = make_trainer("llama", tmp_path, get_policy("bottom_n", n=2), model=model,
                           frozen_dtype="bfloat16")
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.dtype == torch.float32, name
        elif param.dim() >= 2:  # frozen matrices: as loaded, not copied
            assert param.dtype == BF16 and param.data_ptr() == pointers[name], name
        else:
            assert param.dtype == torch.float32, name
    before = snapshot(model)
    assert trainer.train().metrics["frozen_audit_passed"] is True
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters() if n in frozen)


def test_without_frozen_dtype_dtypes_stay_as_loaded(tmp_path):
    model = make_model("llama").to(BF16)
    trainer = make_trainer("llama", tmp_path, get_policy("bottom_n", n=2), model=model)
    assert {p.dtype for p in model.parameters()} == {BF16}
    assert trainer.dtype_moves == []


# -- 5. bad combinations are refused before training ---------------------------------------------
@pytest.mark.parametrize("frozen_dtype,overrides,options,message", [
    ("int8", {"bf16": True}, {}, r"frozen_dtype='int8' is not one of bfloat16, float16"),
    ("bfloat16", {}, {}, r"frozen_dtype='bfloat16' needs mixed precision \(bf16=True"),
    # accelerate runs CPU fp16 without autocast and without a scaler
    ("float16", {"fp16": True}, {}, r"frozen_dtype='float16' needs mixed precision"),
    ("bfloat16", {"bf16": True}, {"freeze_mode": "zero_lr"},
     r"needs freeze_mode='requires_grad', not 'zero_lr'"),
])
def test_bad_precision_options_are_refused(frozen_dtype, overrides, options, message, tmp_path):
    with pytest.raises(FreezePolicyError, match=message):
        make_trainer("bert", tmp_path, get_policy("bottom_n", n=1),
                     args=make_args(tmp_path, **overrides), frozen_dtype=frozen_dtype, **options)


def test_sharded_runs_are_refused_by_the_option_check():
    assert check_frozen_dtype(None) is None and check_frozen_dtype("float16") == torch.float16
    check_precision_options(BF16, mixed_precision="bf16")
    for sharding in ("FSDP", "DeepSpeed"):
        with pytest.raises(FreezePolicyError, match=f"not supported under {sharding}"):
            check_precision_options(BF16, mixed_precision="bf16", sharding=sharding)


# -- 6. fp16 loss scaling sees only trainable, fp32 parameters -----------------------------------
class CpuScalerTrainer(FreezeTrainer):
    """FreezeTrainer with what accelerate sets up for fp16 on a GPU (autocast + GradScaler),
    here on the CPU, where accelerate gives fp16 neither; records what each unscale_ sees."""

    def create_accelerator_and_postprocess(self):
        super().create_accelerator_and_postprocess()
        self.accelerator.native_amp = True
        self.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        self.unscaled: list[tuple[set[str], set[torch.dtype]]] = []
        scaler = self.accelerator.scaler
        original = scaler.unscale_

        def unscale(optimizer):
            names = {id(p): n for n, p in self.model.named_parameters()}
            grads = [(names[id(p)], p.grad.dtype) for group in optimizer.param_groups
                     for p in group["params"] if p.grad is not None]
            self.unscaled.append(({n for n, _ in grads}, {d for _, d in grads}))
            return original(optimizer)

        scaler.unscale_ = unscale


@pytest.mark.parametrize("frozen_dtype", [None, "float16"])
@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_fp16_loss_scaling_sees_only_trainable_parameters(arch, frozen_dtype, tmp_path):
    probe = AutocastProbe()
    trainer = CpuScalerTrainer(
        model=make_model(arch), args=make_args(tmp_path, fp16=True, max_steps=6),
        train_dataset=RandomTokens(arch), callbacks=[probe],
        freeze_policy=get_policy("gradual_unfreeze", every=2, unit="steps"),
        frozen_dtype=frozen_dtype,
    )
    assert trainer.train().metrics["frozen_audit_passed"] is True
    assert probe.dtypes == {torch.float16}
    callback = trainer.freeze_callback
    assert len(trainer.unscaled) == 6
    for step, (names, dtypes) in enumerate(trainer.unscaled):
        assert names == callback.trainable_at(step // 2), step  # the stage's parameters only
        assert dtypes == {torch.float32}  # GradScaler refuses fp16 gradients
    if frozen_dtype:
        assert any(p.dtype == torch.float16 for p in trainer.model.parameters())


def test_grad_scaler_refuses_fp16_gradients_the_negative_control():
    """Why trainable parameters must be upcast: a frozen fp16 weight that trained would have an
    fp16 gradient, which GradScaler.unscale_ refuses."""
    weight = torch.nn.Parameter(torch.ones(2, 2, dtype=torch.float16))
    weight.grad = torch.ones_like(weight)
    scaler = torch.amp.GradScaler("cpu")
    optimizer = torch.optim.SGD([weight], lr=0.1)
    scaler.scale(torch.ones((), requires_grad=True))
    with pytest.raises(ValueError, match="Attempting to unscale FP16 gradients"):
        scaler.unscale_(optimizer)


# -- 7. place() on its own: optimizer state follows an upcast ----------------------------------
def test_place_casts_a_reopened_parameters_state_to_fp32():
    model = torch.nn.Linear(4, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    weight = model.weight
    state_before = optimizer.state[weight]["exp_avg"].clone()
    model.weight.requires_grad_(False)
    moves = place(model, BF16, optimizer=optimizer)
    assert [(m.name, m.after) for m in moves] == [("weight", "bfloat16")]  # bias stays fp32
    assert model.weight is weight and weight.dtype == BF16 and weight.grad is None
    assert torch.equal(optimizer.state[weight]["exp_avg"], state_before)  # untouched, fp32
    optimizer.state[weight]["exp_avg"] = state_before.to(BF16)  # as a load into bf16 leaves it
    weight.requires_grad_(True)
    place(model, BF16, optimizer=optimizer)
    assert weight.dtype == torch.float32
    assert optimizer.state[weight]["exp_avg"].dtype == torch.float32
    assert optimizer.state[weight]["step"].dtype == torch.float32  # scalars untouched


# -- 8. memory accounting ------------------------------------------------------------------
def test_account_memory_adds_up_and_splits_frozen_from_trainable():
    model = make_model("llama")
    get_policy("bottom_n", n=2).apply(model)
    place(model, BF16)
    account = account_memory(model, gradient_bytes=100, optimizer_state_bytes=200,
                             saved_for_backward_bytes=300)
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    trainable = sum(p.numel() * 4 for p in model.parameters() if p.requires_grad)
    assert account.frozen_parameter_bytes == frozen
    assert account.trainable_parameter_bytes == trainable
    assert account.parameter_bytes == frozen + trainable == parameter_bytes(model)
    assert account.total_bytes == frozen + trainable + 600
    assert account.as_dict()["total_bytes"] == account.total_bytes
    assert account.parameter_bytes_by_dtype == {
        "bfloat16": sum(p.numel() * 2 for p in model.parameters() if p.dtype == BF16),
        "float32": sum(p.numel() * 4 for p in model.parameters() if p.dtype == torch.float32),
    }
    assert peak_rss_bytes() > 10 * 2**20  # this process holds torch: tens of MiB at least


# -- 9. the launcher --------------------------------------------------------------------------
def test_launcher_frozen_dtype_stores_frozen_weights_in_bf16(tmp_path, tiny_bert):
    flags = ["--policy", "bottom_n", "--policy_options", '{"n": 2}', "--bf16", "true"]
    fp32 = run(tmp_path / "fp32", tiny_bert, *flags)
    low = run(tmp_path / "bf16", tiny_bert, *flags, "--frozen_dtype", "bfloat16")
    assert fp32["frozen_audit"]["passed"] and low["frozen_audit"]["passed"]
    assert low["parameter_bytes"] < fp32["parameter_bytes"]
    assert low["gradient_bytes"] == fp32["gradient_bytes"]
    assert low["optimizer_state_bytes"] == fp32["optimizer_state_bytes"]
    assert "--frozen_dtype bfloat16" in low["command"]


def test_launcher_refuses_a_bad_frozen_dtype_in_one_line(tmp_path, run_cli):
    done = run_cli("--policy", "bottom_n", "--frozen_dtype", "int8", "--output_dir", tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: frozen_dtype='int8'")


# -- 10. the precision benchmark on a tiny model, and gpu_check without CUDA -------------------
def test_bench_precision_reports_accounted_memory_and_rss(tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    folder = tmp_path / "tiny-llama"
    config = AutoConfig.for_model(
        "llama", hidden_size=64, num_hidden_layers=4, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=96, vocab_size=512, num_labels=3,
        pad_token_id=0, max_position_embeddings=64,
    )
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    out = tmp_path / "bench_precision.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / "bench.py"), "precision", "--model", str(folder),
         "--n", "3", "--batch-size", "2", "--seq-len", "16", "--steps", "2", "--out", str(out)],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads(out.read_text())
    rows = {row["variant"]: row for row in payload["variants"]}
    assert set(rows) == {"fp32_frozen", "bf16_frozen"}
    fp32, low = rows["fp32_frozen"], rows["bf16_frozen"]
    for row in rows.values():
        assert row["frozen_audit_passed"] is True
        assert row["accounted_bytes"] == (row["parameter_bytes"] + row["gradient_bytes"]
                                          + row["optimizer_state_bytes"]
                                          + row["saved_for_backward_bytes"])
        assert row["peak_rss_bytes"] > 0 and row["frozen_blocks"] == 3 and row["depth"] == 4
    assert fp32["parameter_bytes_by_dtype"].keys() == {"float32"}
    assert low["parameter_bytes_by_dtype"]["bfloat16"] > 0
    assert low["gradient_bytes"] == fp32["gradient_bytes"] > 0
    assert low["optimizer_state_bytes"] == fp32["optimizer_state_bytes"] > 0
    frozen_matrix_elements = fp32["frozen_matrix_elements"]
    assert fp32["parameter_bytes"] - low["parameter_bytes"] == 2 * frozen_matrix_elements
    ratio = payload["targets"]["accounted_memory_ratio"]
    assert ratio["value"] == pytest.approx(low["accounted_bytes"] / fp32["accounted_bytes"])
    assert ratio["value"] < 1 and ratio["threshold"] == "<= 0.75"
    assert "accounted" in done.stdout and "bf16_frozen" in done.stdout


def test_gpu_check_without_cuda_says_so_and_exits_0(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, str(ROOT / "recipes" / "gpu_check.py")],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no CUDA device" in done.stdout
    assert "nothing ran" in done.stdout


# -- GPU (-m gpu): max_memory_allocated, and the audit under sharding checks full values --------
def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


needs_gpu = pytest.mark.skipif(gpu_count() == 0, reason="needs CUDA")


@pytest.mark.gpu
@needs_gpu
def test_frozen_dtype_lowers_max_memory_allocated_on_cuda(tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.for_model(
        "llama", hidden_size=256, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=688, vocab_size=4096, num_labels=3,
        pad_token_id=0, max_position_embeddings=64,
    )
    import gc

    peaks, audits, params = {}, {}, {}
    for frozen_dtype in (None, "bfloat16"):
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_config(config)
        if frozen_dtype:  # loaded in bf16: the trainable parameters are upcast
            model = model.to(BF16)
        trainer = FreezeTrainer(
            model=model, args=make_args(tmp_path, bf16=True, use_cpu=False, max_steps=3),
            train_dataset=RandomTokens("bert"), freeze_policy=get_policy("bottom_n", n=5),
            freeze_options=FreezeOptions(frozen_dtype=frozen_dtype),
        )
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()  # training only, not building
        metrics = trainer.train().metrics
        peaks[frozen_dtype] = torch.cuda.max_memory_allocated()
        audits[frozen_dtype] = metrics["frozen_audit_passed"]
        params[frozen_dtype] = metrics["parameter_bytes"]
        del trainer, model
        gc.collect()
        torch.cuda.empty_cache()
    assert audits == {None: True, "bfloat16": True}
    assert params["bfloat16"] < 0.6 * params[None]
    assert peaks["bfloat16"] < peaks[None]


WORKER = ROOT / "tests" / "sharded_audit_worker.py"
SHARDED_CONFIGS = ["fsdp.yaml", "fsdp2.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml"]


def launch_worker(outdir: Path, config: str | None, device: str, *extra: str,
                  processes: int | None = None) -> subprocess.CompletedProcess:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    if config is None:
        command = [sys.executable, str(WORKER), str(outdir), "--device", device, *extra]
    else:
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(ROOT / "configs" / "accelerate" / config), "--num_processes",
            str(processes or min(2, gpu_count())), "--main_process_port", str(port),
            str(WORKER), str(outdir), "--device", device, *extra,
        ]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def assert_audit_checked_full_values(outdir: Path, ranks: int) -> None:
    """The audit of every rank snapshotted whole tensors (not empty ZeRO-3 placeholders, not one
    rank's FSDP shard) equal to the initial values, and the gathered frozen weights after
    training are bit-identical to them while trained ones moved."""
    for rank in range(ranks):
        result = torch.load(outdir / f"rank{rank}.pt", weights_only=False)
        init, final, audit = result["init"], result["final"], result["audit_snapshot"]
        frozen = result["frozen"]
        assert frozen and result["audit_passed"] is True
        assert set(audit) == set(frozen)
        for name in frozen:
            assert audit[name].shape == init[name].shape, (rank, name)  # full, not a shard
            assert torch.equal(audit[name].float(), init[name].float()), (rank, name)
            assert torch.equal(final[name], init[name]), (rank, name)
        trained = [n for n in init if n not in frozen]
        assert any(not torch.equal(final[n], init[n]) for n in trained)


def test_sharded_audit_worker_runs_unsharded_on_cpu(tmp_path):
    """The worker itself (the GPU tests' tool) on one CPU process: no sharding to undo."""
    done = launch_worker(tmp_path, None, "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_audit_checked_full_values(tmp_path, ranks=1)


def test_ddp_dtype_moves_keep_ranks_bit_identical(tmp_path):
    """2 CPU processes over gloo: lisa downcasts block 1 and upcasts block 0 at step 2; the
    DDP wrapper is rebuilt after the moves, so every rank all-reduces the same fp32 tensors."""
    done = launch_worker(tmp_path, "ddp_cpu.yaml", "cpu", "--policy", "lisa", "--frozen-dtype",
                         "bfloat16", "--bf16", processes=2)
    assert done.returncode == 0, done.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    assert rank0["audit_passed"] is True and rank1["audit_passed"] is True
    final0, final1 = rank0["final"], rank1["final"]
    assert [n for n in final0 if not torch.equal(final0[n], final1[n])] == []
    block0 = [n for n in final0 if ".layer.0." in n and final0[n].dim() >= 2]
    block1 = [n for n in final0 if ".layer.1." in n and final0[n].dim() >= 2]
    assert block0 and block1
    assert all(final0[n].dtype == torch.float32 for n in block0)  # open at the end
    assert all(final0[n].dtype == BF16 for n in block1)  # closed at step 2, stored low
    init = rank0["init"]
    for name in block0 + block1:  # each trained in its turn
        assert not torch.equal(final0[name].float(), init[name]), name


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("config", SHARDED_CONFIGS)
def test_audit_under_sharding_checks_full_gathered_values(tmp_path, config):
    if config.startswith("deepspeed"):
        pytest.importorskip("deepspeed")
    done = launch_worker(tmp_path, config, "gpu")
    assert done.returncode == 0, done.stderr[-3000:]
    assert_audit_checked_full_values(tmp_path, ranks=min(2, gpu_count()))
