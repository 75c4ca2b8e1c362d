"""Frozen weights in low precision: which dtype each parameter is stored in, and the moves.

A frozen weight needs no gradient, no optimizer state and no fp32 master copy, so it can be
stored in bfloat16 or float16 while the trainable weights stay float32 (``FreezeTrainer(...,
frozen_dtype="bfloat16")``; ``--frozen_dtype`` in ``recipes/run.py``). The choices made here:

- **What is stored how** (``storage_dtype``): a parameter that requires grad is float32 (the
  master copy the optimizer updates); a frozen floating-point parameter with two or more
  dimensions (matmul weights, embedding tables) is ``frozen_dtype``; frozen vectors (biases,
  norm scales) stay float32. Vectors are 0.14% of MiniLM's parameters, and CPU
  ``LayerNorm`` under float16 autocast needs float32 parameters ("mixed dtype (CPU): expect
  parameter to have scalar type of Float"). Integer parameters are never touched.
- **A model loaded in low precision** (``from_pretrained(..., dtype=torch.bfloat16)``) gets its
  trainable parameters upcast to float32 and keeps its frozen matrices as loaded (no copy).
  ``frozen_dtype=None`` (the default) changes no dtype at all: the model trains as loaded.
- **Moves under schedules** (``place``): when a schedule opens a parameter (``gradual_unfreeze``,
  ``lisa``, ``auto_freeze``'s initial depth...), it is upcast to float32 *from its
  low-precision value*: the bits below bfloat16's 8-bit mantissa that it had before it was
  frozen are gone, and it trains on from the rounded value. When a schedule closes a parameter
  (``lisa`` resampling, ``auto_freeze`` deepening, a reversed ``gradual_unfreeze``), it is
  downcast (round to nearest even) and its gradient dropped. The frozen-weights audit snapshots
  a parameter after the move that froze it, so it compares in the stored dtype: a downcast
  frozen weight is checked to stay bit-identical to its bfloat16 value from the step it froze.
- **The optimizer** holds parameter objects, and a move replaces ``param.data`` in place, so the
  optimizer keeps the same object. Its state (AdamW's ``exp_avg`` / ``exp_avg_sq``) was made in
  float32 when the parameter trained; a closed parameter keeps its float32 state untouched
  (torch optimizers skip parameters without a gradient) and finds it again in float32 when it
  reopens. ``place`` casts a reopened parameter's state to float32 if it is in another dtype
  (an optimizer state loaded while the parameter was low precision), so a step never mixes
  dtypes.
- **Resume**: ``torch.optim.Optimizer.load_state_dict`` casts state tensors to their
  parameter's dtype, and ``load_state_dict`` of the model casts saved values to the live
  parameter's dtype. ``FreezeTrainer`` therefore upcasts every parameter the optimizer holds
  before a checkpoint is loaded (``upcast``), so the float32 values and moments come back
  exactly, and the schedule's stage then moves the closed ones down again (a bfloat16 value
  survives the round trip through float32 exactly).
- **Needs autocast**: low-precision frozen weights meet float32 activations; matmuls only
  accept that under autocast, so ``frozen_dtype`` needs ``bf16=True`` or ``fp16=True``
  (``check_precision_options``). It is refused with ``freeze_mode`` ``zero_lr`` / ``zero_grad``
  (every parameter requires grad there, so none would be stored low) and under FSDP and
  DeepSpeed, which flatten or shard parameters by dtype themselves (use their mixed-precision
  settings).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch
from torch import nn

from freeze_policies.errors import FreezePolicyError

FROZEN_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
TRAINABLE_DTYPE = torch.float32


def check_frozen_dtype(value) -> torch.dtype | None:
    """``None``, ``"bfloat16"`` or ``"float16"`` (or the torch dtypes) -> the dtype, else raise."""
    if value is None:
        return None
    if isinstance(value, torch.dtype) and value in FROZEN_DTYPES.values():
        return value
    if isinstance(value, str) and value in FROZEN_DTYPES:
        return FROZEN_DTYPES[value]
    raise FreezePolicyError(
        f"frozen_dtype={value!r} is not one of {', '.join(FROZEN_DTYPES)} "
        "(or None: keep the dtypes the model was loaded with)"
    )


def dtype_name(dtype: torch.dtype | None) -> str | None:
    """``torch.bfloat16`` -> ``"bfloat16"`` (None stays None)."""
    return None if dtype is None else str(dtype).removeprefix("torch.")


def check_precision_options(
    frozen_dtype: torch.dtype | None,
    *,
    freeze_mode: str = "requires_grad",
    mixed_precision: str | None = None,
    sharding: str | None = None,
) -> None:
    """Raise ``FreezePolicyError`` for combinations that cannot train with ``frozen_dtype``.

    ``mixed_precision`` is ``"bf16"``, ``"fp16"`` or None (``TrainingArguments.bf16`` /
    ``fp16``); ``sharding`` names FSDP or DeepSpeed when the run uses one (else None).
    """
    if frozen_dtype is None:
        return
    name = dtype_name(frozen_dtype)
    if freeze_mode != "requires_grad":
        raise FreezePolicyError(
            f"frozen_dtype={name!r} needs freeze_mode='requires_grad', not {freeze_mode!r}: "
            "under zero_lr / zero_grad every parameter requires grad and stays float32"
        )
    if mixed_precision not in ("bf16", "fp16"):
        raise FreezePolicyError(
            f"frozen_dtype={name!r} needs mixed precision (bf16=True or fp16=True): "
            "low-precision frozen weights meet float32 activations, which only autocast accepts"
        )
    if sharding is not None:
        raise FreezePolicyError(
            f"frozen_dtype={name!r} is not supported under {sharding}, which flattens or shards "
            "parameters by dtype itself; use its mixed-precision settings instead"
        )


def storage_dtype(
    param: torch.Tensor, trainable: bool, frozen_dtype: torch.dtype | None
) -> torch.dtype:
    """The dtype ``param`` is stored in (see the module docstring)."""
    if frozen_dtype is None or not param.is_floating_point():
        return param.dtype
    if trainable or param.dim() < 2:
        return TRAINABLE_DTYPE
    return frozen_dtype


@dataclass(frozen=True)
class DtypeMove:
    """One parameter moved from ``before`` to ``after`` (dtype names), at ``step``."""

    name: str
    before: str
    after: str
    step: int | None = None


def place(
    model: nn.Module,
    frozen_dtype: torch.dtype | None,
    trainable: Collection[str] | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    step: int | None = None,
) -> list[DtypeMove]:
    """Store every parameter of ``model`` in its ``storage_dtype``; return the moves made.

    ``trainable`` names the parameters that train (default: those that require grad now). A
    moved parameter keeps its object (``param.data`` is replaced), loses its gradient, and,
    when it becomes float32, gets its optimizer state in ``optimizer`` cast to float32 too.
    """
    if frozen_dtype is None:
        return []
    trainable = None if trainable is None else set(trainable)
    moves = []
    for name, param in model.named_parameters():
        trains = param.requires_grad if trainable is None else name in trainable
        wanted = storage_dtype(param, trains, frozen_dtype)
        if param.dtype == wanted:
            continue
        moves.append(DtypeMove(name, dtype_name(param.dtype), dtype_name(wanted), step))
        _cast(param, wanted, optimizer)
    return moves


def upcast(
    model: nn.Module,
    names: Collection[str],
    *,
    optimizer: torch.optim.Optimizer | None = None,
    step: int | None = None,
) -> list[DtypeMove]:
    """Make the named floating-point parameters float32 (before a checkpoint is loaded)."""
    names = set(names)
    moves = []
    for name, param in model.named_parameters():
        if name in names and param.is_floating_point() and param.dtype != TRAINABLE_DTYPE:
            moves.append(DtypeMove(name, dtype_name(param.dtype), "float32", step))
            _cast(param, TRAINABLE_DTYPE, optimizer)
    return moves


def _cast(param: nn.Parameter, dtype: torch.dtype, optimizer) -> None:
    with torch.no_grad():
        param.data = param.data.to(dtype)
    param.grad = None
    if optimizer is None or dtype != TRAINABLE_DTYPE:
        return
    state = optimizer.state.get(param)
    for key, value in (state or {}).items():
        if torch.is_tensor(value) and value.is_floating_point() and value.shape == param.shape:
            state[key] = value.to(dtype)


def dtype_bytes(model: nn.Module) -> dict[str, dict[str, int]]:
    """``{"frozen" | "trainable": {dtype name: bytes}}`` of the parameters now."""
    out: dict[str, dict[str, int]] = {"frozen": {}, "trainable": {}}
    for param in model.parameters():
        kind = "trainable" if param.requires_grad else "frozen"
        key = dtype_name(param.dtype)
        out[kind][key] = out[kind].get(key, 0) + param.numel() * param.element_size()
    return out


__all__ = [
    "FROZEN_DTYPES",
    "TRAINABLE_DTYPE",
    "DtypeMove",
    "check_frozen_dtype",
    "check_precision_options",
    "dtype_bytes",
    "place",
    "storage_dtype",
    "upcast",
]
