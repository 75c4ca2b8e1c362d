"""The one place that builds optimizer parameter groups: weight decay and layer-wise learning rates.

What is chosen here, and why:

- **Who is in the optimizer.** Every parameter the policy will *ever* train (the union of the
  trainable sets of all its stages; for ``lisa`` that is every block), and nothing else. A
  parameter that never trains has no optimizer state and, since it never requires grad, no
  gradient. A parameter that a schedule opens later is in the optimizer from the start but has
  ``requires_grad=False`` and ``grad=None`` until it opens: torch optimizers skip parameters whose
  ``grad`` is ``None`` (no state is allocated, no weight decay is applied, momentum does not move
  them), and a ``LambdaLR`` scheduler scales every group from step 0, so a group that opens at
  step 500 gets the learning rate the schedule has reached at step 500. The groups depend only on
  the model and the policy, never on the run length, so a resumed run with another ``max_steps``
  loads its optimizer state into the same groups.
- **One group per (anatomy group, decay or not)**, in ULMFiT order: ``head``, ``block.L-1`` down
  to ``block.0``, ``shared``, ``embeddings`` (then the ``frozen`` groups of
  ``freeze_mode="zero_lr"``).
  Each group has a ``name`` (``"block.3/decay"``) and an ``lr_scale`` (its learning rate over the
  base one). The structure is the same whatever the learning-rate options, so the options never
  change which optimizer-state slot a parameter gets. ``Trainer`` logs the learning rate of
  group 0, which is the head's (``lr * head_lr_multiplier``) whenever the head trains.
- **Layer-wise learning rates** (ULMFiT's discriminative fine-tuning): block ``i`` of ``L`` gets
  ``lr * layer_lr_decay ** (L - 1 - i)`` (the top block gets ``lr``), the embeddings
  ``lr * layer_lr_decay ** L``, the head ``lr * head_lr_multiplier``. ``shared`` parameters
  (relative-position tables read by every block) get the top block's rate: they open together
  with the top block in gradual unfreezing. ULMFiT used ``layer_lr_decay = 1 / 2.6``. A tied
  tensor (``lm_head.weight`` = the input embedding) is one parameter, listed under the
  embeddings, so it gets the embeddings' rate even in a stage that opens it as part of the head.
- **Weight decay** follows ``Trainer``: none for biases and normalisation weights (parameters of
  ``nn.LayerNorm`` modules or whose name contains ``bias``/``layernorm``/``rmsnorm``/``norm``),
  plus none for the parameters of any module the anatomy recognised as a norm (RMSNorm classes).
- A coverage check (an ``AssertionError``, not a comment) proves the groups hold exactly the
  parameters asked for, each once.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import torch
from torch import nn

from freeze_policies.errors import FreezePolicyError
from freeze_policies.policies.registry import resolve_policy
from freeze_policies.structure.discover import Anatomy, anatomy
from freeze_policies.training.modes import optimizer_membership
from freeze_policies.training.options import (
    FreezeOptions,
    check_lr_options,
    freeze_options_from,
    warn_option_keywords,
)

# Trainer.get_decay_parameter_names' name rule (transformers 4.46 .. 5.x); a test keeps them equal.
NO_DECAY_PATTERNS = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")


def decay_parameter_names(model: nn.Module, anat: Anatomy | None = None) -> set[str]:
    """Names that get weight decay: ``Trainer``'s rule, minus the anatomy's norm parameters."""
    from transformers.trainer_pt_utils import get_parameter_names

    names = set(get_parameter_names(model, [nn.LayerNorm], list(NO_DECAY_PATTERNS)))
    return names - set(anat.norms) if anat is not None else names


def group_learning_rates(
    anat: Anatomy, layer_lr_decay: float = 1.0, head_lr_multiplier: float = 1.0
) -> dict[str, float]:
    """The learning-rate scale of each anatomy group (multiply by the base lr to get its lr)."""
    depth = anat.depth
    scales = {"head": head_lr_multiplier}
    for i in reversed(range(depth)):
        scales[f"block.{i}"] = layer_lr_decay ** (depth - 1 - i)
    scales["shared"] = 1.0
    scales["embeddings"] = layer_lr_decay**depth
    return scales


def _ulmfit_order(anat: Anatomy) -> list[tuple[str, list[str]]]:
    groups = anat.groups()
    order = ["head", *(f"block.{i}" for i in reversed(range(anat.depth))), "shared", "embeddings"]
    return [(name, groups.get(name, [])) for name in order]


def build_param_groups(
    model: nn.Module,
    trainable: Collection[str],
    *,
    lr: float,
    weight_decay: float,
    anat: Anatomy | None = None,
    layer_lr_decay: float = 1.0,
    head_lr_multiplier: float = 1.0,
    decay_names: Collection[str] | None = None,
    zero_lr_names: Collection[str] = (),
) -> list[dict]:
    """Optimizer parameter groups holding exactly ``trainable`` (and ``zero_lr_names`` at lr 0).

    ``trainable`` is every name that will ever train (see ``ever_trainable_names``). Without
    ``anat`` (and with default learning-rate options) the trainable parameters form two groups,
    ``trainable/decay`` and ``trainable/no_decay``, as in ``Trainer``. ``zero_lr_names`` are put in
    ``frozen/decay`` and ``frozen/no_decay`` groups with ``lr = 0`` and the usual weight decay:
    ``freeze_mode="zero_lr"``, the blog post's way of freezing (a LambdaLR scheduler multiplies the
    base lr 0 and keeps it 0). See the module docstring for the order and the learning rates.
    """
    check_lr_options(layer_lr_decay, head_lr_multiplier)
    trainable, zero_lr = set(trainable), set(zero_lr_names)
    params = dict(model.named_parameters())
    unknown = sorted((trainable | zero_lr) - params.keys())
    if unknown:
        raise FreezePolicyError(
            f"{len(unknown)} names are not parameters of {type(model).__name__}: "
            f"{', '.join(unknown[:3])}"
        )
    if trainable & zero_lr:
        raise FreezePolicyError(
            f"{len(trainable & zero_lr)} names are both trainable and frozen: "
            f"{', '.join(sorted(trainable & zero_lr)[:3])}"
        )
    if anat is None and (layer_lr_decay != 1.0 or head_lr_multiplier != 1.0):
        anat = anatomy(model)
    if decay_names is None:
        decay_names = decay_parameter_names(model, anat)
    decay_names = set(decay_names)

    if anat is not None:
        scales = group_learning_rates(anat, layer_lr_decay, head_lr_multiplier)
        sections = [(name, names, scales[name]) for name, names in _ulmfit_order(anat)]
    else:
        sections = [("trainable", list(params), 1.0)]
    order = {name: i for i, name in enumerate(params)}  # named_parameters order within a group

    groups: list[dict] = []

    def add(name: str, names: Iterable[str], scale: float, group_lr: float):
        for kind, decays in (("decay", True), ("no_decay", False)):
            chosen = sorted((n for n in names if (n in decay_names) == decays), key=order.get)
            if chosen:
                groups.append(
                    {
                        "params": [params[n] for n in chosen],
                        "lr": group_lr,
                        "initial_lr": group_lr,
                        "weight_decay": weight_decay if decays else 0.0,
                        "name": f"{name}/{kind}",
                        "lr_scale": scale,
                        "param_names": chosen,
                    }
                )

    for name, names, scale in sections:
        add(name, [n for n in names if n in trainable], scale, lr * scale)
    add("frozen", [n for n in params if n in zero_lr], 0.0, 0.0)

    _check_coverage(groups, trainable | zero_lr, params)
    return groups


def _check_coverage(groups: list[dict], wanted: set[str], params: dict[str, nn.Parameter]):
    """The groups hold exactly the wanted parameters, each once (an assert that survives -O)."""
    held = [n for group in groups for n in group["param_names"]]
    ids = [id(p) for group in groups for p in group["params"]]
    if len(held) != len(set(held)) or len(ids) != len(set(ids)) or set(held) != wanted:
        missing, extra = sorted(wanted - set(held)), sorted(set(held) - wanted)
        raise AssertionError(
            f"optimizer groups do not cover the trainable parameters exactly once: "
            f"missing {missing[:3]}, extra {extra[:3]}, duplicates {len(held) - len(set(held))}"
        )
    if any(params[n] is not p for g in groups for n, p in zip(g["param_names"], g["params"])):
        raise AssertionError("optimizer group names and tensors are out of step")


def optimizer_cls_and_kwargs(args, model: nn.Module):
    """``Trainer``'s optimizer class and keyword arguments for ``args.optim`` (``optim=`` works).

    Optimizers that build their own parameter groups (GaLore, LOMO, layer-wise, Muon-style
    factories) are refused: the groups would not be ours.
    """
    from transformers import Trainer

    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    try:
        from transformers.trainer_optimizer import is_optimizer_factory
    except ImportError:  # transformers < 5
        def is_optimizer_factory(_):
            return False
    if is_optimizer_factory(cls) or {"params", "model", "optimizer_dict"} & set(kwargs):
        raise FreezePolicyError(
            f"optim={args.optim!r} builds its own parameter groups, which a freeze policy cannot "
            "control; use an optimizer such as adamw_torch, adamw_torch_fused, adafactor or sgd"
        )
    return cls, dict(kwargs)


def create_optimizer(
    model: nn.Module,
    args,
    freeze_policy=None,
    *,
    freeze_options: FreezeOptions | dict | None = None,
    anat: Anatomy | None = None,
    cls_and_kwargs: tuple | None = None,
    decay_names: Collection[str] | None = None,
    layer_lr_decay: float | None = None,
    head_lr_multiplier: float | None = None,
    freeze_mode: str | None = None,
) -> torch.optim.Optimizer:
    """The optimizer ``FreezeTrainer`` builds, for a plain ``Trainer`` or a custom loop.

    ``args`` are ``TrainingArguments`` (``optim``, ``learning_rate``, ``weight_decay``, the Adam
    options). ``freeze_policy`` is a policy, a name, a ``{"name": ..., **options}`` dict, or None
    (every parameter that requires grad now trains). ``freeze_options`` (a ``FreezeOptions``)
    gives ``freeze_mode``, ``layer_lr_decay`` and ``head_lr_multiplier``; the keyword arguments
    of those names still work in its place but are deprecated (a ``FutureWarning`` once per
    process names the replacement), as on ``FreezeTrainer``. ``anat`` is the policy's anatomy of
    ``model`` when the caller has it (else it is traced here). ``cls_and_kwargs`` overrides the
    optimizer ``args.optim`` names; ``decay_names`` overrides who gets weight decay (default:
    ``decay_parameter_names``). Pass the result to ``Trainer(optimizers=(optimizer, None))``
    together with a ``FreezeScheduleCallback``.
    """
    warn_option_keywords("create_optimizer", freeze_mode=freeze_mode,
                         layer_lr_decay=layer_lr_decay, head_lr_multiplier=head_lr_multiplier)
    options = freeze_options_from(
        freeze_options,
        freeze_mode=freeze_mode,
        layer_lr_decay=layer_lr_decay,
        head_lr_multiplier=head_lr_multiplier,
    )
    policy = resolve_policy(freeze_policy)
    if policy is not None and anat is None:
        anat = policy.anatomy(model)
    cls, kwargs = cls_and_kwargs or optimizer_cls_and_kwargs(args, model)
    groups = build_param_groups(
        model,
        **optimizer_membership(model, policy, anat, options.freeze_mode),
        lr=args.learning_rate,
        weight_decay=args.weight_decay,
        anat=anat,
        layer_lr_decay=options.layer_lr_decay,
        head_lr_multiplier=options.head_lr_multiplier,
        decay_names=decay_names,
    )
    return cls(groups, **dict(kwargs))


def group_param_names(optimizer: torch.optim.Optimizer) -> dict[str, list[str]]:
    """Group name -> parameter names, for optimizers built by ``build_param_groups``."""
    return {g["name"]: list(g["param_names"]) for g in optimizer.param_groups if "name" in g}
