"""Where the embeddings, the stacks of transformer blocks and the head are, for any HF model.

The anatomy is read off the model itself, not from a table of architecture names:

1. **Blocks and stacks.** A stack is an ``nn.ModuleList`` whose entries are all, or all hold, a
   block class transformers lists in ``_no_split_modules`` (several classes allowed), or a
   ``nn.ModuleList`` of identical modules whose length is a depth the config states
   (``num_hidden_layers``, ``n_layer``, ``num_layers``, ``n_layers``, ``encoder_layers``,
   ``decoder_layers`` or ``num_decoder_layers``, of the config or of any
   sub-config such as ``text_config`` / ``vision_config``); its entries are the blocks, bottom
   first. A list nested inside another candidate (experts, sub-layers) is not a stack; when
   several candidates remain, those without a 2-D weight (a convolutional feature extractor) are
   dropped. When the config names no depth, the longest ModuleList of identical modules is taken.
   Pass ``blocks=`` (a ModuleList's name, or a list of module names, bottom first) to override:
   the model is then one stack of exactly those blocks.
2. **Order.** Every other parameter is placed by *when it is first used* in one forward pass on a
   tiny dummy input (traced with a ``TorchFunctionMode``; the model is put in eval mode and under
   ``no_grad`` for the trace and restored afterwards). The trace checks its own evidence: every
   block must be entered, in order, through its module call (forward pre-hooks). With one stack:

   - used before the first block runs, and registered before the blocks: ``embeddings``
     (token/position/type embeddings, embedding norms and projections, ViT patch embeddings, a
     speech model's convolutional feature encoder);
   - used before or while the blocks run but registered after them or between them: ``shared``
     (relative-position tables read by every block, as in DeBERTa-v2 and MPNet);
   - used after the last block: ``head`` (final norm, pooler, classifier / score / lm_head).

   A parameter the trace never sees, or every parameter when the forward cannot run on a dummy
   input (an unknown input type, a model on the meta device) or the evidence is missing (blocks
   called as ``layer.forward(...)``, as SqueezeBERT does, bypass the hooks), is placed by
   registration order: before the blocks -> ``embeddings``, after them -> ``head``, between ->
   ``shared``. ``Anatomy.trace`` says which way the groups were found.
3. **Several stacks** (encoder and decoder; text and vision towers; a vision tower and a language
   model; ``freeze_policies.structure.stacks``). Each stack owns the parameters under its *root*,
   the highest module holding its block list and no other stack's; the stack's name is the root's
   last name (``encoder``, ``decoder``, ``text_model``, ``vision_model``, ``vision_tower``,
   ``language_model``). Within its root a parameter first used before the stack's first block is
   that stack's ``embeddings``, while its blocks run its ``shared``, after its last block its
   ``top`` (final norm, pooling head). The trace also follows data: a stack whose block outputs
   reach another stack's blocks *feeds* it (an encoder feeds its decoder, a vision tower its
   language model). The top of a stack that feeds nothing is part of the model's ``head``.
   Parameters under no stack's root are placed by first use: before every stack -> ``embeddings``
   (T5's and BART's ``shared`` table), while a stack runs -> ``shared``, after a stack and read by
   a later stack's blocks -> ``projector`` (LLaVA's ``multi_modal_projector``), otherwise ->
   ``head`` (``lm_head``, CLIP's projections and ``logit_scale``). A model with several stacks
   whose forward cannot be traced, or whose blocks are not all entered in order, is read from
   what transformers records (``structure.metadata``: ``get_encoder(modality=...)`` /
   ``get_decoder()`` towers, input and output embeddings; the towers feed the decoder, and
   within a root registration order places parameters); where transformers names no tower for
   some stack (CLIP's text tower), it is refused: there is no safe guess of which tower a
   parameter belongs to. ``anatomy(source=)`` forces one way. Block lists under one tower are one
   stack (Mllama's local and global vision transformers).

   ``Anatomy.stacks`` holds each stack's view; the flat fields (``embeddings``, ``blocks``,
   ``shared``, ``head``) still cover every parameter once: the blocks of all stacks in forward
   order, every stack's embeddings in ``embeddings``, projector and the tops of stacks that feed
   another in ``shared``. ``Anatomy.parts()`` names the per-stack groups
   (``encoder.block.0``, ``projector`` ...).
4. **Feature encoder.** The convolutions that read the raw input first (wav2vec2's and HuBERT's
   ``feature_extractor``, Whisper's ``conv1``/``conv2``, a ViT's patch projection), with the norms
   inside the same modules, are ``Stack.features``: the first parameters of the stack's embeddings
   in forward order that belong to convolution modules, up to the first other parameter.
5. **Tied weights.** ``named_parameters()`` lists a tied tensor once, under its first name (for a
   causal LM with tied embeddings that is the input embedding). Its other names are kept in
   ``Anatomy.tied`` (alias -> listed name) and placed in a group by where the alias's module sits,
   so that policies can detect when they would train one name of the tensor and freeze another
   (T5 and BART share one table between encoder, decoder and LM head).

ALBERT (one layer shared by all depths) has no per-depth parameters to freeze and is refused.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from freeze_policies.errors import FreezePolicyError
from freeze_policies.structure import metadata
from freeze_policies.structure import (
    trace as tracing,  # called through the module: a test counts traces
)
from freeze_policies.structure.block_lists import (
    discover_block_lists,
    feature_params,
    module_lists,
    norm_params,
    tied_aliases,
)
from freeze_policies.structure.layout import Anatomy, Stack
from freeze_policies.structure.roles import block_parts
from freeze_policies.structure.stacks import several_stacks

__all__ = ["Anatomy", "Stack", "anatomy", "check_blocks_option"]


def check_blocks_option(blocks) -> None:
    """``blocks=`` must be None, a ModuleList's name, or a list of module names."""
    if blocks is None or isinstance(blocks, str):
        return
    if isinstance(blocks, (list, tuple)) and all(isinstance(b, str) for b in blocks):
        return
    raise FreezePolicyError(
        f"blocks={blocks!r} must be a ModuleList's name (for example 'encoder.layer') or a list "
        "of module names, bottom block first"
    )


