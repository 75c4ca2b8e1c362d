"""What a freezing policy saves, predicted before training and measured during it.

**The FLOP model** (``predict_cost``) prices one training step from parameter counts alone: no
forward pass, no per-architecture table. It reads the model's ``Anatomy`` (embeddings, blocks,
shared, head) and, for every parameter, the module that owns it:

- *Matmul weights* are the parameters of ``nn.Linear``, ``nn.Conv*``, transformers' ``Conv1D``
  and any module whose class name ends in ``Linear`` (PEFT and quantised wrappers), with at least
  two dimensions larger than 1 (this leaves out IA3's scaling vectors). Each one costs
  ``2 * numel * tokens`` FLOPs in the forward pass, at every token (``tokens = batch_size *
  seq_len``). A head that reads one token per sequence (BERT's pooler and classifier) is therefore
  overcounted; on MiniLM that is under 2% of a step. A tied output projection (``lm_head`` sharing
  the input embedding) is a matmul of the head.
- *Lookups* (``nn.Embedding`` weights) cost no FLOPs; their weight gradient is a scatter-add,
  also counted as 0 (it is memory traffic, not arithmetic).
- *Everything else* (biases, norm scales, IA3 vectors, position tables held as bare parameters)
  is elementwise work and counted as 0.
- *Attention scores* (``Q K^T`` and ``A V``): ``4 * batch * seq_len**2 * heads * head_dim`` FLOPs
  per block when the config names ``num_attention_heads`` (or ``n_head``/``n_heads``) and a hidden
  size; 0 otherwise (``attention_included`` says which). Causal masking is not discounted.

A step is forward + input-gradient pass + weight-gradient pass:

- **forward**: every group, always (a frozen prefix still runs forward).
- **input gradients**: backward runs from the loss down to the *lowest* group with a trainable
  parameter, in the chain embeddings, block 0 .. block L-1, head. Each group on the way costs its
  matmul forward FLOPs once more (``dL/dx = dL/dy W^T``), and a block twice its attention FLOPs
  (both operands of both score matmuls get a gradient). Blocks below the lowest trainable one need
  no backward at all: that is where a frozen bottom saves time. The lowest trainable group is
  counted in full, an upper bound (autograd skips the input gradient of its first matmuls).
  A trainable ``shared`` parameter (relative-position tables, PEFT prompt embeddings) is taken to
  need backward down to block 0: right for prompt tuning, pessimistic for DeBERTa-style tables.
- **weight gradients**: ``2 * numel * tokens`` for each trainable matmul weight only.

The predicted step-time ratio is ``step_flops / full_step_flops``, where "full" is the same
model with every parameter trainable. The optimizer update (elementwise, memory-bound) and other
elementwise work are not in the FLOP count, so measured ratios differ from the prediction by a
few hundredths; ``recipes/bench.py`` measures by how much. PEFT adapters are priced like any
other matmul (LoRA's A and B are ``nn.Linear``); DoRA's per-step weight norm and prompt tuning's
extra virtual tokens are not (pass ``seq_len + num_virtual_tokens`` for the latter).
Mixture-of-experts layers are not modelled.

**Bytes** are exact counts: parameters ``numel * element_size``; gradients the same over the
trainable parameters; optimizer state ``state_slots`` tensors the size of each trainable
parameter (``torch.optim.AdamW`` keeps ``exp_avg`` and ``exp_avg_sq`` in the parameter's dtype:
8 bytes per fp32 parameter), not counting AdamW's 4-byte ``step`` scalar per tensor.

Measured bytes (what a real step holds) are ``freeze_policies.costs.measure``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass

from torch import nn

from freeze_policies.costs.measure import tensor_bytes
from freeze_policies.errors import FreezePolicyError
from freeze_policies.structure.discover import Anatomy, anatomy

HEAD_ATTRIBUTES = ("num_attention_heads", "n_head", "n_heads")
HIDDEN_ATTRIBUTES = ("hidden_size", "n_embd", "d_model", "dim")
ADAMW_STATE_SLOTS = 2


@dataclass(frozen=True)
class CostPreview:
    """Predicted cost of one training step (FLOP model) and exact memory counts, in bytes.

    FLOPs are per step for ``batch_size`` sequences of ``seq_len`` tokens. ``backward_stops_at``
    is the lowest group the backward pass reaches (None: nothing trains); ``blocks_with_backward``
    how many of the ``depth`` blocks it runs through.
    """

    model_class: str
    batch_size: int
    seq_len: int
    depth: int
    trainable_params: int
    total_params: int
    parameter_bytes: int
    gradient_bytes: int
    optimizer_state_bytes: int
    forward_flops: int
    input_grad_flops: int
    weight_grad_flops: int
    full_step_flops: int
    backward_stops_at: str | None
    blocks_with_backward: int
    attention_included: bool
    state_slots: int = ADAMW_STATE_SLOTS

    @property
    def step_flops(self) -> int:
        return self.forward_flops + self.input_grad_flops + self.weight_grad_flops

    @property
    def step_ratio(self) -> float:
        """Predicted step time relative to full fine-tuning of the same model."""
        return self.step_flops / self.full_step_flops if self.full_step_flops else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "step_flops": self.step_flops, "step_ratio": self.step_ratio}

    def __str__(self) -> str:
        share = 100 * self.trainable_params / self.total_params if self.total_params else 0.0
        if self.backward_stops_at is None:
            reach = "no backward pass (nothing trains)"
        else:
            reach = (
                f"backward stops at {self.backward_stops_at}, "
                f"through {self.blocks_with_backward} of {self.depth} blocks"
            )
        return "\n".join(
            [
                f"cost preview (FLOP model, predicted; batch {self.batch_size} x "
                f"{self.seq_len} tokens)",
                f"  trainable params  {self.trainable_params:,} of {self.total_params:,} "
                f"({share:.2f}%)",
                f"  step time         {self.step_ratio:.2f} x full fine-tuning ({reach})",
                f"  step GFLOPs       {_giga(self.step_flops)} = forward "
                f"{_giga(self.forward_flops)} + input grads {_giga(self.input_grad_flops)} "
                f"+ weight grads {_giga(self.weight_grad_flops)}",
                f"  memory            gradients {format_bytes(self.gradient_bytes)}, "
                f"optimizer state {format_bytes(self.optimizer_state_bytes)} "
                f"({self.state_slots} state tensors per parameter; AdamW has 2), "
                f"parameters {format_bytes(self.parameter_bytes)}",
            ]
        )


def format_bytes(count: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _giga(flops: int) -> str:
    return f"{flops / 1e9:.2f}"


# -- the FLOP model -------------------------------------------------------------------------


def predict_cost(
    model: nn.Module,
    trainable_names: Collection[str] | None = None,
    anat: Anatomy | None = None,
    *,
    seq_len: int = 128,
    batch_size: int = 32,
    state_slots: int = ADAMW_STATE_SLOTS,
) -> CostPreview:
    """Price one training step of ``model`` when exactly ``trainable_names`` train.

    ``trainable_names`` are names as ``model.named_parameters()`` lists them (default: the
    parameters that require grad now). ``anat`` defaults to ``anatomy(model)``; pass it when you
    have one (or need a ``blocks=`` override). ``state_slots`` is the optimizer's per-element
    state tensors (2 for Adam/AdamW, 1 for SGD with momentum). See the module docstring.
    """
    if seq_len < 1 or batch_size < 1:
        raise FreezePolicyError(f"seq_len={seq_len} and batch_size={batch_size} must be >= 1")
    anat = anat or anatomy(model)
    params = dict(model.named_parameters())
    if trainable_names is None:
        trainable = {name for name, param in params.items() if param.requires_grad}
    else:
        trainable = set(trainable_names)
        unknown = sorted(trainable - params.keys())
        if unknown:
            raise FreezePolicyError(
                f"{len(unknown)} trainable names are not parameters of {type(model).__name__}: "
                f"{', '.join(unknown[:3])}"
            )

    tokens = batch_size * seq_len
    matmul = matmul_params(model)
    group_matmul = dict.fromkeys([*anat.groups(), "shared"], 0)
    for name, numel in matmul.items():
        group_matmul[anat.group_of(name)] += numel
    attention = _attention_flops(model, batch_size, seq_len)

    def step(trained: set[str]) -> _Step:
        return _step_flops(anat, trained, matmul, group_matmul, tokens, attention)

    priced, full = step(trainable), step(set(params))
    trainable_params = sum(params[name].numel() for name in trainable)
    trainable_bytes = sum(tensor_bytes(params[name]) for name in trainable)
    return CostPreview(
        model_class=type(model).__name__,
        batch_size=batch_size,
        seq_len=seq_len,
        depth=anat.depth,
        trainable_params=trainable_params,
        total_params=sum(param.numel() for param in params.values()),
        parameter_bytes=sum(tensor_bytes(param) for param in params.values()),
        gradient_bytes=trainable_bytes,
        optimizer_state_bytes=state_slots * trainable_bytes,
        forward_flops=priced.forward,
        input_grad_flops=priced.input_grad,
        weight_grad_flops=priced.weight_grad,
        full_step_flops=full.forward + full.input_grad + full.weight_grad,
        backward_stops_at=priced.stops_at,
        blocks_with_backward=priced.blocks,
        attention_included=attention > 0,
        state_slots=state_slots,
    )


@dataclass(frozen=True)
class _Step:
    forward: int
    input_grad: int
    weight_grad: int
    stops_at: str | None
    blocks: int


def _step_flops(
    anat: Anatomy,
    trained: set[str],
    matmul: dict[str, int],
    group_matmul: dict[str, int],
    tokens: int,
    attention: int,
) -> _Step:
    """Forward, input-gradient and weight-gradient FLOPs when ``trained`` train (module doc)."""
    chain = ["embeddings", *(f"block.{i}" for i in range(anat.depth)), "head"]
    groups = anat.groups()
    forward = 2 * tokens * sum(group_matmul.values()) + attention * anat.depth

    lowest = next(
        (i for i, group in enumerate(chain) if trained.intersection(groups.get(group, ()))),
        None,
    )
    shared_trains = bool(trained.intersection(anat.shared))
    if shared_trains:  # read inside every block: backward must reach block 0
        lowest = 1 if lowest is None else min(lowest, 1)
    if lowest is None:
        return _Step(forward, 0, 0, None, 0)

    reached = chain[lowest:]
    input_grad = sum(2 * tokens * group_matmul[group] for group in reached)
    input_grad += 2 * attention * sum(1 for group in reached if group.startswith("block."))
    if shared_trains:
        input_grad += 2 * tokens * group_matmul["shared"]
    trained_matmul = sum(
        numel for name, numel in matmul.items() if anat.tied.get(name, name) in trained
    )
    weight_grad = 2 * tokens * trained_matmul
    blocks = sum(1 for group in reached if group.startswith("block."))
    return _Step(forward, input_grad, weight_grad, reached[0], blocks)


def matmul_params(model: nn.Module) -> dict[str, int]:
    """Name -> element count of every matmul weight, one entry per *use* of a tied tensor.

    A tied tensor appears under each module that multiplies by it (``lm_head.weight``) and not
    under modules that only look rows up in it (``embed_tokens.weight``).
    """
    out = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        if isinstance(module, nn.Embedding) or not _multiplies(module):
            continue
        for name, param in module.named_parameters(recurse=False):
            if sum(size > 1 for size in param.shape) >= 2:
                out[f"{module_name}.{name}" if module_name else name] = param.numel()
    return out


def _multiplies(module: nn.Module) -> bool:
    """Whether the module multiplies its input by its weight (see the module docstring)."""
    if isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
        return True
    return type(module).__name__.endswith(("Linear", "Conv1D"))


def _attention_flops(model: nn.Module, batch_size: int, seq_len: int) -> int:
    """Forward FLOPs of one block's attention scores, or 0 when the config does not say."""
    config = getattr(model, "config", None)
    for candidate in (config, getattr(config, "text_config", None)):
        if candidate is None:
            continue
        heads = _first_int(candidate, HEAD_ATTRIBUTES)
        hidden = _first_int(candidate, HIDDEN_ATTRIBUTES)
        if heads and hidden:
            head_dim = getattr(candidate, "head_dim", None) or hidden // heads
            return 4 * batch_size * seq_len * seq_len * heads * head_dim
    return 0


def _first_int(config, attributes: Iterable[str]) -> int | None:
    for attribute in attributes:
        value = getattr(config, attribute, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None
