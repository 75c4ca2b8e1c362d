"""FSDP2 (``fully_shard``) checkpoints of a schedule: the optimizer state of closed blocks kept.

Under FSDP2 each parameter is a DTensor sharded on its own, so a schedule may switch
``requires_grad`` per parameter after wrapping (``freeze_policies.distributed.guards``). What
needs care is the resume. ``torch.distributed.checkpoint`` loads into a *template*: the state dict
of the live optimizer (``get_optimizer_state_dict``, which is what accelerate uses under FSDP2
too), and it loads only the entries the template has. A freshly built optimizer has no state, so
``get_optimizer_state_dict`` first gives state to every parameter that requires grad at that
moment (stage 0 of the policy) by a zero-gradient, zero-learning-rate step, and to nothing else.
A LISA block that trained before the checkpoint but is closed at stage 0, or a block gradual
unfreezing opened after stage 0, would then have no slot in the template: its momentum would be
silently dropped (and the resumed run would not equal the uninterrupted one).

Worse, ``set_optimizer_state_dict`` loads optimizer state only for parameters that require
grad at load time (torch 2.13, ``torch.distributed.checkpoint.state_dict``): the state of every
block closed at load time is dropped even when the template has it, and a load in which a
parameter requiring grad has no saved state fails (``auto_freeze`` with ``initial_depth``: stage
0 opens blocks that never trained). ``optimizer_state_visible`` makes exactly the parameters whose
state crosses the checkpoint require grad for the duration of the load (and of the save, where
torch 2.13 keeps every parameter's state anyway: the saved set then never depends on
``requires_grad``).

``prime_optimizer_state(optimizer, model, names)`` gives state to exactly the parameters the
checkpoint holds state for (``names_with_optimizer_state`` reads them from the checkpoint's
metadata) by the same zero-gradient, zero-learning-rate step, so the template has their slots and
nothing more; the load then overwrites every value. ``save_sharded_checkpoint`` and
``load_sharded_checkpoint`` are the round trip on a ``fully_shard``-ed model (the CPU tests use
them); ``FreezeTrainer`` primes its optimizer the same way before accelerate loads an FSDP2
checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Collection, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from freeze_policies.costs.flops import ADAMW_STATE_SLOTS

logger = logging.getLogger("freeze_policies")

OPTIMIZER_KEY = "optimizer"  # the top-level key of the optimizer state, as accelerate saves it
WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")


def _fqn(name: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def shard_numel(shape, world_size: int, rank: int = 0) -> int:
    """Elements of rank ``rank``'s shard of a parameter of ``shape`` under ``fully_shard``: dim 0
    cut in ``world_size`` chunks of ``ceil(rows / world_size)`` rows (``torch.chunk``'s rule; the
    last ranks may hold fewer rows, or none); a 0-dim tensor is held whole."""
    shape = tuple(shape)
    if not shape:
        return 1
    rows, rest = shape[0], math.prod(shape[1:])
    chunk = -(-rows // world_size)
    return max(0, min(chunk, rows - rank * chunk)) * rest


@dataclass(frozen=True)
class RankMemory:
    """Accounted memory of one rank under FSDP2, in bytes: its shards of every parameter, of
    the gradients of the parameters that train now, and of the optimizer state of those that
    have some (``state_slots`` tensors per element; AdamW's step scalars left out)."""

    world_size: int
    rank: int
    parameter_bytes: int
    gradient_bytes: int
    optimizer_state_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.parameter_bytes + self.gradient_bytes + self.optimizer_state_bytes

    def as_dict(self) -> dict:
        return {**asdict(self), "total_bytes": self.total_bytes}


def fsdp2_rank_memory(model: nn.Module, *, trainable: Collection[str], with_state: Collection[str],
                      world_size: int, rank: int = 0,
                      state_slots: int = ADAMW_STATE_SLOTS) -> RankMemory:
    """``RankMemory`` of rank ``rank`` when ``model`` (unsharded; the meta device works) is
    sharded by ``fully_shard`` over ``world_size`` ranks, ``trainable`` train now and
    ``with_state`` have optimizer state (under a schedule: every parameter opened so far).
    Gradients and optimizer state are in the parameter's dtype, as under FSDP2 with float32
    sharded parameters. The whole-model counterpart is ``costs.flops.predict_cost``."""
    params = dict(model.named_parameters())
    unknown = sorted((set(trainable) | set(with_state)) - params.keys())
    if unknown:
        raise ValueError(f"{len(unknown)} names are not parameters of {type(model).__name__}: "
                         f"{', '.join(unknown[:3])}")

    def shard_bytes(names) -> int:
        return sum(shard_numel(params[n].shape, world_size, rank) * params[n].element_size()
                   for n in names)

    return RankMemory(world_size, rank, shard_bytes(params), shard_bytes(set(trainable)),
                      state_slots * shard_bytes(set(with_state)))


def is_fsdp2(model: nn.Module) -> bool:
    """Whether ``fully_shard`` sharded some module of ``model``."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without FSDP2
        return False
    return any(isinstance(module, FSDPModule) for module in model.modules())


def names_with_optimizer_state(checkpoint, key: str = OPTIMIZER_KEY) -> set[str]:
    """The parameter names (FQNs) a ``torch.distributed.checkpoint`` directory holds optimizer
    state for, read from its metadata (no tensor is loaded)."""
    import torch.distributed.checkpoint as dcp

    metadata = dcp.FileSystemReader(str(checkpoint)).read_metadata()
    names = set()
    for path in (metadata.planner_data or {}).values():
        if len(path) >= 4 and path[0] == key and path[1] == "state":
            names.add(str(path[2]))
    return names


@torch.no_grad()
def prime_optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module,
                          names: Collection[str]) -> list[str]:
    """Give optimizer state to the parameters ``names`` that have none, and to no other: one
    optimizer step with zero gradients on them and every learning rate at 0 (weights and other
    parameters untouched: AdamW's decay multiplies by ``1 - 0 * wd``). Returns the names primed.
    The values are placeholders for a checkpoint load to overwrite."""
    wanted = {_fqn(n) for n in names}
    params = {_fqn(n): p for n, p in model.named_parameters()}
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    primed = [n for n, p in params.items()
              if n in wanted and id(p) in held and not optimizer.state.get(p)]
    if not primed:
        return []
    saved_grads = {id(p): p.grad for p in params.values()}
    for param in params.values():
        param.grad = None
    for name in primed:
        params[name].grad = torch.zeros_like(params[name])
    rates = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = torch.zeros_like(group["lr"]) if torch.is_tensor(group["lr"]) else 0.0
    try:
        optimizer.step()
    finally:
        for group, rate in zip(optimizer.param_groups, rates):
            group["lr"] = rate
        for param in params.values():
            param.grad = saved_grads[id(param)]
    return primed


@contextlib.contextmanager
def optimizer_state_visible(model: nn.Module, optimizer: torch.optim.Optimizer,
                            names: Collection[str] | None = None) -> Iterator[None]:
    """While the block runs, exactly the parameters whose optimizer state crosses a checkpoint
    require grad (every ``requires_grad`` is set back after): ``torch.distributed.checkpoint.
    state_dict`` loads optimizer state only for parameters that require grad, which would drop
    the state of every block a schedule has closed, and refuses a load in which a parameter that
    requires grad has no saved state (a block no stage has opened yet).
    ``names``: those parameters (loading: the ones the checkpoint holds state for); None: every
    parameter with optimizer state now (saving)."""
    if names is None:
        chosen = {id(p) for p, state in optimizer.state.items() if state}
    else:
        wanted = {_fqn(n) for n in names}
        chosen = {id(p) for n, p in model.named_parameters() if _fqn(n) in wanted}
    before = [(param, param.requires_grad) for param in model.parameters()]
    for param, _ in before:
        param.requires_grad_(id(param) in chosen)
    try:
        yield
    finally:
        for param, requires_grad in before:
            param.requires_grad_(requires_grad)


@contextlib.contextmanager
def loading_into(model: nn.Module, optimizer: torch.optim.Optimizer, directory) -> Iterator[None]:
    """Around a load of the ``torch.distributed.checkpoint`` directory ``directory`` into
    ``optimizer`` by someone else (accelerate's ``load_fsdp_optimizer`` under ``Trainer``): slots
    for every parameter the checkpoint holds state for, visible to the load. A directory without
    DCP metadata changes nothing."""
    if not (Path(directory) / ".metadata").is_file():
        yield
        return
    names = names_with_optimizer_state(directory)
    prime_optimizer_state(optimizer, model, names)
    with optimizer_state_visible(model, optimizer, names):
        yield


def save_sharded_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, path) -> None:
    """The model's and the optimizer's sharded state with ``torch.distributed.checkpoint``, the
    state of closed blocks included (a collective: every rank calls it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    with optimizer_state_visible(model, optimizer):
        model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, OPTIMIZER_KEY: optimizer_state}, checkpoint_id=str(path))


def load_sharded_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, path) -> None:
    """Load what ``save_sharded_checkpoint`` wrote into ``model`` and ``optimizer``, with the
    optimizer state of every parameter that had some (``prime_optimizer_state``), whatever
    requires grad now."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    names = names_with_optimizer_state(path)
    primed = prime_optimizer_state(optimizer, model, names)
    logger.info("optimizer state slots made for %d parameters before the load", len(primed))
    with optimizer_state_visible(model, optimizer, names):
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, OPTIMIZER_KEY: optimizer_state}
        dcp.load(state, checkpoint_id=str(Path(path)))
        set_state_dict(model, optimizer, model_state_dict=state["model"],
                       optim_state_dict=state[OPTIMIZER_KEY])


__all__ = [
    "RankMemory",
    "fsdp2_rank_memory",
    "shard_numel",
    "is_fsdp2",
    "load_sharded_checkpoint",
    "loading_into",
    "names_with_optimizer_state",
    "optimizer_state_visible",
    "prime_optimizer_state",
    "save_sharded_checkpoint",
]
