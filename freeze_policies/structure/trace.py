"""The dummy forward behind ``structure.discover``: first use of each parameter, evidence.

``trace(model, named_modules, block_lists)`` runs the model once on a tiny dummy input (eval
mode, ``no_grad``, restored afterwards) under a ``TorchFunctionMode`` that counts torch calls and
records the call at which each parameter is first used. Forward hooks on every block record when
each stack starts and ends, and the result is only trusted when every block was entered, in
order, through its module call. With several stacks the recorder also follows data: tensors
computed from a stack's block weights (or from a parameter outside every stack) carry that tag,
and a tag seen while another stack's blocks run means it feeds that stack. Tags live in a table
keyed by tensor id with weak references, so no activation is kept alive by the trace.

Dummy inputs: ``input_ids`` (4 tokens), ``pixel_values`` (the configured image size),
``input_features`` (Whisper-style log-mel frames, or Speech2Text's filter-bank frames),
``input_values`` (raw audio long enough for a few frames after the convolutions); with several
stacks also ``decoder_input_ids`` and the other modality the forward takes, and, for a model with
an image token, as many image placeholders as ``get_image_features`` returns rows. A model whose
forward needs more (image grids, image sizes, tiles) is not traced; ``structure.metadata`` then
answers.
"""

from __future__ import annotations

import inspect
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten


def _dummy_inputs(model: nn.Module, multi: bool) -> dict[str, torch.Tensor] | None:
    """A tiny input for the model's main input (and, with several stacks, its other inputs)."""
    config = getattr(model, "config", None)
    first = next(model.parameters())
    device, dtype = first.device, first.dtype
    input_name = getattr(model, "main_input_name", "input_ids")
    accepted = _forward_arguments(model)
    wanted = [input_name]
    if multi:
        wanted += [n for n in ("input_ids", "pixel_values") if n in accepted and n != input_name]
        if getattr(config, "is_encoder_decoder", False) and "decoder_input_ids" in accepted:
            wanted.append("decoder_input_ids")
    out: dict[str, torch.Tensor] = {}
    for name in wanted:
        value = _dummy_input(model, config, name, device, dtype)
        if value is None:
            return None
        out[name] = value
    image_token = _image_token(config)
    if multi and "pixel_values" in out and "input_ids" in out and image_token is not None:
        count = _image_feature_count(model, out["pixel_values"])
        if count is None:
            return None
        image = torch.full((1, count), image_token, device=device, dtype=torch.long)
        out["input_ids"] = torch.cat([out["input_ids"][:, :1], image, out["input_ids"][:, 1:]], 1)
    return out


def _forward_arguments(model: nn.Module) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _text_vocab(config) -> int:
    return getattr(config, "vocab_size", None) or getattr(
        getattr(config, "text_config", None), "vocab_size", 8
    )


def _dummy_input(model, config, name, device, dtype):
    if name in ("input_ids", "decoder_input_ids"):
        vocab = _text_vocab(config)
        ids = torch.arange(1, 5, device=device).clamp(max=vocab - 1).unsqueeze(0)
        image_token = _image_token(config)
        if image_token is not None:  # never an image placeholder by accident
            ids = torch.where(ids == image_token, (ids + 1) % vocab, ids)
        return ids
    if name == "pixel_values":
        source = config if hasattr(config, "image_size") else getattr(config, "vision_config", None)
        if source is None or not hasattr(source, "image_size"):
            return None
        size = source.image_size
        height, width = (size, size) if isinstance(size, int) else size
        channels = getattr(source, "num_channels", 3)
        return torch.zeros((1, channels, height, width), device=device, dtype=dtype)
    if name == "input_features" and getattr(config, "input_feat_per_channel", None):
        # Speech2Text-style filter-bank frames: (1, frames, features x channels)
        width = config.input_feat_per_channel * getattr(config, "input_channels", 1)
        return torch.zeros((1, 16, width), device=device, dtype=dtype)
    if name == "input_features":  # Whisper-style log-mel frames: (1, mels, 2 * positions)
        mels, positions = (
            getattr(config, "num_mel_bins", None),
            getattr(config, "max_source_positions", None),
        )
        if not mels or not positions:
            return None
        return torch.zeros((1, mels, 2 * positions), device=device, dtype=dtype)
    if name == "input_values":  # raw audio: long enough for a few frames after the convolutions
        length = 4
        for kernel, stride in reversed(
            list(
                zip(
                    getattr(config, "conv_kernel", ()),
                    getattr(config, "conv_stride", ()),
                    strict=False,
                )
            )
        ):
            length = (length - 1) * stride + kernel
        length = max(length, 16)
        generator = torch.Generator().manual_seed(0)
        return torch.randn((1, length), generator=generator).to(device=device, dtype=dtype)
    return None


