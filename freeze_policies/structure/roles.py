"""The parts inside a block, found by what each module does, not by one model's attribute names.

Every parameter of a block gets at most one of these roles (``BLOCK_PARTS``), decided in order:

- ``norms``: parameters of normalisation modules (LayerNorm, RMSNorm, ...: ``is_norm``),
  including the query/key norms inside an attention module.
- ``attention``: under a module whose class is an attention (its class name contains
  ``Attention`` or ``Attn``: ``BertAttention``, ``LlamaAttention``, ``T5LayerSelfAttention``,
  ``VisionAttention``, cross-attention too), with its output projection.
- Mixture of experts, when the config states an expert count ``E`` (``num_local_experts``,
  ``num_experts``, ``n_routed_experts``): ``experts`` are modules whose own tensors are stacked
  per expert (leading dimension ``E``, 3-D) or ``ModuleList``s of ``E`` entries; the ``router``
  is a module outside the experts with a 2-D weight of ``E`` rows (a Linear to the expert
  count); ``shared_experts`` are the other modules beside the experts in the same sparse block
  (Qwen2-MoE's ``shared_expert`` and its gate).
- ``mlp``: every other parameter under a module of the block (BERT's ``intermediate`` and
  ``output.dense``, LLaMA's ``mlp``); in a mixture of experts ``mlp`` is the whole sparse block,
  so it also holds the router, the experts and the shared experts.

Parameters registered on the block itself (Mllama's cross-attention gates) have no role.
"""

from __future__ import annotations

import re

from torch import nn

from freeze_policies.structure.block_lists import _configs, is_norm

BLOCK_PARTS = ("attention", "mlp", "norms", "router", "experts", "shared_experts")
ATTENTION_CLASS = re.compile(r"attention|attn", re.IGNORECASE)
EXPERT_COUNTS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")


def expert_counts(model: nn.Module) -> set[int]:
    """The expert counts the config (or a sub-config) states; empty for a dense model."""
    config = getattr(model, "config", None)
    counts = set()
    for candidate in _configs(config) if config is not None else []:
        for attribute in EXPERT_COUNTS:
            value = getattr(candidate, attribute, None)
            if isinstance(value, int) and not isinstance(value, bool) and value > 1:
                counts.add(value)
    return counts


def _is_experts(module: nn.Module, counts: set[int]) -> bool:
    if isinstance(module, nn.ModuleList):
        return len(module) in counts and len({type(child) for child in module}) == 1
    own = list(module.parameters(recurse=False))
    return bool(own) and all(p.dim() >= 3 and p.shape[0] in counts for p in own)


def _is_router(module: nn.Module, counts: set[int]) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(weight, nn.Parameter) and weight.dim() == 2 and weight.shape[0] in counts


def block_parts(
    model: nn.Module, named_modules: dict[str, nn.Module], block_modules: list[str]
) -> dict[str, list[str]]:
    """Role -> parameter names over all ``block_modules`` (see the module doc); roles a model
    lacks are left out. ``mlp`` includes ``router``, ``experts`` and ``shared_experts``."""
    counts = expert_counts(model)
    out: dict[str, list[str]] = {part: [] for part in BLOCK_PARTS}
    for block_name in block_modules:
        block = named_modules[block_name]
        inner = dict(block.named_modules())
        experts = [n for n, m in inner.items() if n and counts and _is_experts(m, counts)]
        experts = [n for n in experts if not any(n.startswith(e + ".") for e in experts)]
        sparse = {e.rpartition(".")[0] for e in experts}  # the modules holding the experts
        for name, _ in block.named_parameters():
            module_name = name.rpartition(".")[0]
            ancestors = [".".join(name.split(".")[:cut]) for cut in range(1, name.count(".") + 1)]
            full = f"{block_name}.{name}"
            if not module_name:
                continue  # registered on the block itself: no role
            if is_norm(inner[module_name]):
                out["norms"].append(full)
                continue
            if any(ATTENTION_CLASS.search(type(inner[a]).__name__) for a in ancestors):
                out["attention"].append(full)
                continue
            out["mlp"].append(full)
            if any(a in experts for a in ancestors):
                out["experts"].append(full)
            elif counts and _is_router(inner[module_name], counts):
                out["router"].append(full)
            elif any(a.startswith(s + ".") for s in sparse for a in ancestors if s):
                out["shared_experts"].append(full)
    return {part: names for part, names in out.items() if names}
