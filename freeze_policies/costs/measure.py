"""Bytes measured on a real model and optimizer: what a training step holds.

**Measurements** (``optimizer_state_bytes``, ``gradient_bytes``, ``saved_for_backward_bytes``)
count what a real step holds, for the benchmark and for trainers. Bytes are those of the stored
dtype: with ``frozen_dtype="bfloat16"`` (``freeze_policies.training.precision``) a frozen matrix
counts 2 bytes per element; under autocast the bfloat16 copies autocast makes of float32 weights
for the backward are saved tensors and count in ``saved_for_backward_bytes`` (a weight already
stored in bfloat16 is used as is and counts as a parameter only).

**Accounted training memory** (``account_memory``, a ``MemoryAccount``) = parameters (frozen and
trainable, by dtype) + gradients + optimizer state (step scalars included) + saved for backward:
what one training step holds by construction, independent of allocator caching and of other
work in the process. ``peak_rss_bytes`` (the process's peak resident memory, the CPU's measured
figure) and ``torch.cuda.max_memory_allocated`` (on a GPU) are reported beside it.
"""

from __future__ import annotations

import resource
import sys
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import nn


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes of ``tensor`` as stored (``numel * element_size``)."""
    return tensor.numel() * tensor.element_size()


def optimizer_state_bytes(
    optimizer: torch.optim.Optimizer,
    params: Iterable[torch.Tensor] | None = None,
    *,
    include_scalars: bool = False,
) -> int:
    """Bytes of the optimizer's per-parameter state now (after at least one ``step``).

    Counts state tensors with as many elements as their parameter (Adam's moments, SGD's
    momentum buffer); AdamW's ``step`` counter (one scalar per parameter tensor) only with
    ``include_scalars=True``. ``params`` restricts the count to those tensors (e.g. the frozen
    ones, whose state should be 0 bytes).
    """
    wanted = None if params is None else {id(param) for param in params}
    total = 0
    for param, state in optimizer.state.items():
        if wanted is not None and id(param) not in wanted:
            continue
        for value in state.values():
            if torch.is_tensor(value) and (include_scalars or value.shape == param.shape):
                total += tensor_bytes(value)
    return total


def gradient_bytes(model: nn.Module) -> int:
    """Bytes held by the ``.grad`` tensors of ``model`` now (parameters with a gradient)."""
    return sum(tensor_bytes(param.grad) for param in model.parameters() if param.grad is not None)


def saved_for_backward_bytes(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> int:
    """Bytes autograd keeps for the backward pass of one ``model(**batch)`` forward.

    Every tensor saved for backward is seen through ``torch.autograd.graph.saved_tensors_hooks``
    and counted once per storage (views of one buffer count once, as the whole storage).
    Storages of the model's parameters and buffers are left out: they are held anyway, saving
    them costs nothing. The forward runs in the model's current mode (dropout masks count in
    train mode) and with grad enabled; the graph is dropped afterwards, nothing is updated.
    """
    held = {_storage_key(t) for t in [*model.parameters(), *model.buffers()]}
    saved: dict[tuple, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key is not None and key not in held:
            saved[key] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        output = model(**batch)
    del output
    return sum(saved.values())


def parameter_bytes(model: nn.Module, names: Collection[str] | None = None) -> int:
    """Bytes of the parameters of ``model`` as stored now (``names`` restricts the count)."""
    wanted = None if names is None else set(names)
    return sum(
        tensor_bytes(param)
        for name, param in model.named_parameters()
        if wanted is None or name in wanted
    )


@dataclass(frozen=True)
class MemoryAccount:
    """Accounted training memory, in bytes (see the module docstring)."""

    frozen_parameter_bytes: int
    trainable_parameter_bytes: int
    gradient_bytes: int
    optimizer_state_bytes: int
    saved_for_backward_bytes: int
    parameter_bytes_by_dtype: dict[str, int] = field(default_factory=dict)

    @property
    def parameter_bytes(self) -> int:
        return self.frozen_parameter_bytes + self.trainable_parameter_bytes

    @property
    def total_bytes(self) -> int:
        return (
            self.parameter_bytes
            + self.gradient_bytes
            + self.optimizer_state_bytes
            + self.saved_for_backward_bytes
        )

    def as_dict(self) -> dict:
        return {
            **asdict(self),
            "parameter_bytes": self.parameter_bytes,
            "total_bytes": self.total_bytes,
        }


def account_memory(
    model: nn.Module,
    *,
    gradient_bytes: int,
    optimizer_state_bytes: int,
    saved_for_backward_bytes: int,
) -> MemoryAccount:
    """A ``MemoryAccount`` of ``model``'s parameters now (frozen = not requiring grad) plus the
    measured gradient, optimizer-state and saved-for-backward bytes of a training step."""
    frozen = trainable = 0
    by_dtype: dict[str, int] = {}
    for param in model.parameters():
        size = tensor_bytes(param)
        if param.requires_grad:
            trainable += size
        else:
            frozen += size
        key = str(param.dtype).removeprefix("torch.")
        by_dtype[key] = by_dtype.get(key, 0) + size
    return MemoryAccount(
        frozen, trainable, gradient_bytes, optimizer_state_bytes, saved_for_backward_bytes,
        dict(sorted(by_dtype.items())),
    )


def peak_rss_bytes() -> int:
    """The peak resident memory of this process so far (``ru_maxrss``; KiB on Linux)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _storage_key(tensor: torch.Tensor) -> tuple | None:
    try:
        storage = tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without a plain storage
        return None
    return (tensor.device.type, tensor.device.index, storage.data_ptr())