def _image_token(config) -> int | None:
    for attribute in ("image_token_id", "image_token_index"):
        value = getattr(config, attribute, None)
        if isinstance(value, int):
            return value
    return None


def _image_feature_count(model: nn.Module, pixel_values: torch.Tensor) -> int | None:
    """How many placeholder tokens the image needs: the rows ``get_image_features`` returns."""
    getter = getattr(model, "get_image_features", None)
    if getter is None:
        return None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            features = getter(pixel_values=pixel_values)
    except Exception:  # any model whose image path the dummy does not fit: not traced
        return None
    finally:
        model.train(was_training)
    features = getattr(features, "pooler_output", features)
    tensors = [t for t in tree_flatten(features)[0] if isinstance(t, torch.Tensor)]
    return sum(t.shape[:-1].numel() for t in tensors) or None


@dataclass
class Trace:
    """What one dummy forward showed: first use of each parameter, each stack's time span."""

    ok: bool
    note: str
    first_use: dict[str, int] = field(default_factory=dict)
    start: list[int] = field(default_factory=list)
    end: list[int] = field(default_factory=list)
    fed: list[set[str]] = field(default_factory=list)
    output_reads: frozenset[str] | None = None  # outside parameters the first output depends on

    def phase(self, name: str, stack: int) -> str | None:
        used = self.first_use.get(name)
        if used is None:
            return None
        if used <= self.start[stack]:
            return "before"
        return "during" if used <= self.end[stack] else "after"


