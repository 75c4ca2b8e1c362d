"""Facts read off a model's modules: which ModuleLists are its stacks of blocks (checked against
the depths its config states), which parameters are norms, which names are tied aliases, and
which parameters form a feature encoder. ``freeze_policies.structure.discover`` assembles them."""

from __future__ import annotations

import re

from torch import nn

from freeze_policies.errors import FreezePolicyError
from freeze_policies.structure.metadata import metadata_block_lists, no_split_classes
from freeze_policies.structure.trace import Trace

DEPTH_ATTRIBUTES = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
STACK_DEPTH_ATTRIBUTES = (
    *DEPTH_ATTRIBUTES,
    "encoder_layers",
    "decoder_layers",
    "num_decoder_layers",
)
NORM_CLASS = re.compile(r"norm", re.IGNORECASE)
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)


def _configs(config) -> list:
    """The config and its sub-configs (text_config, vision_config, encoder, decoder ...)."""
    out, todo = [], [config]
    while todo:
        current = todo.pop(0)
        if current is None or any(current is seen for seen in out):
            continue
        out.append(current)
        for value in vars(current).values():
            if hasattr(value, "to_dict") and hasattr(value, "model_type"):
                todo.append(value)
    return out


def _config_depths(model: nn.Module) -> set[int]:
    config = getattr(model, "config", None)
    depths = set()
    for candidate in _configs(config) if config is not None else []:
        for attribute in STACK_DEPTH_ATTRIBUTES:
            value = getattr(candidate, attribute, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                depths.add(value)
    return depths


def module_lists(named_modules: dict[str, nn.Module]) -> list[str]:
    return [f"{n} ({len(m)})" for n, m in named_modules.items() if isinstance(m, nn.ModuleList)]


def _has_matrix(module: nn.Module) -> bool:
    return any(param.dim() == 2 for param in module.parameters())


def discover_block_lists(model: nn.Module, named_modules: dict[str, nn.Module]) -> list[str]:
    model_name = type(model).__name__
    advice = "pass blocks='<ModuleList name>' or blocks=[module names, bottom first]"
    config = getattr(model, "config", None)
    depths = _config_depths(model)
    lists = {
        name: module
        for name, module in named_modules.items()
        if isinstance(module, nn.ModuleList)
        and len(module) > 0
        and len({type(child) for child in module}) == 1
        and any(True for _ in module.parameters())
    }
    if depths:
        candidates = [name for name, module in lists.items() if len(module) in depths]
    else:
        longest = max((len(m) for m in lists.values()), default=0)
        candidates = [name for name, module in lists.items() if len(module) == longest]
    # The block classes transformers records (``_no_split_modules``) name stacks too, including
    # lists of several block classes (Mllama's self- and cross-attention layers).
    recorded = metadata_block_lists(named_modules, no_split_classes(model))
    if recorded:
        lists.update({name: named_modules[name] for name in recorded})
        wanted = set(candidates) | set(recorded)
        candidates = [name for name in named_modules if name in wanted]
    # A ModuleList nested inside a candidate block (experts, sub-layers) is not a block list.
    outermost = [c for c in candidates if not any(c.startswith(o + ".") for o in candidates)]
    if len(outermost) > 1 and depths:
        with_matrix = [name for name in outermost if _has_matrix(lists[name])]
        outermost = with_matrix or outermost
    if len(outermost) > 1 and not depths:
        outermost = []  # several lists of the same length and no config to tell: do not guess
    if not outermost:
        found = ", ".join(module_lists(named_modules)) or "none"
        shown = ", ".join(map(str, sorted(depths)))
        wanted = f"of length {shown} (the configured depth)" if depths else "of identical modules"
        problem = "several ModuleLists" if candidates else "no ModuleList"
        hint = ""
        depth = next(iter(sorted(depths)), None)
        if depth and getattr(config, "num_hidden_groups", depth) != getattr(
            config, "num_hidden_layers", depth
        ):
            hint = " (its layers are shared across depths, as in ALBERT)"
        raise FreezePolicyError(
            f"cannot find the transformer blocks of {model_name}{hint}: {problem} {wanted} "
            f"(ModuleLists: {found}); {advice}"
        )
    return outermost


def norm_params(named_modules: dict[str, nn.Module]) -> list[str]:
    out = []
    for module_name, module in named_modules.items():
        if is_norm(module):
            prefix = f"{module_name}." if module_name else ""
            out.extend(prefix + name for name, _ in module.named_parameters(recurse=False))
    return out


def is_norm(module: nn.Module) -> bool:
    return isinstance(module, NORM_TYPES) or bool(NORM_CLASS.search(type(module).__name__))


def tied_aliases(model: nn.Module) -> dict[str, str]:
    listed: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in listed:
            aliases[name] = listed[id(param)]
        else:
            listed[id(param)] = name
    return aliases


def feature_params(model, named_modules, embeddings: list[str], trace: Trace) -> list[str]:
    """The convolutions first used in ``embeddings`` (with norms inside the same modules); without
    a trace, the first ones registered."""
    if trace.ok:
        used = sorted((n for n in embeddings if n in trace.first_use), key=trace.first_use.get)
    else:  # registration order, from the first convolution's parameters
        convs = [
            n for n in embeddings
            if isinstance(named_modules.get(n.rpartition(".")[0]), nn.modules.conv._ConvNd)
        ]
        used = embeddings[embeddings.index(convs[0]):] if convs else []
    conv_parents: set[str] = set()
    out = []
    for name in used:
        module_name = name.rpartition(".")[0]
        module = named_modules.get(module_name)
        parent = module_name.rpartition(".")[0]
        if isinstance(module, nn.modules.conv._ConvNd):
            conv_parents.add(parent)
        elif not (module is not None and is_norm(module) and parent in conv_parents):
            break
        out.append(name)
    # Parameters of those modules that the trace did not see (a weight-norm's g, say).
    modules = {name.rpartition(".")[0] for name in out}
    out += [n for n in embeddings if n not in out and n.rpartition(".")[0] in modules]
    return out
