"""The launcher's arguments: ``ModelArguments``, ``DataArguments``, ``MethodArguments`` (with
``RunTrainingArguments``, ``transformers.TrainingArguments`` plus the output options), and the
checks each makes of its own fields. ``MethodArguments`` extends the library's ``FreezeOptions``,
so the freeze options' flags are its fields and their checks are the library's, made once.

Each dataclass checks in ``__post_init__`` what it can check alone, so a bad value is a one-line
``ConfigError`` naming it before any data or model is loaded; the checks across dataclasses and
of the training arguments are ``recipes.launcher.parsing``'s. ``MethodArguments`` settles the
method: by default ``freeze`` when a policy (or a budget) is given, ``peft`` when a PEFT method is,
else ``full``. The PEFT methods are the keys of ``recipes.launcher.peft_methods.PEFT_METHODS``.
``RECIPE_DEFAULTS`` are the recipe's own defaults for TrainingArguments; a config only says what
differs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib.util import find_spec

from freeze_policies import FreezeOptions
from freeze_policies.costs.budget import check_budget
from recipes.launcher.common import ConfigError, parse_mapping
from recipes.launcher.peft_methods import PEFT_METHODS
from recipes.launcher.run_dir import RunTrainingArguments

METHODS = ("full", "freeze", "peft")
BUDGET_FLAGS = {"max_step_ratio": "--budget_step_ratio", "max_memory_bytes": "--budget_memory_gb",
                "calibration_steps": "--budget_calibration_steps", "stack": "--budget_stack"}
RECIPE_DEFAULTS = {
    "output_dir": "outputs/run",
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 64,
    "learning_rate": 5e-5,
    "weight_decay": 0.01,
    "num_train_epochs": 1.0,
    "eval_strategy": "epoch",
    "save_strategy": "no",
    "logging_steps": 20,
    "seed": 42,
    "do_predict": True,
    "report_to": "tensorboard" if find_spec("tensorboard") else "none",
}


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="minilm",
        metadata={"help": "'minilm' or 'smollm2' (embedded, offline), a local folder or a hub id"},
    )
    task: str = field(
        default="classification",
        metadata={"help": "classification | causal_lm | seq2seq (an encoder-decoder: T5, BART) | "
                  "sft (a decoder on prompt/completion pairs); the tasks are "
                  "recipes.launcher.tasks.TASKS"},
    )
    max_length: int = field(
        default=128,
        metadata={"help": "max tokens per example (classification; sft: prompt, completion and "
                  "eos, the prompt cut from the left), block size (causal_lm) or max source "
                  "tokens (seq2seq)"},
    )
    max_target_length: int = field(
        default=64, metadata={"help": "seq2seq: max target tokens (longer targets are cut)"}
    )
    chat_template: bool = field(
        default=False,
        metadata={"help": "sft: render each prompt as a user turn with the tokenizer's chat "
                  "template (for an instruct model) instead of prompt, newline, completion"},
    )
    generations: int = field(
        default=5,
        metadata={"help": "sft: greedy generations recorded in results.json after training, for "
                  "the first this many distinct test prompts (0: none)"},
    )
    max_new_tokens: int = field(
        default=32, metadata={"help": "sft: at most this many tokens per generation"}
    )
    model_cache_dir: str | None = field(
        default=None, metadata={"help": "where converted checkpoints live (smollm2)"}
    )
    ignore_mismatched_sizes: bool = field(
        default=False,
        metadata={"help": "draw a new classification head when the checkpoint's head has another "
                  "number of labels than the data (as in transformers' run_glue)"},
    )

    def __post_init__(self):
        from recipes.launcher.tasks import TASKS

        choice("task", self.task, TASKS)
        positive_int("max_length", self.max_length)
        positive_int("max_target_length", self.max_target_length)
        positive_int("max_new_tokens", self.max_new_tokens)
        if isinstance(self.generations, bool) or not isinstance(self.generations, int) \
                or self.generations < 0:
            raise ConfigError(f"generations={self.generations!r} must be an integer >= 0")


@dataclass
class DataArguments:
    dataset: str = field(
        default="tweets",
        metadata={"help": "'tweets' or 'chatterbot' (embedded), a local file or a hub dataset id"},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "hub dataset config"})
    text_column: str = field(default="text", metadata={"help": "column holding the text"})
    label_column: str = field(default="label", metadata={"help": "column holding the label"})
    source_column: str = field(
        default="source", metadata={"help": "seq2seq: column holding the source (input) text"}
    )
    target_column: str = field(
        default="target", metadata={"help": "seq2seq: column holding the target (output) text"}
    )
    prompt_column: str = field(
        default="prompt", metadata={"help": "sft: column holding the prompt"}
    )
    completion_column: str = field(
        default="completion", metadata={"help": "sft: column holding the completion (the answer "
                                        "the loss is on)"}
    )
    data_seed_splits: int = field(
        default=42, metadata={"help": "seed of the train/validation/test split (not the run seed)"}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "subsample train"})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "subsample validation and test"}
    )
    max_validation_samples: int | None = field(
        default=None,
        metadata={"help": "evaluate on at most this many of the validation rows (a seeded random "
                  "subset of them; test keeps max_eval_samples)"},
    )

    def __post_init__(self):
        for name in ("max_train_samples", "max_eval_samples"):
            if getattr(self, name) is not None:
                positive_int(name, getattr(self, name))
        for name in ("dataset", "text_column", "label_column", "source_column", "target_column",
                     "prompt_column", "completion_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a non-empty string")


@dataclass
class MethodArguments(FreezeOptions):
    """The method and its options; the freeze options (freeze mode, layer-wise learning rates,
    audit, prefix cache, frozen dtype) are the library's ``FreezeOptions`` fields, checked by it."""

    method: str | None = field(
        default=None,
        metadata={"help": "full | freeze | peft; by default freeze if a policy is given, peft if a "
                  "peft_method is, else full"},
    )
    policy: str | None = field(
        default=None, metadata={"help": "freeze policy name (method=freeze), see list_policies()"}
    )
    policy_options: str | None = field(
        default=None, metadata={"help": "policy options: YAML mapping, or JSON on the command line"}
    )
    budget_step_ratio: float | None = field(
        default=None,
        metadata={"help": "pick bottom_n by budget: the shallowest frozen prefix whose predicted "
                  "step time is at most this fraction of full fine-tuning's step"},
    )
    budget_memory_gb: float | None = field(
        default=None,
        metadata={"help": "pick bottom_n by budget: parameters + gradients + optimizer state at "
                  "most this many GiB"},
    )
    budget_calibration_steps: int = field(
        default=0,
        metadata={"help": "measure the budget's pick against full fine-tuning on this many "
                  "forward+backward steps of a training batch, and go deeper if it misses"},
    )
    budget_stack: str | None = field(
        default=None,
        metadata={"help": "pick bottom_n by budget on a model with several stacks of blocks (an "
                  "encoder-decoder): the stack frozen from the bottom, e.g. encoder"},
    )
    peft_method: str | None = field(
        default=None,
        metadata={"help": " | ".join(PEFT_METHODS) + " (recipes/peft_methods.py)"},
    )
    peft_options: str | None = field(
        default=None, metadata={"help": "options of the PEFT config: YAML mapping or JSON"}
    )

    def __post_init__(self):
        self.policy_options = parse_mapping("policy_options", self.policy_options)
        self.peft_options = parse_mapping("peft_options", self.peft_options)
        budget = self.budget_step_ratio is not None or self.budget_memory_gb is not None
        check_budget(max_step_ratio=self.budget_step_ratio, max_memory=self.budget_memory_gb,
                     calibration_steps=self.budget_calibration_steps, stack=self.budget_stack,
                     names=BUDGET_FLAGS)
        if budget and self.policy:
            raise ConfigError(
                "budget_step_ratio / budget_memory_gb pick the policy (bottom_n); do not also "
                f"give policy={self.policy!r}"
            )
        if self.method is None:
            self.method = (
                "freeze" if self.policy or budget else "peft" if self.peft_method else "full"
            )
        if budget and self.method != "freeze":
            raise ConfigError(
                f"budget_step_ratio / budget_memory_gb need method='freeze', not {self.method!r}"
            )
        choice("method", self.method, METHODS)
        super().__post_init__()  # FreezeOptions: the freeze options, each checked once
        if self.method == "freeze" and not self.policy and not budget:
            raise ConfigError("method='freeze' needs a policy; see freeze_policies.list_policies()")
        if self.method != "freeze" and self.policy:
            raise ConfigError(
                f"policy={self.policy!r} is only used with method='freeze', not {self.method!r}"
            )
        if self.method == "peft":
            choice("peft_method", self.peft_method, tuple(PEFT_METHODS))
        elif self.peft_method:
            raise ConfigError(
                f"peft_method={self.peft_method!r} needs method='peft', not {self.method!r}"
            )
        for name in ("policy", "peft_method"):
            if getattr(self, name) is not None and not str(getattr(self, name)).strip():
                raise ConfigError(f"{name}={getattr(self, name)!r} is empty; give a name or leave "
                                  "it out")
        for options, needs in (("policy_options", "policy"), ("peft_options", "peft_method")):
            if getattr(self, options) and not getattr(self, needs):
                raise ConfigError(
                    f"{options}={getattr(self, options)!r} is given without {needs}; they would "
                    f"be ignored: add --{needs} or drop them"
                )

    @property
    def freeze_options(self) -> FreezeOptions:
        """The freeze options alone, as the trainer takes them."""
        return FreezeOptions.from_dict(dataclasses.asdict(self), ignore_unknown=True)


ARGUMENT_CLASSES = (ModelArguments, DataArguments, MethodArguments, RunTrainingArguments)


def choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}")


def positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r} must be an integer >= 1")
