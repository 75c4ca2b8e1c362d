"""What transformers itself records about a model's structure, read without running it.

- **Block classes.** Every ``PreTrainedModel`` lists in ``_no_split_modules`` the classes that
  accelerate's device maps keep whole: its transformer blocks (some models list a module inside
  the block instead, as Idefics3 lists its vision attention). A ``ModuleList`` whose every entry
  is, or contains, such a class is a stack of blocks, even when its entries are of several
  classes (Mllama's language model interleaves self- and cross-attention layers).
- **Towers.** ``get_encoder(modality="image")`` / ``("audio")`` return a vision-language or
  speech model's tower (``vision_tower``, ``visual``, ``vision_model``, ``audio_tower`` ...),
  ``get_encoder()`` an encoder-decoder's encoder and ``get_decoder()`` its decoder or a
  vision-language model's language model (only for a model that generates: CLIP's
  ``get_decoder()`` returns its text tower). A tower feeds the decoder.
- **Embeddings.** ``get_input_embeddings()`` / ``get_output_embeddings()``.

``structure.stacks`` uses these when a model with several stacks cannot be traced on a dummy
input, and ``tower_roles`` names each stack's role for the vision-language presets.
"""

from __future__ import annotations

from torch import nn

ROLES = ("vision", "audio", "encoder", "decoder")
"""A stack's role: under the image tower, the audio tower, the (text) encoder, the decoder."""


def no_split_classes(model: nn.Module) -> set[str]:
    """The class names in ``_no_split_modules`` of the model and of every sub-model in it."""
    out: set[str] = set()
    for module in model.modules():
        listed = getattr(type(module), "_no_split_modules", None) or getattr(
            module, "_no_split_modules", None
        )
        if isinstance(listed, (list, tuple, set)):
            out |= {name for name in listed if isinstance(name, str)}
    return out


def metadata_block_lists(named_modules: dict[str, nn.Module], classes: set[str]) -> list[str]:
    """The outermost ModuleLists whose every entry is, or contains, a no-split class."""
    if not classes:
        return []

    def holds(module: nn.Module) -> bool:
        return any(type(inner).__name__ in classes for inner in module.modules())

    found = [
        name
        for name, module in named_modules.items()
        if isinstance(module, nn.ModuleList)
        and len(module) > 0
        and any(True for _ in module.parameters())
        and all(holds(child) for child in module)
    ]
    return [name for name in found if not any(name.startswith(o + ".") for o in found)]


def _module_name(model: nn.Module, module) -> str | None:
    if not isinstance(module, nn.Module) or module is model:
        return None
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    return None


def _call(getter, *args, **kwargs):
    try:
        return getter(*args, **kwargs)
    except (AttributeError, NotImplementedError, TypeError, ValueError):
        return None


def towers(model: nn.Module) -> dict[str, str]:
    """Role -> module name of each tower transformers' getters return (absent roles left out).

    ``vision``: ``get_encoder(modality="image")``; ``audio``: ``get_encoder(modality="audio")``;
    ``encoder``: ``get_encoder()``; ``decoder``: ``get_decoder()``. A getter that returns the
    model itself (a base model with no such tower) names nothing.
    """
    out: dict[str, str] = {}
    get_encoder = getattr(model, "get_encoder", None)
    get_decoder = getattr(model, "get_decoder", None)
    if callable(get_encoder):
        for role, modality in (("vision", "image"), ("audio", "audio")):
            name = _module_name(model, _call(get_encoder, modality=modality))
            if name is not None:
                out[role] = name
        name = _module_name(model, _call(get_encoder))
        if name is not None and name not in out.values():
            out["encoder"] = name
    if callable(get_decoder) and _generates(model):
        name = _module_name(model, _call(get_decoder))
        if name is not None and name not in out.values():
            out["decoder"] = name
    return out


def _generates(model: nn.Module) -> bool:
    """Whether the model generates (a decoder's output is what it predicts): CLIP's and SigLIP's
    ``get_decoder()`` return their text tower, which decodes nothing."""
    config = getattr(model, "config", None)
    can_generate = getattr(model, "can_generate", None)
    generates = bool(_call(can_generate)) if callable(can_generate) else False
    return generates or bool(getattr(config, "is_encoder_decoder", False))


def stack_roles(model: nn.Module, lists: list[str]) -> list[str | None]:
    """Each block list's role: the tower (see ``towers``) whose module holds it, else None."""
    found = towers(model)
    out: list[str | None] = []
    for name in lists:
        role = next(
            (r for r in ROLES if r in found and name.startswith(found[r] + ".")),
            None,
        )
        out.append(role)
    return out


def embedding_params(model: nn.Module) -> tuple[set[int], set[int]]:
    """Ids of the input and the output embeddings' parameters (empty where a getter fails)."""
    ids = []
    for getter in ("get_input_embeddings", "get_output_embeddings"):
        module = _call(getattr(model, getter, lambda: None))
        ids.append({id(p) for p in module.parameters()} if isinstance(module, nn.Module) else set())
    return ids[0], ids[1]
