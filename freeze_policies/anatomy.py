"""Where the embeddings, the stacks of transformer blocks and the head are, for any HF model.

The anatomy is read off the model itself, not from a table of architecture names:

1. **Blocks and stacks.** A stack is an ``nn.ModuleList`` of identical modules whose length is a
   depth the config states (``num_hidden_layers``, ``n_layer``, ``num_layers``, ``n_layers``,
   ``encoder_layers``, ``decoder_layers`` or ``num_decoder_layers``, of the config or of any
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
   model). Each stack owns the parameters under its *root*, the highest module holding its block
   list and no other stack's; the stack's name is the root's last name (``encoder``,
   ``decoder``, ``text_model``, ``vision_model``, ``vision_tower``, ``language_model``). Within
   its root a parameter first used before the stack's first block is that stack's
   ``embeddings``, while its blocks run its ``shared``, after its last block its ``top`` (final
   norm, pooling head). The trace also follows data: a stack whose block outputs reach another
   stack's blocks *feeds* it (an encoder feeds its decoder, a vision tower its language model).
   The top of a stack that feeds nothing is part of the model's ``head``. Parameters under no
   stack's root are placed by first use: before every stack -> ``embeddings`` (T5's and BART's
   ``shared`` table), while a stack runs -> ``shared``, after a stack and read by a later stack's
   blocks -> ``projector`` (LLaVA's ``multi_modal_projector``), otherwise -> ``head``
   (``lm_head``, CLIP's projections and ``logit_scale``). A model with several stacks whose
   forward cannot be traced, or whose blocks are not all entered in order, is refused: there is
   no safe guess of which tower a parameter belongs to.

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

import re
from dataclasses import dataclass, field

from torch import nn

from freeze_policies.errors import FreezePolicyError
from freeze_policies.trace import Trace
from freeze_policies.trace import trace as trace_forward

DEPTH_ATTRIBUTES = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")
STACK_DEPTH_ATTRIBUTES = (
    *DEPTH_ATTRIBUTES,
    "encoder_layers",
    "decoder_layers",
    "num_decoder_layers",
)
NORM_CLASS = re.compile(r"norm", re.IGNORECASE)
NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)


@dataclass(frozen=True)
class Stack:
    """One stack of blocks and the parameters of its root module around them.

    ``embeddings``: used before its first block; ``blocks[i]``: block ``i`` (bottom first);
    ``shared``: owned outside the blocks but read while they run; ``top``: used after its last
    block. ``features`` is the convolutional feature encoder, a part of ``embeddings``.
    ``feeds`` names the stacks its output reaches; a stack that feeds none is *final* and its
    ``top`` is also in the model's ``head``.
    """

    name: str
    module: str
    embeddings: list[str]
    blocks: list[list[str]]
    block_modules: list[str]
    shared: list[str] = field(default_factory=list)
    top: list[str] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    feeds: tuple[str, ...] = ()

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def final(self) -> bool:
        return not self.feeds

    def names(self) -> list[str]:
        """Every parameter the stack owns: embeddings, blocks, shared, top."""
        blocks = [name for names in self.blocks for name in names]
        return [*self.embeddings, *blocks, *self.shared, *self.top]

    def describe(self) -> str:
        """One line: ``encoder: 6 blocks (model.encoder.layers.0 .. 5), feeds decoder``."""
        first, last = self.block_modules[0], self.block_modules[-1].rsplit(".", 1)[-1]
        text = f"{self.name}: {self.depth} blocks ({first} .. {last})"
        if self.features:
            text += f", feature encoder of {len(self.features)} tensors"
        return text + (f", feeds {', '.join(self.feeds)}" if self.feeds else "")


@dataclass(frozen=True)
class Anatomy:
    """Parameter names of a model, grouped as ``model.named_parameters()`` gives them.

    ``embeddings``, every ``blocks[i]``, ``head`` and ``shared`` together cover every parameter
    exactly once (with several stacks: the blocks of all stacks in forward order, see the module
    doc). ``block_modules[i]`` is the module name of block ``i``. ``norms`` are the names of
    parameters that belong to normalisation modules (for ``norm_only``). ``tied`` maps each extra
    name of a tied tensor to the name under which it is listed; ``tied_groups`` says which group
    each extra name would belong to and ``tied_parts`` which part (see ``parts``). ``stacks`` is
    the per-stack view (one entry for a single-stack model), ``projector`` the parameters
    between stacks. ``trace`` says how the groups were found.
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
    stacks: tuple[Stack, ...] = ()
    projector: list[str] = field(default_factory=list)
    tied_parts: dict[str, str] = field(default_factory=dict)
    trace: str = ""

    @property
    def depth(self) -> int:
        return len(self.blocks)

    @property
    def features(self) -> list[str]:
        """The convolutional feature encoder(s): ``Stack.features`` of every stack."""
        return [name for stack in self.stacks for name in stack.features]

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

    # -- several stacks -------------------------------------------------------------------------
    def stack_names(self) -> list[str]:
        return [stack.name for stack in self.stacks]

    def stack(self, name: str, who: str = "anatomy") -> Stack:
        """The stack called ``name`` (its name or its root module's name); one-line error else."""
        for stack in self.stacks:
            if name in (stack.name, stack.module):
                return stack
        raise FreezePolicyError(
            f"{who}: stack={name!r} is not a stack of {self.model_class}; its stacks: "
            f"{', '.join(self.stack_names()) or 'none'}"
        )

    def parts(self) -> dict[str, list[str]]:
        """Every parameter once, by part: the flat ``groups()`` for a single-stack model; else
        ``embeddings`` (outside every stack), per stack ``<stack>.embeddings``,
        ``<stack>.block.<i>``, ``<stack>.shared``, ``<stack>.top``, then ``projector``,
        ``shared`` (outside every stack) and ``head``, empty parts left out. Stacks that feed
        another come first, in forward order, then the projector, then the final stacks."""
        if len(self.stacks) <= 1:
            return self.groups()
        own = {name for stack in self.stacks for name in stack.names()}
        out = {"embeddings": [n for n in self.embeddings if n not in own]}
        feeding = [stack for stack in self.stacks if not stack.final]
        final = [stack for stack in self.stacks if stack.final]
        for stack in [*feeding, None, *final]:
            if stack is None:
                out["projector"] = self.projector
                continue
            out[f"{stack.name}.embeddings"] = stack.embeddings
            out.update({f"{stack.name}.block.{i}": names for i, names in enumerate(stack.blocks)})
            out[f"{stack.name}.shared"] = stack.shared
            out[f"{stack.name}.top"] = stack.top
        out["shared"] = [n for n in self.shared if n not in own and n not in self.projector]
        out["head"] = [n for n in self.head if n not in own]
        return {part: names for part, names in out.items() if names}

    def stack_view(self, stack: str | None, who: str) -> tuple[Anatomy, frozenset[str]]:
        """What a block policy acting on one stack sees, and every name outside it.

        The view is a single-stack anatomy: the stack's embeddings, blocks and shared parameters,
        and as head the model's head plus the stack's top. For a single-stack model (``stack``
        None or its name) the view is this anatomy and nothing is outside. With several stacks
        ``stack`` must name one; the error lists them.
        """
        if len(self.stacks) <= 1:
            if stack is not None:
                self.stack(stack, who) if self.stacks else self._no_stacks(stack, who)
            return self, frozenset()
        if stack is None:
            described = "; ".join(s.describe() for s in self.stacks)
            raise FreezePolicyError(
                f"{who}: {self.model_class} has {len(self.stacks)} stacks of blocks ({described}); "
                f"pass stack= one of {', '.join(self.stack_names())}"
            )
        chosen = self.stack(stack, who)
        view = Anatomy(
            embeddings=chosen.embeddings,
            blocks=chosen.blocks,
            head=[*self.head, *([] if chosen.final else chosen.top)],
            shared=chosen.shared,
            block_modules=chosen.block_modules,
            norms=self.norms,
            model_class=f"{self.model_class} stack {chosen.name!r}",
            traced=self.traced,
            stacks=(chosen,),
            trace=self.trace,
        )
        return view, frozenset(self.names()) - frozenset(view.names())

    def part_choices(self) -> list[str]:
        """The part names ``part_names`` accepts for this model (see there)."""
        choices = ["embeddings", "head"]
        if self.projector:
            choices.append("projector")
        if self.features:
            choices.append("feature_encoder")
        for stack in self.stacks:
            choices += [stack.name, f"{stack.name}.embeddings", f"{stack.name}.blocks"]
            if stack.top:
                choices.append(f"{stack.name}.top")
        return choices

    def part_names(self, part: str, who: str) -> list[str]:
        """The parameter names of a named part; a one-line error for an unknown or empty part.

        Parts: a stack's name (its embeddings, blocks, shared parameters and top),
        ``<stack>.embeddings``, ``<stack>.blocks``, ``<stack>.top``; ``embeddings`` (every
        stack's and the model's), ``head``, ``projector`` (between stacks) and
        ``feature_encoder`` (the convolutions reading the raw input).
        """
        if not isinstance(part, str):
            raise FreezePolicyError(
                f"{who}: part {part!r} must be a string; parts of "
                f"{self.model_class}: {', '.join(self.part_choices())}"
            )
        whole = {
            "embeddings": self.embeddings,
            "head": self.head,
            "projector": self.projector,
            "feature_encoder": self.features,
        }
        if part in whole:
            names = whole[part]
        else:
            stack_name, _, what = part.rpartition(".")
            found = [s for s in self.stacks if part in (s.name, s.module)]
            if found:
                names = found[0].names()
            elif what in ("embeddings", "blocks", "top") and stack_name in self.stack_names():
                chosen = self.stack(stack_name, who)
                names = {
                    "embeddings": chosen.embeddings,
                    "top": chosen.top,
                    "blocks": [n for block in chosen.blocks for n in block],
                }[what]
            else:
                raise FreezePolicyError(
                    f"{who}: {part!r} is not a part of {self.model_class}; "
                    f"its parts: {', '.join(self.part_choices())}"
                )
        if not names:
            raise FreezePolicyError(
                f"{who}: {self.model_class} has no {part!r} (no parameter "
                f"there); its parts: {', '.join(self.part_choices())}"
            )
        return list(names)

    def _no_stacks(self, stack: str, who: str):
        raise FreezePolicyError(
            f"{who}: stack={stack!r} given, but {self.model_class} has no "
            "stack information (an Anatomy built by hand)"
        )

    def with_tied_aliases(self) -> Anatomy:
        """This anatomy with each tied alias added to its group (and stack part); no ``tied``."""
        if not self.tied:
            return self
        extra = {"embeddings": [], "shared": [], "head": []}
        for alias, group in self.tied_groups.items():
            extra[group].append(alias)
        stacks = tuple(_stack_with_aliases(stack, self.tied_parts) for stack in self.stacks)
        projector = [
            *self.projector,
            *(a for a, part in self.tied_parts.items() if part == "projector"),
        ]
        return Anatomy(
            embeddings=self.embeddings + extra["embeddings"],
            blocks=self.blocks,
            head=self.head + extra["head"],
            shared=self.shared + extra["shared"],
            block_modules=self.block_modules,
            norms=self.norms,
            model_class=self.model_class,
            traced=self.traced,
            stacks=stacks,
            projector=projector,
            trace=self.trace,
        )


