"""The PEFT baselines, one entry each: which ``peft`` config builds it, with which options.

Adding a baseline is one entry in ``PEFT_METHODS`` plus the run config its ``config`` names: the
launcher's ``--peft_method`` choices, ``build_peft_model``, the config test and
``recipes/bench.py`` (the entries with ``bench_options``) all read this table.

How an entry becomes a model (``build_peft_model``), in order:

1. the options of the run (``peft_options``), then the entry's ``defaults`` where the run gives
   none, then its ``fixed`` options over both (DoRA is LoRA with ``use_dora=True``);
2. for classification, the head is trained in every method: its modules go to
   ``modules_to_save`` unless the run names them, or the method cannot save modules
   (``saves_head=False``: prefix tuning wraps the model itself; the head then trains through
   PEFT's own classifier handling);
3. an option the config class does not have is a one-line ``ConfigError`` listing some it has;
4. ``peft.get_peft_model``, then one no-grad forward on two tokens, since some methods fail only
   at their first forward (prefix tuning on a model without past key values).

``peft`` is imported only when a model is built, so the argument parser reads the table cheaply.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from recipes.launcher.common import ConfigError


@dataclass(frozen=True)
class PeftMethod:
    """One PEFT baseline as the launcher builds it."""

    config_class: str  # the peft config class, by name: peft.<config_class>
    config: str  # the reference run config of this baseline (relative to the repository)
    defaults: dict = field(default_factory=dict)  # options set when the run does not give them
    fixed: dict = field(default_factory=dict)  # options always set, over the run's
    saves_head: bool = True  # the classification head goes to modules_to_save
    adds_input_tokens: bool = False  # num_virtual_tokens lengthen every input sequence
    bench_options: dict | None = None  # how recipes/bench.py measures it; None: not benchmarked


LORA_BENCH = {"r": 8, "target_modules": ["query", "value"]}
PEFT_METHODS: dict[str, PeftMethod] = {
    "lora": PeftMethod("LoraConfig", "configs/tweets/minilm/lora.yaml", bench_options=LORA_BENCH),
    "dora": PeftMethod("LoraConfig", "configs/tweets/minilm/dora.yaml", fixed={"use_dora": True},
                       bench_options=LORA_BENCH),
    "ia3": PeftMethod("IA3Config", "configs/tweets/minilm/ia3.yaml", bench_options={}),
    "prefix_tuning": PeftMethod(
        "PrefixTuningConfig", "configs/chatterbot/smollm2/prefix_tuning.yaml",
        defaults={"num_virtual_tokens": 10}, saves_head=False,
    ),
    "prompt_tuning": PeftMethod(
        "PromptTuningConfig", "configs/tweets/minilm/prompt_tuning.yaml",
        defaults={"num_virtual_tokens": 10}, adds_input_tokens=True,
        bench_options={"num_virtual_tokens": 10},
    ),
}


def config_class(name: str):
    """The ``peft`` config class of baseline ``name``."""
    import peft

    return getattr(peft, PEFT_METHODS[name].config_class)


def peft_options(name: str, options: dict) -> dict:
    """The options a run of ``name`` builds its config with (before the classification head)."""
    entry = PEFT_METHODS[name]
    return {**entry.defaults, **options, **entry.fixed}


def added_tokens(name: str | None, options: dict) -> int:
    """Tokens the method adds to every input sequence (prompt tuning's virtual tokens), for
    pricing a step; 0 for every other method."""
    if name is None or not PEFT_METHODS[name].adds_input_tokens:
        return 0
    return peft_options(name, options).get("num_virtual_tokens", 0)


def build_peft_model(model, task: str, name: str, options: dict):
    """Wrap ``model`` with PEFT baseline ``name`` for ``task`` (classification | causal_lm |
    seq2seq: PEFT's SEQ_CLS, CAUSAL_LM, SEQ_2_SEQ_LM task types);
    the classification head trains in every method (see the module docstring)."""
    import peft

    from freeze_policies import anatomy

    entry = PEFT_METHODS[name]
    options = peft_options(name, options)
    from recipes.launcher.tasks import get_task

    entry_task = get_task(task)
    task_type = getattr(peft.TaskType, entry_task.peft_task_type)
    if entry_task.has_labels and entry.saves_head:
        head_modules = sorted({param.rsplit(".", 1)[0] for param in anatomy(model).head})
        options.setdefault("modules_to_save", head_modules)
    cls = config_class(name)
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ConfigError(
            f"peft_options {unknown} are not options of {cls.__name__} "
            f"(e.g. {', '.join(sorted(valid)[:8])} ...)"
        )
    try:
        wrapped = peft.get_peft_model(model, cls(task_type=task_type, **options))
        smoke_forward(wrapped)  # some methods fail only at the first forward
    except (ValueError, TypeError, RuntimeError) as error:
        raise ConfigError(f"peft_method={name!r}: {error}".splitlines()[0]) from None
    return wrapped


def smoke_forward(model) -> None:
    """One no-grad forward on two tokens (and two decoder tokens for an encoder-decoder), so
    incompatibilities surface before training."""
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = torch.tensor([[1, 2]], device=device)
    try:
        with torch.no_grad():
            encoder_decoder = getattr(model.config, "is_encoder_decoder", False)
            decoder = {"decoder_input_ids": ids} if encoder_decoder else {}
            model(input_ids=ids, attention_mask=torch.ones_like(ids), **decoder)
    finally:
        model.train(was_training)