class _Recorder(TorchFunctionMode):
    """Counts torch calls; records each parameter's first use; follows which stack's outputs
    (and which outside parameters) reach the blocks of each stack."""

    def __init__(
        self, names_by_id: dict[int, str], tags: dict[str, str], stacks: int, follow: bool
    ):
        super().__init__()
        self.names_by_id, self.param_tags, self.follow = names_by_id, tags, follow
        self.clock = 0
        self.first_use: dict[str, int] = {}
        self.running: int | None = None
        self.fed: list[set[str]] = [set() for _ in range(stacks)]
        self.tensor_tags: dict[int, tuple[weakref.ref, frozenset[str]]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.clock += 1
        tags: set[str] = set()
        for value in tree_flatten((args, kwargs))[0]:
            name = self.names_by_id.get(id(value))
            if name is not None:
                self.first_use.setdefault(name, self.clock)
                if name in self.param_tags:
                    tags.add(self.param_tags[name])
            elif self.follow and isinstance(value, torch.Tensor):
                entry = self.tensor_tags.get(id(value))
                if entry is not None and entry[0]() is value:
                    tags |= entry[1]
        result = func(*args, **kwargs)
        if self.follow and tags:
            if self.running is not None:
                self.fed[self.running] |= tags
            frozen = frozenset(tags)
            for value in tree_flatten(result)[0]:
                if isinstance(value, torch.Tensor) and id(value) not in self.names_by_id:
                    self._tag(value, frozen)
        return result

    def _tag(self, tensor: torch.Tensor, tags: frozenset[str]) -> None:
        key = id(tensor)
        entry = self.tensor_tags.get(key)
        if entry is not None and entry[0]() is tensor:
            tags = tags | entry[1]
        table = self.tensor_tags

        def forget(ref, key=key):
            if key in table and table[key][0] is ref:
                del table[key]

        table[key] = (weakref.ref(tensor, forget), tags)


def trace(
    model: nn.Module,
    named_modules: dict[str, nn.Module],
    block_lists: list[list[str]],
    stack_names: list[str] | None = None,
    roots: list[str] | None = None,
) -> Trace:
    """Run one dummy forward under the recorder; check that every block ran, in order."""
    multi = len(block_lists) > 1
    try:
        inputs = _dummy_inputs(model, multi)
    except StopIteration:
        return Trace(False, "registration order: the model has no parameters")
    if inputs is None:
        return Trace(
            False,
            "registration order: no dummy input for "
            f"{getattr(model, 'main_input_name', 'input_ids')!r}",
        )
    if next(model.parameters()).device.type == "meta":
        return Trace(False, "registration order: the model is on the meta device")
    names_by_id = {id(p): n for n, p in model.named_parameters()}
    tags: dict[str, str] = {}
    if multi:
        owned = [root + "." for root in roots]
        for name in names_by_id.values():
            block = next(
                (
                    k
                    for k, modules in enumerate(block_lists)
                    if any(name.startswith(m + ".") for m in modules)
                ),
                None,
            )
            if block is not None:
                tags[name] = stack_names[block]
            elif not any(name.startswith(prefix) for prefix in owned):
                tags[name] = f"~{name}"
    else:  # one stack: follow the parameters outside the blocks to the model's first output
        blocks = tuple(module + "." for module in block_lists[0])
        tags = {name: f"~{name}" for name in names_by_id.values() if not name.startswith(blocks)}
    recorder = _Recorder(names_by_id, tags, len(block_lists), follow=True)
    entered: list[list[int]] = [[] for _ in block_lists]
    start: list[int | None] = [None] * len(block_lists)
    end: list[int | None] = [None] * len(block_lists)

    def hooks_for(k: int, i: int, last: bool):
        def enter(*_):
            entered[k].append(i)
            if i == 0 and start[k] is None:
                start[k] = recorder.clock
            recorder.running = k

        def leave(*_):
            recorder.running = None
            if last:
                end[k] = recorder.clock

        return enter, leave

    handles = []
    for k, modules in enumerate(block_lists):
        for i, module in enumerate(modules):
            enter, leave = hooks_for(k, i, i == len(modules) - 1)
            handles.append(named_modules[module].register_forward_pre_hook(enter))
            handles.append(named_modules[module].register_forward_hook(leave))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), recorder:
            outputs = _call(model, inputs)
    except Exception as error:  # any model the dummy input does not fit: registration order
        first_line = (str(error).strip().splitlines() or [""])[0][:120]
        return Trace(
            False,
            f"registration order: the dummy forward failed ({type(error).__name__}: {first_line})",
        )
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    for k, modules in enumerate(block_lists):
        firsts = list(dict.fromkeys(entered[k]))
        if firsts != list(range(len(modules))) or start[k] is None or end[k] is None:
            where = modules[0].rpartition(".")[0] or modules[0]
            seen = f"entered {firsts}" if firsts else "never entered"
            return Trace(
                False,
                f"registration order: the blocks of {where} were {seen} "
                "through their module call during the dummy forward",
            )
    first = next(
        (t for t in tree_flatten(_first_output(outputs))[0] if isinstance(t, torch.Tensor)), None
    )
    entry = recorder.tensor_tags.get(id(first)) if first is not None else None
    reads = (
        frozenset(tag[1:] for tag in entry[1] if tag.startswith("~"))
        if entry is not None and entry[0]() is first
        else frozenset()
    )
    return Trace(
        True, "forward trace", recorder.first_use, start, end, recorder.fed,
        output_reads=reads if first is not None else None,
    )


def _sentence_transformer(model: nn.Module) -> bool:
    """sentence-transformers' ``SentenceTransformer``, duck-typed (the package is not imported):
    its forward takes one features dict and returns it with ``sentence_embedding`` added."""
    return callable(getattr(model, "tokenize", None)) and callable(getattr(model, "encode", None))


def _call(model: nn.Module, inputs: dict[str, torch.Tensor]):
    """The dummy forward. A ``SentenceTransformer`` gets its features dict (with an attention
    mask, as its tokenizer makes one) and its output is the sentence embedding alone, so the
    parameters its pooling never reads (a BERT pooler under mean pooling) are found unread."""
    if _sentence_transformer(model) and "input_ids" in inputs:
        features = {**inputs, "attention_mask": torch.ones_like(inputs["input_ids"])}
        return model(features)["sentence_embedding"]
    return model(**inputs)


def _first_output(outputs):
    """The model's first output: ``last_hidden_state`` of a bare model, ``logits`` of a head."""
    if isinstance(outputs, dict):
        return next(iter(outputs.values()), None)
    if isinstance(outputs, (tuple, list)):
        return outputs[0] if outputs else None
    return outputs