def _stack_with_aliases(stack: Stack, tied_parts: dict[str, str]) -> Stack:
    def extra(part: str) -> list[str]:
        return [alias for alias, where in tied_parts.items() if where == f"{stack.name}.{part}"]

    return Stack(
        name=stack.name,
        module=stack.module,
        embeddings=stack.embeddings + extra("embeddings"),
        blocks=stack.blocks,
        block_modules=stack.block_modules,
        shared=stack.shared + extra("shared"),
        top=stack.top + extra("top"),
        features=stack.features,
        feeds=stack.feeds,
    )


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


def anatomy(model: nn.Module, blocks: str | list[str] | None = None) -> Anatomy:
    """Group the parameters of ``model`` into embeddings, blocks, head (and shared), per stack.

    See the module doc. ``blocks`` overrides the discovery: the name of a ModuleList, or a list
    of module names bottom first (the model is then one stack). Raises ``FreezePolicyError`` when
    the blocks cannot be found, or several stacks cannot be traced.
    """
    check_blocks_option(blocks)
    named_modules = dict(model.named_modules())
    if blocks is None:
        lists = _discover_stacks(model, named_modules)
        block_lists = [[f"{name}.{i}" for i in range(len(named_modules[name]))] for name in lists]
    elif isinstance(blocks, str):
        if not isinstance(named_modules.get(blocks), nn.ModuleList):
            raise FreezePolicyError(
                f"blocks={blocks!r} is not a ModuleList of {type(model).__name__}; "
                f"ModuleLists: {', '.join(_module_lists(named_modules)) or 'none'}"
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
        return _single_stack(
            model,
            named_modules,
            lists[0],
            block_lists[0],
            block_params,
            explicit=blocks is not None and not isinstance(blocks, str),
        )
    return _multi_stack(model, named_modules, lists, block_lists, block_params, block_of)


# -- one stack: the flat anatomy ----------------------------------------------------------------


def _single_stack(model, named_modules, list_name, block_modules, block_params, explicit):
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

    trace = trace_forward(model, named_modules, [block_modules])
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

    tied = _tied_aliases(model)
    tied_groups = {alias: by_position(alias) for alias in tied}
    stack_name = "blocks" if explicit else _single_stack_name(list_name)
    stack = Stack(
        name=stack_name,
        module="" if explicit else list_name.rpartition(".")[0],
        embeddings=groups["embeddings"],
        blocks=blocks,
        block_modules=list(block_modules),
        shared=groups["shared"],
        features=_features(model, named_modules, groups["embeddings"], trace),
    )
    return Anatomy(
        embeddings=groups["embeddings"],
        blocks=blocks,
        head=groups["head"],
        shared=groups["shared"],
        block_modules=list(block_modules),
        norms=frozenset(_norm_params(named_modules)),
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
    )


def _single_stack_name(list_name: str) -> str:
    parent = list_name.rpartition(".")[0]
    return (parent or list_name).rsplit(".", 1)[-1]


# -- several stacks ----------------------------------------------------------------------------


def _stack_roots(lists: list[str]) -> list[str]:
    """The highest module above each block list that holds no other list."""
    roots = []
    for name in lists:
        others = [other for other in lists if other != name]
        parts = name.split(".")
        root = name
        for cut in range(len(parts) - 1, 0, -1):
            ancestor = ".".join(parts[:cut])
            if any(other.startswith(ancestor + ".") for other in others):
                break
            root = ancestor
        roots.append(root)
    return roots


def _multi_stack(model, named_modules, lists, block_lists, block_params, block_of):
    model_name = type(model).__name__
    roots = _stack_roots(lists)
    short = [root.rsplit(".", 1)[-1] for root in roots]
    names = [s if short.count(s) == 1 else root for s, root in zip(short, roots, strict=True)]
    trace = trace_forward(model, named_modules, block_lists, stack_names=names, roots=roots)
    if not trace.ok:
        described = ", ".join(
            f"{n} ({len(b)} blocks)" for n, b in zip(names, block_lists, strict=True)
        )
        raise FreezePolicyError(
            f"{model_name} has {len(lists)} stacks of blocks ({described}) but its forward could "
            f"not be traced on a dummy input ({trace.note}); stacks are not guessed. Pass "
            "blocks=[module names, bottom first] to treat the model as one stack"
        )

    param_names = [name for name, _ in model.named_parameters()]
    all_names = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    order = sorted(range(len(lists)), key=lambda k: trace.start[k])
    feeds = {
        k: tuple(names[j] for j in order if j != k and names[k] in trace.fed[j])
        for k in range(len(lists))
    }

    def owner(name: str) -> int | None:
        for k, root in enumerate(roots):
            if name.startswith(root + "."):
                return k
        return None

    def own_part(k: int, name: str) -> str:
        """embeddings / shared / top of stack k, by first use or else by registration."""
        phase = trace.phase(name, k)
        if phase is None:
            position = all_names.index(name)
            first = all_names.index(block_params[block_lists[k][0]][0])
            return "embeddings" if position < first else "top"
        return {"before": "embeddings", "during": "shared", "after": "top"}[phase]

    first_block = min(all_names.index(block_params[b[0]][0]) for b in block_lists)
    last_block = max(all_names.index(block_params[b[-1]][-1]) for b in block_lists)

    def outside_part(name: str) -> str:
        """embeddings / shared / projector / head for a parameter under no stack's root."""
        used = trace.first_use.get(name)
        if used is None:
            position = all_names.index(name)
            if position < first_block:
                return "embeddings"
            return "head" if position > last_block else "shared"
        if used <= min(trace.start):
            return "embeddings"
        if any(trace.start[k] < used <= trace.end[k] for k in range(len(lists))):
            return "shared"
        if any(f"~{name}" in trace.fed[k] for k in range(len(lists))):
            return "projector"
        return "head"

    per_stack = {k: {"embeddings": [], "shared": [], "top": []} for k in range(len(lists))}
    outside = {"embeddings": [], "shared": [], "projector": [], "head": []}
    for name in param_names:
        if name in block_of:
            continue
        k = owner(name)
        if k is None:
            outside[outside_part(name)].append(name)
        else:
            per_stack[k][own_part(k, name)].append(name)

    stacks = []
    for k in order:
        stacks.append(
            Stack(
                name=names[k],
                module=roots[k],
                embeddings=per_stack[k]["embeddings"],
                blocks=[block_params[module] for module in block_lists[k]],
                block_modules=list(block_lists[k]),
                shared=per_stack[k]["shared"],
                top=per_stack[k]["top"],
                features=_features(model, named_modules, per_stack[k]["embeddings"], trace),
                feeds=feeds[k],
            )
        )

    tied = _tied_aliases(model)
    tied_parts = {}
    for alias in tied:
        k = owner(alias)
        if k is None:
            position = all_names.index(alias)
            tied_parts[alias] = (
                "embeddings"
                if position < first_block
                else "head"
                if position > last_block
                else "shared"
            )
        else:
            first = all_names.index(block_params[block_lists[k][0]][0])
            part = "embeddings" if all_names.index(alias) < first else "top"
            tied_parts[alias] = f"{names[k]}.{part}"
    final = {stack.name for stack in stacks if stack.final}

    def flat(part: str) -> str:
        if "." not in part:
            return "shared" if part == "projector" else part
        stack_name, _, what = part.rpartition(".")
        if what == "top":
            return "head" if stack_name in final else "shared"
        return what

    return Anatomy(
        embeddings=outside["embeddings"] + [n for s in stacks for n in s.embeddings],
        blocks=[names for s in stacks for names in s.blocks],
        head=outside["head"] + [n for s in stacks if s.final for n in s.top],
        shared=outside["shared"]
        + outside["projector"]
        + [n for s in stacks for n in s.shared]
        + [n for s in stacks if not s.final for n in s.top],
        block_modules=[module for s in stacks for module in s.block_modules],
        norms=frozenset(_norm_params(named_modules)),
        tied=tied,
        tied_groups={alias: flat(part) for alias, part in tied_parts.items()},
        model_class=model_name,
        traced=True,
        stacks=tuple(stacks),
        projector=outside["projector"],
        tied_parts=tied_parts,
        trace=trace.note,
    )


# -- discovery ---------------------------------------------------------------------------------


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


def _module_lists(named_modules: dict[str, nn.Module]) -> list[str]:
    return [f"{n} ({len(m)})" for n, m in named_modules.items() if isinstance(m, nn.ModuleList)]


def _has_matrix(module: nn.Module) -> bool:
    return any(param.dim() == 2 for param in module.parameters())


def _discover_stacks(model: nn.Module, named_modules: dict[str, nn.Module]) -> list[str]:
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
    # A ModuleList nested inside a candidate block (experts, sub-layers) is not a block list.
    outermost = [c for c in candidates if not any(c.startswith(o + ".") for o in candidates)]
    if len(outermost) > 1 and depths:
        with_matrix = [name for name in outermost if _has_matrix(lists[name])]
        outermost = with_matrix or outermost
    if len(outermost) > 1 and not depths:
        outermost = []  # several lists of the same length and no config to tell: do not guess
    if not outermost:
        found = ", ".join(_module_lists(named_modules)) or "none"
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


def _norm_params(named_modules: dict[str, nn.Module]) -> list[str]:
    out = []
    for module_name, module in named_modules.items():
        if _is_norm(module):
            prefix = f"{module_name}." if module_name else ""
            out.extend(prefix + name for name, _ in module.named_parameters(recurse=False))
    return out


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, NORM_TYPES) or bool(NORM_CLASS.search(type(module).__name__))


def _tied_aliases(model: nn.Module) -> dict[str, str]:
    listed: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in listed:
            aliases[name] = listed[id(param)]
        else:
            listed[id(param)] = name
    return aliases


def _features(model, named_modules, embeddings: list[str], trace: Trace) -> list[str]:
    """The convolutions first used in ``embeddings`` (with norms inside the same modules)."""
    if not trace.ok:
        return []
    used = sorted((n for n in embeddings if n in trace.first_use), key=trace.first_use.get)
    conv_parents: set[str] = set()
    out = []
    for name in used:
        module_name = name.rpartition(".")[0]
        module = named_modules.get(module_name)
        parent = module_name.rpartition(".")[0]
        if isinstance(module, nn.modules.conv._ConvNd):
            conv_parents.add(parent)
        elif not (module is not None and _is_norm(module) and parent in conv_parents):
            break
        out.append(name)
    # Parameters of those modules that the trace did not see (a weight-norm's g, say).
    modules = {name.rpartition(".")[0] for name in out}
    out += [n for n in embeddings if n not in out and n.rpartition(".")[0] in modules]
    return out
