"""The anatomy's data: ``Stack`` and ``Anatomy``, where each parameter of a model sits.

``freeze_policies.structure.discover`` reads them off a model (see its docstring for how);
policies, the optimizer groups, the cost model and the prefix cache read them. The views (``parts``,
``stack_view``, ``part_names``, ``with_tied_aliases``) are pure functions of the fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from freeze_policies.errors import FreezePolicyError


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
    role: str | None = None

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
    between stacks. ``trace`` says how the groups were found. ``block_parts`` holds the parts
    inside the blocks by role (``attention``, ``mlp``, ``norms``, ``router``, ``experts``,
    ``shared_experts``; see ``freeze_policies.structure.roles``). ``head_unread``: head
    parameters the model's first output does not depend on in the trace (a bare encoder's
    pooler, which mean pooling of ``last_hidden_state`` never reads).
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
    block_parts: dict[str, list[str]] = field(default_factory=dict)
    head_unread: list[str] = field(default_factory=list)

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
            block_parts=_restricted(self.block_parts, chosen),
        )
        return view, frozenset(self.names()) - frozenset(view.names())

    def part_choices(self) -> list[str]:
        """The part names ``part_names`` accepts for this model (see there): the whole-model
        parts, each stack's, the vision-language presets, then the parts inside blocks."""
        choices = ["embeddings", "head"]
        if self.projector:
            choices.append("projector")
        if self.features:
            choices.append("feature_encoder")
        for stack in self.stacks:
            choices += [stack.name, f"{stack.name}.embeddings", f"{stack.name}.blocks"]
            if stack.top:
                choices.append(f"{stack.name}.top")
        presets = self.presets()
        choices += [p for p in presets if presets[p] and p not in choices]
        choices += [p for p in BLOCK_PART_NAMES if self.block_parts.get(p)]
        if len(self.stacks) > 1:
            choices += [
                f"{stack.name}.{p}"
                for stack in self.stacks
                for p in BLOCK_PART_NAMES
                if self._block_part(f"{stack.name}.{p}")
            ]
        return choices

    def part_names(self, part: str, who: str) -> list[str]:
        """The parameter names of a named part; a one-line error for an unknown or empty part.

        Parts: a stack's name (its embeddings, blocks, shared parameters and top),
        ``<stack>.embeddings``, ``<stack>.blocks``, ``<stack>.top``; ``embeddings`` (every
        stack's and the model's), ``head``, ``projector`` (between stacks) and
        ``feature_encoder`` (the convolutions reading the raw input); the vision-language
        presets (``presets``: ``vision_tower``, ``projector``, ``language_model``, ``head``),
        which take precedence; the parts inside blocks by role, in every block
        (``attention``, ``mlp``, ``norms``, ``router``, ``experts``, ``shared_experts``) or in
        one stack's (``<stack>.mlp``).
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
        presets = self.presets()
        block_part = self._block_part(part)
        if part in presets:
            names = presets[part]
        elif part in whole:
            names = whole[part]
        elif block_part is not None:
            names = block_part
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
            block_parts=self.block_parts,
            head_unread=self.head_unread,
        )

    # -- presets: vision-language parts and parts inside blocks ---------------------------------
    def presets(self) -> dict[str, list[str]]:
        """The vision-language presets of a model with a vision tower feeding a language model:
        ``vision_tower`` (every vision stack, less the projector), ``projector`` (between the
        stacks; where the model keeps it inside the vision module, as Qwen2-VL's ``merger``,
        the vision stack's top), ``language_model`` (the decoder stacks) and ``head``. Empty
        for other models."""
        vision = [s for s in self.stacks if s.role == "vision" and s.feeds]
        language = [s for s in self.stacks if s.role == "decoder"]
        if not vision or not language:
            return {}
        projector = list(self.projector) or [n for s in vision for n in s.top]
        inside = set(projector)
        return {
            "vision_tower": [n for s in vision for n in s.names() if n not in inside],
            "projector": projector,
            "language_model": [n for s in language for n in s.names()],
            "head": list(self.head),
        }

    def _block_part(self, part: str) -> list[str] | None:
        """``attention`` (all stacks) or ``<stack>.attention`` (one); None if not such a name."""
        stack_name, _, role = part.rpartition(".")
        if role not in BLOCK_PART_NAMES:
            return None
        names = self.block_parts.get(role, [])
        if not stack_name:
            return list(names)
        if stack_name not in self.stack_names():
            return None
        chosen = set(self.stack(stack_name).names())
        return [n for n in names if n in chosen]


BLOCK_PART_NAMES = ("attention", "mlp", "norms", "router", "experts", "shared_experts")
"""The roles inside a block (``freeze_policies.structure.roles``)."""


def _restricted(block_parts: dict[str, list[str]], stack: Stack) -> dict[str, list[str]]:
    own = set(stack.names())
    out = {role: [n for n in names if n in own] for role, names in block_parts.items()}
    return {role: names for role, names in out.items() if names}


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
        role=stack.role,
    )
