"""Several stacks of blocks (encoder and decoder, text and vision towers, a vision tower and a
language model): each stack's root, and its parameters by first use in the trace (see point 3
of ``freeze_policies.structure.discover``'s docstring), or, when the forward cannot be traced,
from transformers' metadata (``_by_structure``). A model neither can place is refused: there is
no safe guess of which tower a parameter belongs to."""

from __future__ import annotations

from freeze_policies.errors import FreezePolicyError
from freeze_policies.structure import metadata
from freeze_policies.structure import (
    trace as tracing,  # called through the module: a test counts traces
)
from freeze_policies.structure.block_lists import feature_params, norm_params, tied_aliases
from freeze_policies.structure.layout import Anatomy, Stack


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


def _by_trace(trace, names, roots, block_lists, block_params, block_of, param_names, all_names,
              first_block, last_block):
    """Stack order, feeds and every parameter's part, by first use in the dummy forward."""
    count = len(block_lists)
    order = sorted(range(count), key=lambda k: trace.start[k])
    feeds = {
        k: tuple(names[j] for j in order if j != k and names[k] in trace.fed[j])
        for k in range(count)
    }

    def own_part(k: int, name: str) -> str:
        """embeddings / shared / top of stack k, by first use or else by registration."""
        phase = trace.phase(name, k)
        if phase is None:
            position = all_names.index(name)
            first = all_names.index(block_params[block_lists[k][0]][0])
            return "embeddings" if position < first else "top"
        return {"before": "embeddings", "during": "shared", "after": "top"}[phase]

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
        if any(trace.start[k] < used <= trace.end[k] for k in range(count)):
            return "shared"
        if any(f"~{name}" in trace.fed[k] for k in range(count)):
            return "projector"
        return "head"

    per_stack, outside = _place(roots, block_of, param_names, own_part, outside_part)
    return order, feeds, per_stack, outside


def _by_structure(model, names, roots, roles, block_lists, block_params, block_of, param_names,
                  all_names, first_block, last_block):
    """Stack order, feeds and parts from transformers' metadata (``structure.metadata``).

    The towers (image, audio or text encoder) feed the decoder; within a stack's root a parameter
    registered before its first block is its embeddings, after it its top. Outside every root:
    the input embeddings are ``embeddings``, the output embeddings ``head``; any other parameter
    of the module holding the towers (LLaVA's ``multi_modal_projector``, Idefics3's
    ``connector``) is the ``projector`` when a tower feeds a decoder; the rest goes by
    registration (before the first block: ``embeddings``, else ``head``).
    """
    count = len(block_lists)
    decoders = [k for k in range(count) if roles[k] == "decoder"]
    towers = [k for k in range(count) if roles[k] != "decoder"]
    order = towers + decoders  # registration order within each group
    feeds = {k: tuple(names[j] for j in decoders) if k in towers else () for k in range(count)}
    inputs, outputs = metadata.embedding_params(model)
    by_name = dict(model.named_parameters())
    base = _common_prefix(roots)

    def own_part(k: int, name: str) -> str:
        first = all_names.index(block_params[block_lists[k][0]][0])
        return "embeddings" if all_names.index(name) < first else "top"

    def outside_part(name: str) -> str:
        if id(by_name[name]) in inputs:
            return "embeddings"
        if id(by_name[name]) in outputs:
            return "head"
        if towers and decoders and name.startswith(base):
            return "projector"
        return "embeddings" if all_names.index(name) < first_block else "head"

    per_stack, outside = _place(roots, block_of, param_names, own_part, outside_part)
    return order, feeds, per_stack, outside


def _common_prefix(roots: list[str]) -> str:
    """The module holding every root, with a trailing dot ("" for the model itself)."""
    parts = [root.split(".") for root in roots]
    common = []
    for pieces in zip(*parts, strict=False):
        if len(set(pieces)) != 1:
            break
        common.append(pieces[0])
    return ".".join(common) + "." if common else ""


def _place(roots, block_of, param_names, own_part, outside_part):
    per_stack = {k: {"embeddings": [], "shared": [], "top": []} for k in range(len(roots))}
    outside = {"embeddings": [], "shared": [], "projector": [], "head": []}
    for name in param_names:
        if name in block_of:
            continue
        k = next((k for k, root in enumerate(roots) if name.startswith(root + ".")), None)
        if k is None:
            outside[outside_part(name)].append(name)
        else:
            per_stack[k][own_part(k, name)].append(name)
    return per_stack, outside


def several_stacks(model, named_modules, lists, block_lists, block_params, block_of, source="auto"):
    model_name = type(model).__name__
    roots = _stack_roots(lists)
    short = [root.rsplit(".", 1)[-1] for root in roots]
    names = [s if short.count(s) == 1 else root for s, root in zip(short, roots, strict=True)]
    if source == "structure":
        trace = tracing.Trace(False, "not traced (source='structure')")
    else:
        trace = tracing.trace(model, named_modules, block_lists, stack_names=names, roots=roots)
    param_names = [name for name, _ in model.named_parameters()]
    all_names = [name for name, _ in model.named_parameters(remove_duplicate=False)]
    first_block = min(all_names.index(block_params[b[0]][0]) for b in block_lists)
    last_block = max(all_names.index(block_params[b[-1]][-1]) for b in block_lists)
    roles = metadata.stack_roles(model, lists)
    if trace.ok:
        order, feeds, per_stack, outside = _by_trace(
            trace, names, roots, block_lists, block_params, block_of, param_names, all_names,
            first_block, last_block,
        )
        note = trace.note
    else:
        described = ", ".join(
            f"{n} ({len(b)} blocks)" for n, b in zip(names, block_lists, strict=True)
        )
        unknown = [n for n, role in zip(names, roles, strict=True) if role is None]
        if unknown or source == "trace":
            why = (
                "transformers names no tower (get_encoder / get_decoder) holding "
                f"{', '.join(unknown)}"
                if unknown
                else "source='trace' was asked"
            )
            raise FreezePolicyError(
                f"{model_name} has {len(lists)} stacks of blocks ({described}) but its forward "
                f"could not be traced on a dummy input ({trace.note}; {why}); stacks are not "
                "guessed. Pass blocks=[module names, bottom first] to treat the model as one stack"
            )
        order, feeds, per_stack, outside = _by_structure(
            model, names, roots, roles, block_lists, block_params, block_of, param_names,
            all_names, first_block, last_block,
        )
        towers = ", ".join(f"{n} ({role})" for n, role in zip(names, roles, strict=True))
        note = f"transformers metadata: towers {towers} ({trace.note})"

    def owner(name: str) -> int | None:
        for k, root in enumerate(roots):
            if name.startswith(root + "."):
                return k
        return None

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
                features=feature_params(model, named_modules, per_stack[k]["embeddings"], trace),
                feeds=feeds[k],
                role=roles[k],
            )
        )

    tied = tied_aliases(model)
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
        norms=frozenset(norm_params(named_modules)),
        tied=tied,
        tied_groups={alias: flat(part) for alias, part in tied_parts.items()},
        model_class=model_name,
        traced=trace.ok,
        stacks=tuple(stacks),
        projector=outside["projector"],
        tied_parts=tied_parts,
        trace=note,
    )