SOURCES = ("auto", "trace", "structure")


def anatomy(
    model: nn.Module, blocks: str | list[str] | None = None, *, source: str = "auto"
) -> Anatomy:
    """Group the parameters of ``model`` into embeddings, blocks, head (and shared), per stack.

    See the module doc. ``blocks`` overrides the discovery: the name of a ModuleList, or a list
    of module names bottom first (the model is then one stack). ``source``: ``"auto"`` (trace,
    else transformers' metadata), ``"trace"`` (refuse a model with several stacks the dummy
    forward cannot trace) or ``"structure"`` (metadata and registration order only, no forward).
    Raises ``FreezePolicyError`` when the blocks cannot be found, or several stacks can be placed
    neither by the trace nor by the metadata.
    """
    check_blocks_option(blocks)
    if source not in SOURCES:
        raise FreezePolicyError(f"source={source!r} is not one of {', '.join(SOURCES)}")
    named_modules = dict(model.named_modules())
    if blocks is None:
        lists = discover_block_lists(model, named_modules)
        block_lists = [[f"{name}.{i}" for i in range(len(named_modules[name]))] for name in lists]
        lists, block_lists = _merge_by_tower(model, lists, block_lists)
    elif isinstance(blocks, str):
        if not isinstance(named_modules.get(blocks), nn.ModuleList):
            raise FreezePolicyError(
                f"blocks={blocks!r} is not a ModuleList of {type(model).__name__}; "
                f"ModuleLists: {', '.join(module_lists(named_modules)) or 'none'}"
            )
        lists = [blocks]
        block_lists = [[f"{blocks}.{i}" for i in range(len(named_modules[blocks]))]]
    else:
        missing = [b for b in blocks if b not in named_modules]
        if missing or not blocks:
            raise FreezePolicyError(
                f"blocks= names no module of {type(model).__name__}: {missing or 'empty list'}"
            )
        lists = ["blocks"]
        block_lists = [list(blocks)]

    param_names = [name for name, _ in model.named_parameters()]
    if not param_names:
        raise FreezePolicyError(f"{type(model).__name__} has no parameters to freeze")
    all_blocks = [module for modules in block_lists for module in modules]
    block_params: dict[str, list[str]] = {module: [] for module in all_blocks}
    block_of: dict[str, str] = {}
    for name in param_names:
        for prefix in all_blocks:
            if name.startswith(prefix + "."):
                block_params[prefix].append(name)
                block_of[name] = prefix
                break
    empty = [module for module, names in block_params.items() if not names]
    if empty:
        raise FreezePolicyError(
            f"blocks {empty} of {type(model).__name__} own no parameters of their own "
            "(weights shared across depths, as in ALBERT, cannot be frozen per block); "
            "pass blocks=[...] naming modules that own their weights"
        )
    if len(block_lists) == 1:
        found = _single_stack(
            model,
            named_modules,
            lists[0],
            block_lists[0],
            block_params,
            explicit=blocks is not None and not isinstance(blocks, str),
            source=source,
        )
    else:
        found = several_stacks(
            model, named_modules, lists, block_lists, block_params, block_of, source=source
        )
    parts = block_parts(model, named_modules, found.block_modules)
    return dataclasses.replace(found, block_parts=parts)


