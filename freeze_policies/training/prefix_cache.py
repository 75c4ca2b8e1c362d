"""Frozen-prefix cache: train a bottom-frozen model at the cost of its top.

When the embeddings and the lowest ``N`` blocks are frozen and run deterministically, the hidden
states leaving block ``N-1`` are the same for an example every epoch. ``PrefixCache`` keeps them
and, on later steps, skips the prefix:

- **Keyed by content.** An example's key is the bytes of its unpadded ``input_ids`` (and
  ``token_type_ids``); the same tokens always give the same prefix output, so duplicates share an
  entry and no index column has to travel through the data pipeline.
- **Fill, then replay.** Every training step replays: the model's own forward runs with blocks
  ``0..N-1`` replaced by the identity and block ``N-1``'s output replaced by the cached states,
  re-padded to the batch; embeddings still run (a lookup, cheap) so masks and positions come
  from the model as usual. Values at padded positions are zeros: attention masks them out as
  keys, and heads read only real positions, so the loss is unchanged. The examples of the batch
  not cached yet are *filled* first: the prefix runs on those rows only (a sub-batch, no
  gradient), a forward hook on block ``N-1`` stores each row's output (padding stripped) and
  stops the forward there. So a batch that mixes cached and new examples computes the prefix
  for the new ones only, and a policy that freezes in the middle of an epoch replays what it
  froze from the next step on, in every later epoch, whatever the batches' composition.
- **Deepening without starting over.** The cache keeps one level per frozen depth. When the
  depth grows from ``d`` to ``d' > d`` (an adaptive policy freezes more blocks), the level-``d``
  states are the inputs of block ``d``: an example cached at level ``d`` is filled at level
  ``d'`` by injecting its level-``d`` states and running blocks ``d..d'-1`` only (then its
  level-``d`` entry is dropped). An example cached nowhere runs the whole prefix. When the depth
  shrinks (a schedule opens a block of the prefix), the levels deeper than the new depth are
  dropped: they went through blocks that train now.
- **Eval-mode prefix.** The prefix must be deterministic, so while the cache is on every module
  that runs before block ``N`` (embedding dropout included, found on the first step) is put in
  eval mode at each step. This is the documented behaviour of ``cache_frozen_prefix``: dropout is
  off in the frozen prefix, on in the trained top. The uncached reference (``replay=False``,
  ``frozen_prefix_eval``) does the same, so the two runs compute the same function.
- **What stays exact.** States are stored in the dtype the block returned (float32, or bfloat16
  under a bf16 model or autocast) and replayed in that dtype: nothing is rounded on the way. The
  prefix draws no random numbers (eval mode), so the trained top's dropout masks are the same
  as in the uncached run. What may differ in the last bits is the arithmetic itself: a row's
  prefix is computed in a sub-batch (the new rows of its batch, at the batch's padded width),
  and a kernel may sum in another order for another batch shape. On CPU, float32, one thread,
  the tests find replayed runs bit-identical to uncached ones and deepened levels bit-identical
  to levels recorded from scratch; elsewhere expect agreement to rounding.
- **Where.** In memory by default; ``directory=`` spills to one append-only float file plus an
  index, for corpora whose states do not fit in RAM. The files are removed when the run ends
  (``release``: ``FreezeTrainer.train`` calls it on success, error or interrupt); files that a
  killed earlier run of the same output_dir left on this machine are removed when the next one
  starts; other files in the folder are never touched.
- **Depth changes.** ``refresh()`` recomputes ``N`` from ``requires_grad`` (see deepening above).
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

    def discard(self, key: bytes) -> None:
        states = self.entries.pop(key, None)
        if states is not None:
            self.nbytes -= states.numel() * states.element_size()


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

    def discard(self, key: bytes) -> None:
        """Forget an entry (its bytes stay in the file until the store closes)."""
        self.index.pop(key, None)

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
        self.levels: dict[int, _MemoryStore | _DiskStore] = {}  # frozen depth -> its states
        self.prefix_modules: list[nn.Module] | None = None
        self.stats = {"hits": 0, "records": 0, "rebuilds": 0, "record_seconds": 0.0,
                      "rows_filled": 0, "rows_deepened": 0}
        if frozen_prefix_depth(model, anat) == 0 and not wait_for_prefix:
            raise FreezePolicyError(
                f"cache_frozen_prefix needs frozen embeddings and at least one frozen block at the "
                f"bottom of {anat.model_class}; the current trainable set has no frozen "
                "prefix (policies such as bottom_n, all_but_head or gradual_unfreeze have one)"
            )
        self.refresh()

    # -- depth ----------------------------------------------------------------------------
    def refresh(self) -> bool:
        """Recompute the frozen depth. Returns True if it changed.

        Deeper: the levels kept so far stay (they are the inputs of the newly frozen blocks).
        Shallower: the levels deeper than the new depth are dropped. When a schedule opens the
        whole prefix (gradual unfreezing's last stage), the cache switches itself off: ``step``
        then runs the model untouched. ``stats["rebuilds"]`` counts the depth changes.
        """
        depth = frozen_prefix_depth(self.model, self.anat)
        if depth == self.depth and (self.store is not None or depth == 0):
            return False
        if self.levels:
            self.stats["rebuilds"] += 1
        for level in [level for level in self.levels if level > depth]:
            self._close_level(level)
        self._last_nbytes = 0
        self.depth = depth
        if depth and depth not in self.levels:
            self.levels[depth] = (_DiskStore(self.directory, self.owner) if self.directory
                                  else _MemoryStore())
        self.prefix_modules = None
        return True

    @property
    def store(self):
        """The level of the current depth (None when the cache is off)."""
        return self.levels.get(self.depth) if self.depth else None

    @property
    def nbytes(self) -> int:
        if not self.levels:  # released at the end of a run: what it held then
            return self._last_nbytes
        return sum(store.nbytes for store in self.levels.values())

    def close(self) -> None:
        for level in list(self.levels):
            self._close_level(level)

    def _close_level(self, level: int) -> None:
        store = self.levels.pop(level)
        if isinstance(store, _DiskStore):
            store.close()

    def release(self) -> None:
        """Drop the cached states and remove the cache file (the end of a run: success, error or
        interrupt); ``depth``, ``nbytes`` and ``stats`` keep the run's figures, and the next
        training step (``refresh``) starts the cache again."""
        self._last_nbytes = self.nbytes
        self.close()  # depth and the counters stay, as the run's figures

    # -- one training or evaluation step -----------------------------------------------------
    @contextmanager
    def step(self, inputs: dict) -> Iterator[str]:
        """Run the model's forward inside this context; yields "replay" (every example was
        cached), "record" (some were filled first, then the batch replayed; with
        ``replay=False``: the prefix ran inside the forward) or "off"."""
        if self.depth == 0:
            yield "off"
            return
        keys, positions = self._keys(inputs)
        handles, patched = [], []
        if self.prefix_modules is None:
            handles.extend(self._learn_prefix_modules(
                self.modules[self.anat.block_modules[self.depth - 1]]))
        for module in self.prefix_modules or ():
            module.eval()
        mode, started = "record", time.perf_counter()
        try:
            if self.replay:
                store = self.levels[self.depth]
                missing = [row for row, key in enumerate(keys) if key not in store]
                if missing:
                    self._fill(inputs, keys, positions, missing)
                else:
                    mode = "replay"
                states = self._batch_states(keys, positions, inputs["input_ids"], self.depth)
                handles.append(self._inject(states, self.depth, patched))
            self.stats["hits" if mode == "replay" else "records"] += 1
            yield mode
        finally:
            for handle in handles:
                handle.remove()
            for block in patched:
                del block.forward
            if mode == "record":
                self.stats["record_seconds"] += time.perf_counter() - started

    def _inject(self, states: torch.Tensor, level: int, patched: list) -> object:
        """Skip blocks ``0..level-1`` and hand ``states`` on as block ``level-1``'s output."""
        for name in self.anat.block_modules[:level]:
            block = self.modules[name]
            block.forward = _identity
            patched.append(block)
        return self.modules[self.anat.block_modules[level - 1]].register_forward_hook(
            lambda *_: states)

    def _fill(self, inputs: dict, keys: list, positions: list, rows: list[int]) -> None:
        """Store the current level's states of ``rows``: each from the deepest shallower level
        that has it (deepening), else from the embeddings; the prefix runs on those rows only."""
        store = self.levels[self.depth]
        groups: dict[int, list[int]] = {}
        seen: set[bytes] = set()
        for row in rows:
            if keys[row] in seen:  # a duplicate example: filled once
                continue
            seen.add(keys[row])
            level = max((lvl for lvl in self.levels if lvl < self.depth and keys[row] in
                         self.levels[lvl]), default=0)
            groups.setdefault(level, []).append(row)
        batch = inputs["input_ids"].shape[0]
        last = self.modules[self.anat.block_modules[self.depth - 1]]
        for level, members in sorted(groups.items()):
            index = torch.tensor(members, device=inputs["input_ids"].device)
            sub = {name: value.index_select(0, index) for name, value in inputs.items()
                   if name != "labels" and torch.is_tensor(value) and value.dim() > 0
                   and value.shape[0] == batch}
            sub_keys = [keys[row] for row in members]
            sub_positions = [positions[row] for row in members]
            handles, patched = [], []
            if level:
                states = self._batch_states(sub_keys, sub_positions, sub["input_ids"], level)
                handles.append(self._inject(states, level, patched))

            def record(_module, _args, output, sub_keys=sub_keys, sub_positions=sub_positions):
                hidden = output[0] if isinstance(output, tuple) else output
                for row, key in enumerate(sub_keys):
                    if key not in store:
                        store.put(key, hidden[row][sub_positions[row]].detach().cpu().clone())
                raise _PrefixDone

            handles.append(last.register_forward_hook(record))
            try:
                with torch.no_grad():
                    self.model(**sub)
            except _PrefixDone:
                pass
            finally:
                for handle in handles:
                    handle.remove()
                for block in patched:
                    del block.forward
            self.stats["rows_filled"] += len(members)
            if level:  # the deeper entry replaces the shallower one
                self.stats["rows_deepened"] += len(members)
                for key in sub_keys:
                    self.levels[level].discard(key)
                if not len(self.levels[level]):
                    self._close_level(level)

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

    def _batch_states(self, keys, positions, ids: torch.Tensor, level: int) -> torch.Tensor:
        rows = [self.levels[level].get(key) for key in keys]
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


class _PrefixDone(Exception):
    """Raised by the fill's hook on the last frozen block: the rest of the forward is not
    needed."""
