"""Where the embeddings, the transformer blocks and the head are, for any Hugging Face model.

The anatomy is read off the model itself, not from a table of architecture names:

1. **Blocks.** The ``nn.ModuleList`` whose length is the configured depth (``num_hidden_layers``,
   ``n_layer``, ``num_layers`` or ``n_layers`` of the config) holds the blocks, bottom first. When
   the config names no depth, the longest ModuleList of identical modules is taken. Pass
   ``blocks=`` (a ModuleList's name, or a list of module names, bottom first) when the discovery
   cannot decide.
2. **Order.** Every other parameter is placed by *when it is first used* in one forward pass on a
   tiny dummy input (traced with a ``TorchFunctionMode``; the model is put in eval mode and under
   ``no_grad`` for the trace and restored afterwards):

   - used before the first block runs, and registered before the blocks: ``embeddings``
     (token/position/type embeddings, embedding norms and projections, ViT patch embeddings);
   - used before or while the blocks run but registered after them or between them: ``shared``
     (relative-position tables read by every block, as in DeBERTa-v2 and MPNet);
   - used after the last block: ``head`` (final norm, pooler, classifier / score / lm_head).

   A parameter the trace never sees, or every parameter when the forward cannot run on a dummy
   input (an unknown input type, a model on the meta device), is placed by registration order:
   before the blocks -> ``embeddings``, after them -> ``head``, between -> ``shared``.
3. **Tied weights.** ``named_parameters()`` lists a tied tensor once, under its first name (for a
   causal LM with tied embeddings that is the input embedding). Its other names are kept in
   ``Anatomy.tied`` (alias -> listed name) and placed in a group by registration order, so that
   policies can detect when they would train one name of the tensor and freeze another.

Encoder-decoder models (T5, BART) are refused: which decoder block is "above" which encoder block
is a choice the user should make; pass ``blocks=[...]`` in the order you want. ALBERT (one layer
shared by all depths) has no per-depth parameters to freeze and is refused with the same advice.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from freeze_policies.errors import FreezePolicyError

DEPTH_ATTRIBUTES = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
NORM_CLASS = re.compile(r"norm", re.IGNORECASE)


@dataclass(frozen=True)
class Anatomy:
    """Parameter names of a model, grouped as ``model.named_parameters()`` gives them.

    ``embeddings``, every ``blocks[i]``, ``head`` and ``shared`` together cover every parameter
    exactly once. ``block_modules[i]`` is the module name of block ``i``. ``norms`` are the names
    of parameters that belong to normalisation modules (for ``norm_only``). ``tied`` maps each
    extra name of a tied tensor to the name under which it is listed; ``tied_groups`` says which
    group each extra name would belong to.
    """

    embeddings: list[str]
    blocks: list[list[str]]
    head: list[str]
    shared: list[str] = field(default_factory=list)
    block_modules: list[str] = field(default_factory=list)
    norms: frozenset[str] = frozenset()
    tied: dict[str, str] = field(default_factory=dict)
    tied_groups: dict[str, str] = field(default_factory=dict)
    model_class: str = ""
    traced: bool = False

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def groups(self) -> dict[str, list[str]]:
        """Every group by name, in forward order: embeddings, block.0 .. block.L-1, shared, head."""
        out = {"embeddings": self.embeddings}
        out.update({f"block.{i}": names for i, names in enumerate(self.blocks)})
        if self.shared:
            out["shared"] = self.shared
        out["head"] = self.head
        return out

    def names(self) -> list[str]:
        return [name for names in self.groups().values() for name in names]

    def group_of(self, name: str) -> str:
        for group, names in self.groups().items():
            if name in names:
                return group
        if name in self.tied_groups:
            return self.tied_groups[name]
        raise KeyError(name)


def anatomy(model: nn.Module, blocks: str | list[str] | None = None) -> Anatomy:
    """Group the parameters of ``model`` into embeddings, blocks, head (and shared); see module doc.

    ``blocks`` overrides the discovery: the name of a ModuleList, or a list of module names
    bottom first. Raises ``FreezePolicyError`` when the blocks cannot be found.
    """
    named_modules = dict(model.named_modules())
    if blocks is None:
        block_modules = _discover_blocks(model, named_modules)
    elif isinstance(blocks, str):
        if not isinstance(named_modules.get(blocks), nn.ModuleList):
            raise FreezePolicyError(
                f"blocks={blocks!r} is not a ModuleList of {type(model).__name__}; "
                f"ModuleLists: {', '.join(_module_lists(named_modules)) or 'none'}"
            )
        block_modules = [f"{blocks}.{i}" for i in range(len(named_modules[blocks]))]
    else:
        missing = [b for b in blocks if b not in named_modules]
        if missing or not blocks:
            raise FreezePolicyError(
                f"blocks= names no module of {type(model).__name__}: {missing or 'empty list'}"
            )
        block_modules = list(blocks)

    param_names = [name for name, _ in model.named_parameters()]
    if not param_names:
        raise FreezePolicyError(f"{type(model).__name__} has no parameters to freeze")
    block_params: list[list[str]] = [[] for _ in block_modules]
    block_of: dict[str, int] = {}
    for name in param_names:
        for i, prefix in enumerate(block_modules):
            if name.startswith(prefix + "."):
                block_params[i].append(name)
                block_of[name] = i
                break
    empty = [block_modules[i] for i, names in enumerate(block_params) if not names]
    if empty:
        raise FreezePolicyError(
            f"blocks {empty} of {type(model).__name__} own no parameters of their own "
            "(weights shared across depths, as in ALBERT, cannot be frozen per block); "
            "pass blocks=[...] naming modules that own their weights"
        )

    # Registration order: where each non-block name sits relative to the blocks.
    all_names = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    first_block = min(all_names.index(names[0]) for names in block_params)
    last_block = max(all_names.index(names[-1]) for names in block_params)

    def by_position(name: str) -> str:
        position = all_names.index(name)
        if position < first_block:
            return "embeddings"
        return "head" if position > last_block else "shared"

    first_use = _trace_first_use(model, named_modules, block_modules)
    groups: dict[str, list[str]] = {"embeddings": [], "shared": [], "head": []}
    for name in param_names:
        if name in block_of:
            continue
        placed = by_position(name)
        phase = first_use.get(name) if first_use is not None else None
        if phase == "after":
            placed = "head"
        elif phase == "during":
            placed = "shared"
        elif phase == "before":
            placed = "embeddings" if placed == "embeddings" else "shared"
        groups[placed].append(name)

    tied = _tied_aliases(model)
    return Anatomy(
        embeddings=groups["embeddings"],
        blocks=block_params,
        head=groups["head"],
        shared=groups["shared"],
        block_modules=block_modules,
        norms=frozenset(_norm_params(named_modules)),
        tied=tied,
        tied_groups={alias: by_position(alias) for alias in tied},
        model_class=type(model).__name__,
        traced=first_use is not None,
    )


def _config_depth(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    if config is None:
        return None
    for candidate in (config, getattr(config, "text_config", None)):
        for attribute in DEPTH_ATTRIBUTES:
            value = getattr(candidate, attribute, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def _module_lists(named_modules: dict[str, nn.Module]) -> list[str]:
    return [f"{n} ({len(m)})" for n, m in named_modules.items() if isinstance(m, nn.ModuleList)]


def _discover_blocks(model: nn.Module, named_modules: dict[str, nn.Module]) -> list[str]:
    model_name = type(model).__name__
    advice = "pass blocks='<ModuleList name>' or blocks=[module names, bottom first]"
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        raise FreezePolicyError(
            f"{model_name} is an encoder-decoder model: its encoder and decoder blocks have no "
            f"single bottom-to-top order; {advice} "
            f"(ModuleLists: {', '.join(_module_lists(named_modules))})"
        )
    depth = _config_depth(model)
    lists = {
        name: module
        for name, module in named_modules.items()
        if isinstance(module, nn.ModuleList)
        and len(module) > 0
        and len({type(child) for child in module}) == 1
        and any(True for _ in module.parameters())
    }
    if depth is not None:
        candidates = [name for name, module in lists.items() if len(module) == depth]
    else:
        longest = max((len(m) for m in lists.values()), default=0)
        candidates = [name for name, module in lists.items() if len(module) == longest]
    # A ModuleList nested inside a candidate block (experts, sub-layers) is not a block list.
    outermost = [c for c in candidates if not any(c.startswith(o + ".") for o in candidates)]
    if len(outermost) != 1:
        found = ", ".join(_module_lists(named_modules)) or "none"
        wanted = f"of length num_hidden_layers={depth}" if depth else "of identical modules"
        problem = "several ModuleLists" if outermost else "no ModuleList"
        hint = ""
        if depth and getattr(config, "num_hidden_groups", depth) != depth:
            hint = " (its layers are shared across depths, as in ALBERT)"
        raise FreezePolicyError(
            f"cannot find the transformer blocks of {model_name}{hint}: {problem} {wanted} "
            f"(ModuleLists: {found}); {advice}"
        )
    blocks = outermost[0]
    return [f"{blocks}.{i}" for i in range(len(named_modules[blocks]))]


def _norm_params(named_modules: dict[str, nn.Module]) -> list[str]:
    out = []
    for module_name, module in named_modules.items():
        is_norm = isinstance(module, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase))
        if is_norm or NORM_CLASS.search(type(module).__name__):
            prefix = f"{module_name}." if module_name else ""
            out.extend(prefix + name for name, _ in module.named_parameters(recurse=False))
    return out


def _tied_aliases(model: nn.Module) -> dict[str, str]:
    listed: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in listed:
            aliases[name] = listed[id(param)]
        else:
            listed[id(param)] = name
    return aliases


def _dummy_inputs(model: nn.Module) -> dict[str, torch.Tensor] | None:
    config = getattr(model, "config", None)
    first = next(model.parameters())
    input_name = getattr(model, "main_input_name", "input_ids")
    if input_name == "input_ids":
        vocab = getattr(config, "vocab_size", None) or getattr(
            getattr(config, "text_config", None), "vocab_size", 8
        )
        ids = torch.arange(1, 5, device=first.device).clamp(max=vocab - 1).unsqueeze(0)
        return {"input_ids": ids}
    if input_name == "pixel_values" and hasattr(config, "image_size"):
        size = config.image_size
        height, width = (size, size) if isinstance(size, int) else size
        channels = getattr(config, "num_channels", 3)
        shape = (1, channels, height, width)
        return {"pixel_values": torch.zeros(shape, device=first.device, dtype=first.dtype)}
    return None


class _FirstUse(TorchFunctionMode):
    """Records, for each parameter, the phase (before/during/after the blocks) of its first use."""

    def __init__(self, names_by_id: dict[int, str]):
        super().__init__()
        self.names_by_id = names_by_id
        self.phase = "before"
        self.first_use: dict[str, str] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        for value in tree_flatten((args, kwargs or {}))[0]:
            name = self.names_by_id.get(id(value))
            if name is not None and name not in self.first_use:
                self.first_use[name] = self.phase
        return func(*args, **(kwargs or {}))


def _trace_first_use(
    model: nn.Module, named_modules: dict[str, nn.Module], block_modules: list[str]
) -> dict[str, str] | None:
    """Phase of first use of every parameter in one dummy forward, or None if it cannot run."""
    try:
        inputs = _dummy_inputs(model)
    except StopIteration:
        return None
    if inputs is None or next(model.parameters()).device.type == "meta":
        return None
    names_by_id = {id(p): n for n, p in model.named_parameters()}
    recorder = _FirstUse(names_by_id)

    def enter(*_):
        recorder.phase = "during"

    def leave(*_):
        recorder.phase = "after"

    hooks = [
        named_modules[block_modules[0]].register_forward_pre_hook(enter),
        named_modules[block_modules[-1]].register_forward_hook(leave),
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), recorder:
            model(**inputs)
    except Exception:  # any model the dummy input does not fit: fall back to registration order
        return None
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return recorder.first_use
