"""Freezing under ``accelerate launch``: the guards that refuse what cannot train correctly.

**DDP** re-wrapping, for schedules under ``FreezeTrainer``, is in
``freeze_policies.distributed.ddp``.

**Guards** (``check_distributed``; pure functions of a ``DistributedSetup`` so each has a unit
test without GPUs), raised as ``FreezePolicyError`` when the trainer is built:

- FSDP1 with ``use_orig_params=False`` and a policy that leaves frozen and trainable parameters
  side by side: FSDP1 flattens each wrapped unit into one ``FlatParameter`` whose
  ``requires_grad`` must be uniform.
- A schedule under FSDP1 or DeepSpeed: both fix their flat parameter and optimizer state
  layout when they wrap the model; changing the trainable set afterwards is not supported.
  **FSDP2** (``fully_shard``) shards each parameter as its own DTensor and honours a
  ``requires_grad`` switched after wrapping, so schedules are allowed there (proven on 2 CPU
  processes by ``tests/test_fsdp2_schedules.py``: ranks bit-identical, frozen tensors
  bit-identical, equal to DDP, resume equal to the uninterrupted run); a schedule with
  ``torch_compile`` or with the frozen-prefix cache under FSDP2 stays refused (unproven).
  Checkpoints of a schedule under FSDP2 keep the optimizer state of closed blocks
  (``freeze_policies.distributed.fsdp2``).
- ``freeze_mode="zero_lr"`` / ``"zero_grad"`` under FSDP or DeepSpeed: they change
  ``requires_grad`` after wrapping, and ZeRO/FSDP build their own gradient and optimizer
  layouts; these measurement baselines run on one process or DDP only.
- A schedule under DDP with ``torch_compile``: the compiled module wraps the DDP wrapper and
  would keep the stale one.

**Launches that only look distributed** are refused too, whatever the policy:
``check_launch`` (from the launcher's environment, before anything is loaded) refuses FSDP or
DeepSpeed configs on CPU and several processes on a machine without a GPU and without
``use_cpu``; ``check_processes`` (in ``check_trainer``) refuses an accelerator that runs fewer
processes than the launcher started. In both cases each process would otherwise train alone, or
run plain DDP under a config that says FSDP.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from freeze_policies.errors import FreezePolicyError
from freeze_policies.policies.base import policy_mixes

logger = logging.getLogger("freeze_policies")

KINDS = ("single", "ddp", "fsdp", "deepspeed", "other")


@dataclass(frozen=True)
class DistributedSetup:
    """What a guard needs to know about the launch, as plain values.

    ``kind``: "single" (one process, no wrapper), "ddp" (MULTI_GPU / MULTI_CPU / ...), "fsdp",
    "deepspeed" or "other". ``fsdp_version`` (1 or 2) and ``use_orig_params`` for FSDP,
    ``zero_stage`` for DeepSpeed, ``compiled`` when ``torch.compile`` wraps the model,
    ``find_unused_parameters`` as ``Trainer`` passes it to DDP (None: not known).
    """

    kind: str = "single"
    num_processes: int = 1
    fsdp_version: int | None = None
    use_orig_params: bool | None = None
    zero_stage: int | None = None
    compiled: bool = False
    find_unused_parameters: bool | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind={self.kind!r} is not one of {', '.join(KINDS)}")

    def describe(self) -> str:
        if self.kind == "fsdp":
            orig = "" if self.fsdp_version == 2 else f", use_orig_params={self.use_orig_params}"
            return f"FSDP{self.fsdp_version or 1}{orig}"
        if self.kind == "deepspeed":
            return f"DeepSpeed ZeRO-{self.zero_stage}" if self.zero_stage is not None \
                else "DeepSpeed"
        if self.kind == "ddp":
            return f"DDP over {self.num_processes} processes"
        return self.kind


def setup_from_state(state, find_unused_parameters: bool | None = None) -> DistributedSetup:
    """A ``DistributedSetup`` from an ``accelerate`` ``AcceleratorState`` (or anything with its
    ``distributed_type``, ``num_processes``, ``fsdp_plugin``, ``deepspeed_plugin`` and
    ``dynamo_plugin`` attributes)."""
    kind_name = str(getattr(getattr(state, "distributed_type", None), "value",
                            getattr(state, "distributed_type", "NO")))
    processes = int(getattr(state, "num_processes", 1) or 1)
    dynamo = getattr(state, "dynamo_plugin", None)
    backend = str(getattr(getattr(dynamo, "backend", None), "value", "no") or "no")
    compiled = backend.lower() != "no"
    if kind_name == "FSDP":
        plugin = getattr(state, "fsdp_plugin", None)
        version = int(getattr(plugin, "fsdp_version", 1) or 1)
        orig = getattr(plugin, "use_orig_params", None)
        return DistributedSetup(
            "fsdp", processes, fsdp_version=version,
            use_orig_params=None if version == 2 else bool(orig), compiled=compiled,
        )
    if kind_name == "DEEPSPEED":
        plugin = getattr(state, "deepspeed_plugin", None)
        stage = getattr(plugin, "zero_stage", None)
        return DistributedSetup(
            "deepspeed", processes, zero_stage=None if stage is None else int(stage),
            compiled=compiled,
        )
    if kind_name.startswith("MULTI_") and processes > 1:
        return DistributedSetup(
            "ddp", processes, compiled=compiled, find_unused_parameters=find_unused_parameters
        )
    if kind_name == "NO" or processes <= 1:
        return DistributedSetup("single", processes, compiled=compiled)
    return DistributedSetup("other", processes, compiled=compiled)


def current_setup(find_unused_parameters: bool | None = None) -> DistributedSetup:
    """The setup of the ``accelerate`` state this process runs in (single without one)."""
    from accelerate.state import AcceleratorState

    if not AcceleratorState._shared_state:  # no Accelerator was built in this process
        return DistributedSetup()
    return setup_from_state(AcceleratorState(), find_unused_parameters)


def trainer_find_unused_parameters(args, model) -> bool:
    """``find_unused_parameters`` as ``Trainer`` hands it to DDP: ``ddp_find_unused_parameters``
    when set, else True unless the model checkpoints activations (transformers 4.46 .. 5.x)."""
    from transformers import PreTrainedModel

    given = getattr(args, "ddp_find_unused_parameters", None)
    if given is not None:
        return bool(given)
    if isinstance(model, PreTrainedModel):
        checkpointing = any(
            bool(getattr(source, attribute, False))
            for source, attribute in (
                (model, "is_activation_checkpointing"),
                (model, "is_gradient_checkpointing"),
                (args, "gradient_checkpointing"),
                (args, "activation_checkpointing"),
            )
        )
        return not checkpointing
    return True


def check_distributed(
    setup: DistributedSetup,
    *,
    policy_name: str | None,
    scheduled: bool,
    mixed: bool,
    freeze_mode: str = "requires_grad",
    rewraps: bool = True,
    prefix_cache: bool = False,
) -> None:
    """Raise ``FreezePolicyError`` when the policy cannot train correctly under ``setup``.

    ``mixed``: some stage of the policy leaves frozen and trainable parameters side by side
    (every policy but one that trains everything). ``rewraps``: the trainer re-wraps DDP when
    the trainable set changes (``FreezeTrainer``); False for a plain ``Trainer`` with a
    ``FreezeScheduleCallback``. ``prefix_cache``: ``cache_frozen_prefix`` or
    ``frozen_prefix_eval`` is on. Nothing is refused without a policy.
    """
    if policy_name is None:
        return
    where = setup.describe()
    if setup.kind == "fsdp":
        if scheduled and setup.fsdp_version != 2:
            raise FreezePolicyError(
                f"freeze_policy={policy_name!r} changes the trainable set during training, which "
                f"{where} does not support: FSDP1 builds its FlatParameters and the optimizer's "
                "view of them once, when it wraps the model (pytorch#104148, #105371); use "
                "FSDP2 (`fsdp_version: 2`, configs/accelerate/fsdp2.yaml), a fixed policy, or DDP"
            )
        if scheduled and prefix_cache:
            raise FreezePolicyError(
                f"freeze_policy={policy_name!r} with the frozen-prefix cache under {where} is not "
                "proven (the cached prefix runs sharded blocks outside the root's forward while "
                "the schedule moves its depth); turn cache_frozen_prefix / frozen_prefix_eval "
                "off, or run the schedule under DDP"
            )
        if scheduled and setup.fsdp_version == 2 and not rewraps:
            logger.warning(
                "freeze_policy=%r under FSDP2 with a plain Trainer: resuming from its "
                "checkpoints drops the optimizer state of blocks closed at load time, or fails "
                "for a block open then that never trained; use FreezeTrainer to resume a "
                "schedule under FSDP2 (freeze_policies.distributed.fsdp2)", policy_name,
            )
        if scheduled and setup.compiled:
            raise FreezePolicyError(
                f"freeze_policy={policy_name!r} changes the trainable set during training, and "
                f"a schedule under {where} with torch_compile is not proven (the compiled graph "
                "was traced with the first stage's requires_grad); turn torch_compile off or "
                "use a fixed policy"
            )
        if freeze_mode != "requires_grad":
            raise FreezePolicyError(
                f"freeze_mode={freeze_mode!r} is not supported under {where}: it makes frozen "
                "parameters require grad after FSDP has wrapped the model; use "
                "freeze_mode='requires_grad' (the default)"
            )
        if setup.fsdp_version == 1 and not setup.use_orig_params and mixed:
            raise FreezePolicyError(
                f"freeze_policy={policy_name!r} leaves frozen and trainable parameters side by "
                f"side, which {where} cannot shard: FSDP1 flattens each wrapped module into one "
                "FlatParameter whose requires_grad must be uniform; set "
                "`fsdp_use_orig_params: true` in the accelerate config "
                "(configs/accelerate/fsdp.yaml) or use FSDP2 (`fsdp_version: 2`, "
                "configs/accelerate/fsdp2.yaml)"
            )
    if setup.kind == "deepspeed":
        if scheduled:
            raise FreezePolicyError(
                f"freeze_policy={policy_name!r} changes the trainable set during training, which "
                f"{where} does not support: DeepSpeed fixes its parameter groups when the engine "
                "is built (deepspeed#1355); use a fixed policy or DDP"
            )
        if freeze_mode != "requires_grad":
            raise FreezePolicyError(
                f"freeze_mode={freeze_mode!r} is not supported under {where}: DeepSpeed keeps "
                "only the parameters that require grad when the engine is built, so the lr=0 / "
                "zeroed-gradient baselines do not exist there; use freeze_mode='requires_grad'"
            )
    if setup.kind == "ddp" and scheduled and not rewraps and setup.find_unused_parameters is False:
        raise FreezePolicyError(
            f"freeze_policy={policy_name!r} changes the trainable set during training; with a "
            f"plain Trainer under {where}, DDP keeps every parameter the schedule will open "
            "registered and the closed ones get no gradient, which needs "
            "find_unused_parameters=True, but it is False here (ddp_find_unused_parameters="
            "False, or gradient checkpointing is on): set ddp_find_unused_parameters=True, or "
            "use FreezeTrainer (it re-wraps DDP at each stage change instead)"
        )
    if setup.kind == "ddp" and scheduled and rewraps and setup.compiled:
        raise FreezePolicyError(
            f"freeze_policy={policy_name!r} changes the trainable set during training; under "
            f"{where} FreezeTrainer re-wraps the model in a new DistributedDataParallel at each "
            "change, which torch_compile (compiled around the first wrapper) would not see; "
            "turn torch_compile off or use a fixed policy"
        )


def check_trainer(trainer) -> None:
    """``check_distributed`` for a ``FreezeTrainer``: its accelerator's setup, its policy (bound
    to its model) and its freeze mode."""
    callback = trainer.freeze_callback
    policy = callback.policy
    accelerator = getattr(trainer, "accelerator", None)
    if accelerator is not None:
        check_processes(accelerator)
    if policy is None or callback.anat is None or accelerator is None:
        return
    setup = setup_from_state(accelerator.state)
    if setup.kind == "single":
        return
    check_distributed(
        setup,
        policy_name=policy.name,
        scheduled=policy.scheduled,
        mixed=policy_mixes(policy, callback.anat),
        freeze_mode=getattr(trainer, "freeze_mode", "requires_grad"),
        prefix_cache=bool(getattr(getattr(trainer, "freeze_options", None), "uses_prefix", False)),
    )


def _env_true(value: str | None) -> bool:
    return str(value or "").strip().lower() in ("1", "true", "yes")


def check_launch(
    use_cpu: bool = False, cuda_available: bool | None = None, environ=None
) -> None:
    """Refuse, before anything is loaded, a multi-process launch that would not train as
    configured; a pure function of the launcher's environment (``WORLD_SIZE``,
    ``ACCELERATE_USE_FSDP``, ``FSDP_VERSION``, ``ACCELERATE_USE_DEEPSPEED``).

    Two launches look distributed but are not (measured with accelerate 1.x):

    - FSDP or DeepSpeed on CPU (``use_cpu``, or no GPU): accelerate builds FSDP and DeepSpeed
      only on GPUs. With ``use_cpu`` the processes run plain DDP over gloo while the config says
      FSDP; without it every process sees a single-process state, and with FSDP's low-memory
      loading the ranks other than 0 hold their weights on the meta device.
    - Several processes on a machine without a GPU and without ``use_cpu``: each process gets a
      single-process state and trains alone, on all the data, writing the same outputs.
    """
    env = os.environ if environ is None else environ
    world = int(env.get("WORLD_SIZE", "1") or 1)
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    on_cpu = use_cpu or not cuda_available
    if _env_true(env.get("ACCELERATE_USE_FSDP")):
        wanted = f"FSDP{env.get('FSDP_VERSION', '1')}"
    elif _env_true(env.get("ACCELERATE_USE_DEEPSPEED")):
        wanted = "DeepSpeed"
    else:
        wanted = None
    if wanted and on_cpu:
        why = "use_cpu is set" if use_cpu else "this machine has no GPU"
        raise FreezePolicyError(
            f"the accelerate config asks for {wanted}, which accelerate runs on GPUs only, and "
            f"{why}: the {world} processes would not shard (they would run plain DDP, or each "
            "train alone); on CPU launch with configs/accelerate/ddp_cpu.yaml and --use_cpu true"
        )
    if world > 1 and not cuda_available and not use_cpu:
        raise FreezePolicyError(
            f"{world} processes were launched (WORLD_SIZE={world}) on a machine without a GPU "
            "and use_cpu is false: each process would train alone on all the data; add "
            "--use_cpu true to run them as CPU processes over gloo"
        )


def check_processes(accelerator, environ=None) -> None:
    """After the accelerator exists: refuse a launcher's ``WORLD_SIZE`` of several processes
    that the accelerator does not see (each process would train alone)."""
    env = os.environ if environ is None else environ
    world = int(env.get("WORLD_SIZE", "1") or 1)
    processes = int(getattr(accelerator, "num_processes", 1) or 1)
    if world > 1 and processes != world:
        raise FreezePolicyError(
            f"{world} processes were launched (WORLD_SIZE={world}) but the accelerator runs "
            f"{processes}: each process would train alone; on CPU pass --use_cpu true "
            "(TrainingArguments(use_cpu=True)), on GPUs check the accelerate config"
        )


__all__ = [
    "DistributedSetup",
    "check_distributed",
    "check_launch",
    "check_processes",
    "check_trainer",
    "trainer_find_unused_parameters",
    "current_setup",
    "setup_from_state",
]
