"""Freeze deltas: save only what a freeze policy trained, load it back onto the base model.

A model fine-tuned under a freeze policy differs from its base only in the parameters the policy
trained (and in any parameter the base checkpoint does not have, such as a new classification
head). ``save_freeze_delta`` stores those tensors and the base model's id or path, like a PEFT
adapter, so the folder's size is the trained share of the model; ``load_freeze_delta`` rebuilds
the fine-tuned model in one call:

>>> save_freeze_delta(model, "out", trainer.freeze_callback.ever_trainable)
>>> model = load_freeze_delta("out")          # the base from its id/path, then the delta

A folder holds ``freeze_delta.safetensors`` (the tensors, by ``named_parameters`` /
``named_buffers`` name) and ``freeze_delta.json`` (the base, the model class, its config, the
names, counts and the policy).

Choices: ``save_freeze_delta`` loads the base once more and compares every tensor that did not
train with ``torch.equal``; those that differ (a head the base lacks, a buffer that moved) are
saved too and listed under ``"untrained_differences"``, so base + delta equals the model bit for
bit by construction, whatever the policy left frozen. Pass ``compare_with_base=False`` to skip
that load (then only ``names`` are saved). The model's config is stored in the JSON file, not as a
``config.json``, so the folder is never mistaken for a complete checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from freeze_policies.errors import FreezePolicyError
from freeze_policies.policies.base import Policy
from freeze_policies.policies.registry import policy_spec
from freeze_policies.policies.trainable import is_peft_model

DELTA_WEIGHTS = "freeze_delta.safetensors"
DELTA_CONFIG = "freeze_delta.json"
FORMAT = "freeze_policies.training.delta/1"


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter (tied ones once) and buffer of ``model`` by name."""
    found = dict(model.named_parameters())
    found.update(model.named_buffers())
    return found


def _load_base(model_class, base: str, config, **kwargs):
    # from_pretrained draws random values for weights the checkpoint lacks: keep the caller's
    # random stream where it was.
    with torch.random.fork_rng(devices=[]):
        return model_class.from_pretrained(base, config=config, **kwargs)


def save_freeze_delta(
    model: nn.Module,
    save_directory: str | os.PathLike,
    names,
    *,
    base_model_name_or_path: str | None = None,
    policy=None,
    compare_with_base: bool = True,
) -> dict:
    """Save the tensors ``names`` of ``model`` (and, by default, every other tensor that differs
    from the base) to ``save_directory``; return the JSON record written with them.

    ``names``: the parameters that trained, e.g. ``trainer.freeze_callback.ever_trainable``.
    ``base_model_name_or_path``: what ``from_pretrained`` loads the base from (default: the
    model's ``name_or_path``). ``policy``: recorded in the JSON file (a ``Policy`` or any
    JSON-able value).
    """
    from safetensors.torch import save_file

    if is_peft_model(model):
        raise FreezePolicyError(
            "save_freeze_delta takes a model trained under a freeze policy, not a PEFT model: "
            "save the adapter with model.save_pretrained"
        )
    base = base_model_name_or_path or getattr(model, "name_or_path", None) or \
        getattr(model.config, "_name_or_path", None)
    if not base:
        raise FreezePolicyError(
            "save_freeze_delta needs the base model's id or path: pass base_model_name_or_path"
        )
    tensors = _tensors(model)
    names = set(names)
    unknown = sorted(names - set(tensors))
    if unknown:
        raise FreezePolicyError(
            f"save_freeze_delta: {len(unknown)} names are not parameters of "
            f"{type(model).__name__} ({', '.join(unknown[:3])})"
        )
    dtype = next(model.parameters()).dtype
    differences: list[str] = []
    if compare_with_base:
        reference = _tensors(_load_base(type(model), base, model.config, dtype=dtype))
        differences = sorted(
            name for name, tensor in tensors.items()
            if name not in names and (
                name not in reference
                or reference[name].shape != tensor.shape
                or not torch.equal(reference[name], tensor.detach().cpu())
            )
        )
    saved = sorted(names | set(differences))
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(
        {name: tensors[name].detach().cpu().contiguous() for name in saved},
        str(directory / DELTA_WEIGHTS),
        metadata={"format": FORMAT},
    )
    total = sum(p.numel() for p in model.parameters())
    record = {
        "format": FORMAT,
        "base_model_name_or_path": str(base),
        "model_class": type(model).__name__,
        "dtype": str(dtype).removeprefix("torch."),
        "policy": policy_spec(policy) if isinstance(policy, Policy) else policy,
        "trained": sorted(names),
        "untrained_differences": differences,
        "saved_params": sum(tensors[name].numel() for name in saved),
        "total_params": total,
        "config": model.config.to_dict(),
    }
    (directory / DELTA_CONFIG).write_text(json.dumps(record, indent=2, default=str) + "\n")
    return record


def read_freeze_delta(directory: str | os.PathLike) -> dict:
    """The JSON record of a delta folder (``FreezePolicyError`` if it is not one)."""
    path = Path(directory) / DELTA_CONFIG
    if not path.is_file():
        raise FreezePolicyError(f"{str(directory)!r} holds no freeze delta ({DELTA_CONFIG})")
    record = json.loads(path.read_text())
    if record.get("format") != FORMAT:
        raise FreezePolicyError(
            f"{path} has format {record.get('format')!r}, not {FORMAT!r}"
        )
    return record


def apply_freeze_delta(model: nn.Module, directory: str | os.PathLike) -> nn.Module:
    """Copy the delta's tensors into ``model`` (the base, already loaded); return ``model``."""
    from safetensors.torch import load_file

    read_freeze_delta(directory)
    delta = load_file(str(Path(directory) / DELTA_WEIGHTS))
    targets = _tensors(model)
    missing = sorted(set(delta) - set(targets))
    if missing:
        raise FreezePolicyError(
            f"the freeze delta in {str(directory)!r} has {len(missing)} tensors "
            f"{type(model).__name__} lacks ({', '.join(missing[:3])}): not its base model"
        )
    wrong = [n for n, t in delta.items() if t.shape != targets[n].shape]
    if wrong:
        raise FreezePolicyError(
            f"the freeze delta's {wrong[0]} has shape {tuple(delta[wrong[0]].shape)}, the model's "
            f"{tuple(targets[wrong[0]].shape)}: not its base model"
        )
    with torch.no_grad():
        for name, tensor in delta.items():
            targets[name].copy_(tensor)
    return model


def load_freeze_delta(
    directory: str | os.PathLike, base_model_name_or_path: str | None = None, **kwargs
) -> nn.Module:
    """The fine-tuned model: the base (from the recorded id or path, or
    ``base_model_name_or_path``) loaded with the recorded class and config, plus the delta.
    ``kwargs`` go to ``from_pretrained`` (``dtype`` defaults to the saved one)."""
    import transformers

    record = read_freeze_delta(directory)
    config_dict = dict(record["config"])
    config = transformers.CONFIG_MAPPING[config_dict["model_type"]].from_dict(config_dict)
    model_class = getattr(transformers, record["model_class"])
    kwargs.setdefault("dtype", getattr(torch, record["dtype"]))
    base = base_model_name_or_path or record["base_model_name_or_path"]
    return apply_freeze_delta(_load_base(model_class, base, config, **kwargs), directory)


__all__ = [
    "DELTA_CONFIG",
    "DELTA_WEIGHTS",
    "apply_freeze_delta",
    "load_freeze_delta",
    "read_freeze_delta",
    "save_freeze_delta",
]
