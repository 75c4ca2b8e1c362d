"""DDP re-wrapping: a ``DistributedDataParallel`` that all-reduces exactly what trains now.

``DistributedDataParallel`` fixes the parameters it all-reduces when it is built: the ones that
require grad then. A parameter that starts requiring grad later gets its gradient computed on
every rank but never averaged, so the ranks' weights drift apart silently (the negative control
in ``tests/test_distributed.py`` shows it on two processes). ``FreezeTrainer`` therefore keeps a
DDP wrapper whose registered parameters are exactly those that require grad now: when a
schedule (``gradual_unfreeze``, ``lisa``) changes the trainable set, the next ``training_step``
builds a new ``DistributedDataParallel`` around the same module, with the kwargs the
``Accelerator`` used (``DDPRewrapper``). Frozen parameters stay out of autograd and out of the
all-reduce, so every stage keeps the compute and communication savings of freezing. The price is
one DDP construction per stage change (``init_sync=False``: no broadcast, the ranks already
agree; the new reducer builds its buckets; 1.6 to 6.9 ms on MiniLM-L6, ``recipes/bench.py ddp``)
plus the first wrapper's buckets, kept alive by ``Trainer``'s training loop until ``train()``
returns. Fixed policies never re-wrap, except once at step 0 under ``freeze_mode="zero_lr"`` /
``"zero_grad"``: those make every parameter require grad after DDP wrapped the model, and
unsynchronised "frozen" gradients would otherwise enter gradient clipping's norm and move the
ranks apart.

The alternative (register every parameter the schedule will ever open, freeze the closed ones
after wrapping and rely on ``find_unused_parameters=True``) is what a plain ``Trainer`` with a
``FreezeScheduleCallback`` gets: it is correct but all-reduces the buckets of every
ever-trainable parameter at every step.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from torch import nn

logger = logging.getLogger("freeze_policies")

# Attribute on the DDP wrappers DDPRewrapper builds: the ids of the parameters they registered.
REGISTERED = "_freeze_policies_registered"


def _is_ddp(model) -> bool:
    return isinstance(model, nn.parallel.DistributedDataParallel)


def _trainable(module: nn.Module) -> frozenset[int]:
    return frozenset(id(p) for p in module.parameters() if p.requires_grad)


@dataclass
class RewrapEvent:
    """One re-wrap: the optimizer step it happened at, its wall time, the parameters now
    registered (tensors and elements)."""

    step: int
    seconds: float
    tensors: int
    elements: int


class DDPRewrapper:
    """Keeps the DDP wrapper's registered parameters equal to those that require grad.

    ``before_prepare(module)`` records what a wrapper built from ``module`` now will register
    (``FreezeTrainer._wrap_model`` calls it just before ``Accelerator.prepare``).
    ``current(model, accelerator, step)`` returns the wrapper to run ``training_step`` on: the
    given one while its registered set still matches, else a new ``DistributedDataParallel``
    around the same module. ``events`` lists the re-wraps.
    """

    def __init__(self):
        self.wrapper: nn.parallel.DistributedDataParallel | None = None
        self.registered: frozenset[int] | None = None
        self.events: list[RewrapEvent] = []
        self._source: nn.Module | None = None  # the wrapper Trainer's loop holds
        self._pending: tuple[int, frozenset[int]] | None = None

    def before_prepare(self, module: nn.Module) -> None:
        self._pending = (id(module), _trainable(module))

    def current(self, model: nn.Module, accelerator=None, step: int = 0) -> nn.Module:
        if not _is_ddp(model):
            return model
        module = model.module
        if model is not self._source:  # a new train(): adopt the loop's wrapper
            self._source, self.wrapper = model, model
            self.registered = getattr(model, REGISTERED, None)
            if self.registered is None and self._pending and self._pending[0] == id(module):
                self.registered = self._pending[1]  # built by Accelerator.prepare just now
        now = _trainable(module)
        if self.registered != now:  # unknown (None) or stale: build one that matches
            self._rewrap(module, now, accelerator, step)
        wrapper = self.wrapper
        if wrapper is not model:
            # Trainer's loop enters `accelerator.no_sync(model)` on the wrapper it holds for the
            # micro-batches of a gradient-accumulation window: carry that over.
            wrapper.require_backward_grad_sync = model.require_backward_grad_sync
        return wrapper

    def _rewrap(self, module, trainable, accelerator, step) -> None:
        old = self.wrapper
        start = time.perf_counter()
        handler = getattr(accelerator, "ddp_handler", None)
        kwargs = handler.to_kwargs() if handler is not None else {}
        kwargs.pop("init_sync", None)
        new = nn.parallel.DistributedDataParallel(
            module,
            device_ids=old.device_ids,
            output_device=old.output_device,
            dim=old.dim,
            process_group=old.process_group,
            init_sync=False,  # the ranks already hold the same weights; no broadcast
            **kwargs,
        )
        if handler is not None:
            handler.register_comm_hook(new)
        new._is_accelerate_prepared = True
        setattr(new, REGISTERED, trainable)
        models = getattr(accelerator, "_models", None)
        if models is not None:
            for i, held in enumerate(models):
                if held is old:
                    models[i] = new
        self.wrapper, self.registered = new, trainable
        seconds = time.perf_counter() - start
        params = [p for p in module.parameters() if p.requires_grad]
        event = RewrapEvent(step, seconds, len(params), sum(p.numel() for p in params))
        self.events.append(event)
        logger.info(
            "DDP re-wrapped at step %d for %d trainable tensors (%d elements) in %.1f ms",
            step, event.tensors, event.elements, 1000 * seconds,
        )