def _merge_by_tower(model, lists, block_lists):
    """Block lists under one tower transformers names (``structure.metadata.towers``) form one
    stack, in registration order: Mllama's vision ``transformer`` then ``global_transformer``.
    The merged stack is named as a list directly under the tower (``<tower>.layers``)."""
    if len(lists) < 2:
        return lists, block_lists
    found = list(metadata.towers(model).values())
    tower_of = [next((t for t in found if name.startswith(t + ".")), None) for name in lists]
    out_lists, out_blocks = [], []
    for k, name in enumerate(lists):
        tower = tower_of[k]
        together = [j for j, t in enumerate(tower_of) if t is not None and t == tower]
        if tower is None or len(together) < 2:
            out_lists.append(name)
            out_blocks.append(block_lists[k])
        elif together[0] == k:
            out_lists.append(f"{tower}.layers")
            out_blocks.append([module for j in together for module in block_lists[j]])
    return out_lists, out_blocks


# -- one stack: the flat anatomy ----------------------------------------------------------------


def _single_stack(
    model, named_modules, list_name, block_modules, block_params, explicit, source="auto"
):
    param_names = [name for name, _ in model.named_parameters()]
    blocks = [block_params[module] for module in block_modules]
    in_block = {name for names in blocks for name in names}
    all_names = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    first_block = min(all_names.index(names[0]) for names in blocks)
    last_block = max(all_names.index(names[-1]) for names in blocks)

    def by_position(name: str) -> str:
        position = all_names.index(name)
        if position < first_block:
            return "embeddings"
        return "head" if position > last_block else "shared"

    if source == "structure":
        trace = tracing.Trace(False, "registration order (source='structure')")
    else:
        trace = tracing.trace(model, named_modules, [block_modules])
    groups: dict[str, list[str]] = {"embeddings": [], "shared": [], "head": []}
    for name in param_names:
        if name in in_block:
            continue
        placed = by_position(name)
        phase = trace.phase(name, 0) if trace.ok else None
        if phase == "after":
            placed = "head"
        elif phase == "during":
            placed = "shared"
        elif phase == "before":
            placed = "embeddings" if placed == "embeddings" else "shared"
        groups[placed].append(name)

    tied = tied_aliases(model)
    tied_groups = {alias: by_position(alias) for alias in tied}
    stack_name = "blocks" if explicit else _single_stack_name(list_name)
    stack = Stack(
        name=stack_name,
        module="" if explicit else list_name.rpartition(".")[0],
        embeddings=groups["embeddings"],
        blocks=blocks,
        block_modules=list(block_modules),
        shared=groups["shared"],
        features=feature_params(model, named_modules, groups["embeddings"], trace),
    )
    return Anatomy(
        embeddings=groups["embeddings"],
        blocks=blocks,
        head=groups["head"],
        shared=groups["shared"],
        block_modules=list(block_modules),
        norms=frozenset(norm_params(named_modules)),
        tied=tied,
        tied_groups=tied_groups,
        model_class=type(model).__name__,
        traced=trace.ok,
        stacks=(stack,),
        tied_parts={
            alias: group if group == "head" else f"{stack_name}.{group}"
            for alias, group in tied_groups.items()
        },
        trace=trace.note,
        head_unread=[
            name for name in groups["head"]
            if trace.ok and trace.output_reads is not None and name not in trace.output_reads
        ],
    )


def _single_stack_name(list_name: str) -> str:
    parent = list_name.rpartition(".")[0]
    return (parent or list_name).rsplit(".", 1)[-1]
