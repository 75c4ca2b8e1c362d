"""Before a resume loads anything: can the checkpoint reproduce this run?

A checkpoint of another model (its ``config.json`` against this run's model's), of another method
(a PEFT adapter against a freeze or full run), or of another policy, policy options or freeze mode
is a one-line error naming both sides; one saved by another number of processes is a one-line
warning (``freeze_policies.training.resume.check_checkpoint_run``). ``recipes.launcher.main``
calls ``check_resume`` once ``output_dir`` is settled (``recipes.launcher.run_dir``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from recipes.launcher.run_dir import OutputError, _first_local_process, logger

# Config keys that fix a model's shape: a checkpoint with other values is of another model.
SHAPE_KEYS = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "num_key_value_heads", "d_model", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
    "n_embd", "n_layer", "n_head", "vocab_size",
)


def _shape(config: dict) -> dict:
    return {key: config[key] for key in SHAPE_KEYS if config.get(key) is not None}


def check_resume(checkpoint: str | None, model_args, method_args) -> None:
    """Refuse a resume that cannot reproduce the run, warn about another number of processes
    (module docstring); nothing is loaded but config files."""
    if checkpoint is None:
        return
    from freeze_policies import FreezePolicyError, get_policy
    from freeze_policies.policies.registry import policy_spec
    from freeze_policies.training.resume import check_checkpoint_run
    from recipes.launcher.models import resolve_model_path

    folder = Path(checkpoint)
    name = model_args.model_name_or_path
    adapter = folder / "adapter_config.json"
    method = method_args.method
    if adapter.is_file() != (method == "peft"):
        saved = "a PEFT adapter" if adapter.is_file() else "a whole model (no PEFT adapter)"
        raise OutputError(
            f"checkpoint {checkpoint!r} holds {saved}, but this run's method is {method!r}: "
            "resume with the method the checkpoint was trained with, or start a new run"
        )
    try:
        path = resolve_model_path(name, model_args.model_cache_dir)
        if adapter.is_file():
            base = json.loads(adapter.read_text()).get("base_model_name_or_path")
            if base and Path(base).expanduser().absolute() != Path(path).expanduser().absolute():
                raise OutputError(
                    f"checkpoint {checkpoint!r} is an adapter of model {base!r}, this run's model "
                    f"is {name!r} ({path}): resume with --model_name_or_path {base}, or start a "
                    "new run"
                )
        elif (folder / "config.json").is_file():
            from transformers import AutoConfig

            theirs = _shape(json.loads((folder / "config.json").read_text()))
            ours = _shape(AutoConfig.from_pretrained(path).to_dict())
            differ = [key for key in SHAPE_KEYS if theirs.get(key) != ours.get(key)]
            if differ:
                shown = ", ".join(f"{key}={theirs.get(key)!r}" for key in differ[:3])
                mine = ", ".join(f"{key}={ours.get(key)!r}" for key in differ[:3])
                raise OutputError(
                    f"checkpoint {checkpoint!r} is of another model ({shown}) than this run's "
                    f"{name!r} ({mine}): resume with the model it was trained from, or start a "
                    "new run"
                )
    except (OSError, ValueError) as error:
        if isinstance(error, OutputError):
            raise
        # a model that cannot be read here (a Hub id offline) is the model loader's to report
    budget = method_args.budget_step_ratio is not None or method_args.budget_memory_gb is not None
    try:
        if budget:  # the budget picks bottom_n once the model is loaded: compare the name
            spec = {"name": "bottom_n"}
        elif method == "freeze":
            spec = policy_spec(get_policy(method_args.policy, **method_args.policy_options))
        else:
            spec = None
        warning = check_checkpoint_run(
            folder, policy_spec=spec, freeze_mode=method_args.freeze_mode,
            world_size=int(os.environ.get("WORLD_SIZE", "1")), check_options=not budget,
        )
    except FreezePolicyError as error:
        raise OutputError(str(error)) from None
    if warning and _first_local_process() and os.environ.get("RANK", "0") == "0":
        logger.warning("%s", warning)


