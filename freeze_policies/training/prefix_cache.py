"""Frozen-prefix cache: train a bottom-frozen model at the cost of its top.

When the embeddings and the lowest ``N`` blocks are frozen and run deterministically, the hidden
states leaving block ``N-1`` are the same for an example every epoch. ``PrefixCache`` keeps them
and, on later steps, skips the prefix:

- **Keyed by content.** An example's key is the bytes of its unpadded ``input_ids`` (and
  ``token_type_ids``); the same tokens always give the same prefix output, so duplicates share an
  entry and no index column has to travel through the data pipeline.
- **Record, then replay.** A batch with any example not yet cached runs the whole model normally
  while a forward hook on block ``N-1`` records each example's output (padding stripped). A batch
  whose examples are all cached runs the model's own forward with blocks ``0..N-1`` replaced by
  the identity and block ``N-1``'s output replaced by the cached states, re-padded to the batch;
  embeddings still run (a lookup, cheap) so masks and positions come from the model as usual.
  Values at padded positions are zeros: attention masks them out as keys, and heads read only
  real positions, so the loss is unchanged.
- **Eval-mode prefix.** The prefix must be deterministic, so while the cache is on every module
  that runs before block ``N`` (embedding dropout included, found on the first step) is put in
  eval mode at each step. This is the documented behaviour of ``cache_frozen_prefix``: dropout is
  off in the frozen prefix, on in the trained top.
- **Where.** In memory by default; ``directory=`` spills to one append-only float file plus an
  index, for corpora whose states do not fit in RAM. The file is removed when the run ends
  (``release``: ``FreezeTrainer.train`` calls it on success, error or interrupt); files that a
  killed earlier run of the same output_dir left on this machine are removed when the next one
  starts; other files in the folder are never touched.
- **Depth changes.** ``refresh()`` recomputes ``N`` from ``requires_grad``; when a schedule opens
  a block of the prefix (gradual unfreezing), the cache is emptied and rebuilt at the new depth.
  With no frozen block at the bottom (or trainable embeddings or shared parameters), caching has
  nothing to save and ``PrefixCache`` refuses.

Requires blocks that take the hidden states as their first argument and return a tensor, as
every transformers 5 decoder and encoder layer does.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from freeze_policies.errors import FreezePolicyError
from freeze_policies.structure.discover import Anatomy

KEY_FIELDS = ("input_ids", "token_type_ids")


def frozen_prefix_depth(model: nn.Module, anat: Anatomy) -> int:
    """How many of the lowest blocks, with the embeddings and shared parameters, are frozen.

    0 when any embedding or shared parameter trains (then no prefix output is fixed).
    """
    params = dict(model.named_parameters())
    if any(params[n].requires_grad for n in [*anat.embeddings, *anat.shared]):
        return 0
    depth = 0
    for names in anat.blocks:
        if any(params[n].requires_grad for n in names):
            break
        depth += 1
    return depth


class _MemoryStore:
    def __init__(self):
        self.entries: dict[bytes, torch.Tensor] = {}
        self.nbytes = 0

    def __contains__(self, key):
        return key in self.entries

    def __len__(self):
        return len(self.entries)

    def put(self, key: bytes, states: torch.Tensor) -> None:
        self.entries[key] = states
        self.nbytes += states.numel() * states.element_size()

    def get(self, key: bytes) -> torch.Tensor:
        return self.entries[key]


class _DiskStore:
    """Append-only float file + in-memory index of (offset, shape); dtype kept per store."""

    def __init__(self, directory: str | os.PathLike, owner: str | None = None):
        self.directory = Path(directory)
        check_cache_dir(self.directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / f"{file_prefix(owner)}{os.getpid()}-{id(self)}.bin"
        self.file = open(self.path, "wb+")  # noqa: SIM115 - lives as long as the store
        # removed also when the store is dropped without close(), or at interpreter exit
        self._finalizer = weakref.finalize(self, _remove_file, self.file, self.path)
        self.index: dict[bytes, tuple[int, tuple[int, ...], torch.dtype]] = {}
        self.nbytes = 0

    def __contains__(self, key):
        return key in self.index

    def __len__(self):
        return len(self.index)

    def put(self, key: bytes, states: torch.Tensor) -> None:
        data = states.contiguous().view(torch.uint8).numpy().tobytes()
        self.file.seek(0, os.SEEK_END)
        self.index[key] = (self.file.tell(), tuple(states.shape), states.dtype)
        self.file.write(data)
        self.nbytes += len(data)

    def get(self, key: bytes) -> torch.Tensor:
        offset, shape, dtype = self.index[key]
        count = int(np.prod(shape)) * torch.empty((), dtype=dtype).element_size()
        self.file.seek(offset)
        raw = bytearray(self.file.read(count))
        return torch.frombuffer(raw, dtype=torch.uint8).view(dtype).reshape(shape)

    def close(self):
        self._finalizer()


def _remove_file(handle, path: Path) -> None:
    handle.close()
    path.unlink(missing_ok=True)


def file_prefix(owner: str | None) -> str:
    """The start of the names of the cache files of one run: ``prefix-<owner>-<host>-`` (the owner
    is a digest of the run's output_dir), then the process id. Files of other runs in a shared
    folder never start the same way."""
    tag = hashlib.sha256(str(Path(owner).absolute()).encode()).hexdigest()[:12] if owner else "run"
    host = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"
    return f"prefix-{tag}-{host}-"


def check_cache_dir(directory: Path) -> None:
    """One line for a cache folder that cannot be one (a file in its place)."""
    probe = directory
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        where = ("is a file" if probe == directory
                 else f"cannot be created: {str(probe)!r} is a file")
        raise FreezePolicyError(
            f"prefix_cache_dir={str(directory)!r} {where}; give a folder (it is created if "
            "missing) or leave prefix_cache_dir out to keep the cache in memory"
        )


def remove_stale_files(directory: str | os.PathLike, owner: str | None) -> list[Path]:
    """Remove the cache files an earlier, killed run of the same ``owner`` (output_dir) left on
    this machine: files named for ``owner`` and this host whose process is gone. Files of live
    processes (the other ranks of this run) and of other runs are left alone."""
    folder = Path(directory)
    if not folder.is_dir():
        return []
    start = file_prefix(owner)
    removed = []
    for path in folder.glob(f"{start}*.bin"):
        pid = path.name[len(start):].split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class PrefixCache:
    """Caches the output of the frozen prefix of ``model`` per example; see the module doc."""

    def __init__(
        self,
        model: nn.Module,
        anat: Anatomy,
        directory: str | os.PathLike | None = None,
        replay: bool = True,
        wait_for_prefix: bool = False,
        owner: str | None = None,
    ):
        """``replay=False`` keeps the prefix in eval mode but never stores or replays: the
        uncached run that a cached one must match. ``wait_for_prefix=True`` accepts a model with
        no frozen prefix yet (an adaptive policy freezes one during training); the cache stays
        off until ``refresh`` finds one. ``owner`` (the run's output_dir) names the cache files in
        ``directory``: an earlier run of the same owner that was killed left files there, which
        are removed now; ``release`` removes this run's own."""
        if len(anat.stacks) > 1:
            raise FreezePolicyError(
                f"cache_frozen_prefix works on models with one stack of blocks; "
                f"{anat.model_class} has {len(anat.stacks)} ({', '.join(anat.stack_names())}), "
                "and caching a frozen encoder's output is not supported yet"
            )
        self.replay = replay
        self.model = model
        self.anat = anat
        self.directory = directory
        self.owner = owner
        self._last_nbytes = 0
        if directory is not None:
            check_cache_dir(Path(directory))
            remove_stale_files(directory, owner)
        self.modules = dict(model.named_modules())
        self.depth = 0
        self.store = None
        self.prefix_modules: list[nn.Module] | None = None
        self.stats = {"hits": 0, "records": 0, "rebuilds": 0, "record_seconds": 0.0}
        if frozen_prefix_depth(model, anat) == 0 and not wait_for_prefix:
            raise FreezePolicyError(
                f"cache_frozen_prefix needs frozen embeddings and at least one frozen block at the "
                f"bottom of {anat.model_class}; the current trainable set has no frozen "
                "prefix (policies such as bottom_n, all_but_head or gradual_unfreeze have one)"
            )
        self.refresh()

    # -- depth -------------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Recompute the frozen depth; empty the cache if it changed. Returns True if changed.

        When a schedule opens the whole prefix (gradual unfreezing's last stage), the cache
        switches itself off: ``step`` then runs the model untouched.
        """
        depth = frozen_prefix_depth(self.model, self.anat)
        if depth == self.depth and (self.store is not None or depth == 0):
            return False
        if self.store is not None:
            self.stats["rebuilds"] += 1
        self.close()
        self._last_nbytes = 0
        self.depth = depth
        if depth:
            self.store = (_DiskStore(self.directory, self.owner) if self.directory
                          else _MemoryStore())
        self.prefix_modules = None
        return True

    @property
    def nbytes(self) -> int:
        return self.store.nbytes if self.store is not None else self._last_nbytes

    def close(self) -> None:
        if isinstance(self.store, _DiskStore):
            self.store.close()
        self.store = None

    def release(self) -> None:
        """Drop the cached states and remove the cache file (the end of a run: success, error or
        interrupt); ``depth``, ``nbytes`` and ``stats`` keep the run's figures, and the next
        training step (``refresh``) starts the cache again."""
        self._last_nbytes = self.nbytes
        self.close()  # depth and the counters stay, as the run's figures

    # -- one training or evaluation step -----------------------------------------------------
    @contextmanager
    def step(self, inputs: dict) -> Iterator[str]:
        """Run the model's forward inside this context; yields "replay", "record" or "off"."""
        if self.depth == 0:
            yield "off"
            return
        keys, positions = self._keys(inputs)
        cached = self.replay and all(key in self.store for key in keys)
        mode = "replay" if cached else "record"
        handles, patched = [], []
        last = self.modules[self.anat.block_modules[self.depth - 1]]
        if self.prefix_modules is None:
            handles.extend(self._learn_prefix_modules(last))
        for module in self.prefix_modules or ():
            module.eval()
        if mode == "replay":
            states = self._batch_states(keys, positions, inputs["input_ids"])
            for name in self.anat.block_modules[: self.depth]:
                block = self.modules[name]
                block.forward = _identity
                patched.append(block)
            handles.append(last.register_forward_hook(lambda *_: states))
            self.stats["hits"] += 1
        else:
            started = time.perf_counter()

            def record(_module, _args, output):
                hidden = output[0] if isinstance(output, tuple) else output
                self._record(keys, positions, hidden)

            handles.append(last.register_forward_hook(record))
            self.stats["records"] += 1
        try:
            yield mode
        finally:
            for handle in handles:
                handle.remove()
            for block in patched:
                del block.forward
            if mode == "record":
                self.stats["record_seconds"] += time.perf_counter() - started

    def _keys(self, inputs: dict) -> tuple[list[bytes], list[torch.Tensor]]:
        mask = inputs.get("attention_mask")
        ids = inputs["input_ids"]
        keys, positions = [], []
        for row in range(ids.shape[0]):
            keep = mask[row].bool() if mask is not None else torch.ones_like(ids[row], dtype=bool)
            fields = [inputs[f][row][keep] for f in KEY_FIELDS if f in inputs]
            parts = [field.cpu().numpy().tobytes() for field in fields]
            keys.append(b"|".join(parts))
            positions.append(keep)
        return keys, positions

    def _record(self, keys, positions, hidden: torch.Tensor) -> None:
        for row, key in enumerate(keys):
            if self.replay and key not in self.store:
                self.store.put(key, hidden[row][positions[row]].detach().cpu().clone())

    def _batch_states(self, keys, positions, ids: torch.Tensor) -> torch.Tensor:
        rows = [self.store.get(key) for key in keys]
        batch = torch.zeros((ids.shape[0], ids.shape[1], rows[0].shape[-1]), dtype=rows[0].dtype)
        for row, states in enumerate(rows):
            batch[row][positions[row].cpu()] = states
        return batch.to(ids.device)

    def _learn_prefix_modules(self, last: nn.Module) -> list:
        """On the first step, put in eval mode (and remember) every module called before the
        prefix ends, except the containers of the blocks; returns the hook handles."""
        blocks = self.anat.block_modules
        containers = {name for name in self.modules for block in blocks
                      if name == "" or block.startswith(name + ".")}
        names = {id(module): name for name, module in self.modules.items()}
        found: list[nn.Module] = []
        done = False

        def before(module, _args):
            if not done and names.get(id(module)) not in containers and module not in found:
                module.eval()
                found.append(module)

        def finished(*_):
            nonlocal done
            done = True
            self.prefix_modules = found

        return [nn.modules.module.register_module_forward_pre_hook(before),
                last.register_forward_hook(finished)]


def _identity(hidden_states, *args, **kwargs):
    return hidden_states
