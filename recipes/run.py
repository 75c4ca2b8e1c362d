"""One launcher for full fine-tuning, every freeze policy and the PEFT baselines.

    accelerate launch recipes/run.py --config configs/tweets/minilm/bottom_n.yaml [--field value]
    python recipes/run.py --config ... [--field value]

YAML keys are the fields of ``ModelArguments``, ``DataArguments``, ``MethodArguments`` and
``transformers.TrainingArguments``; flags override the YAML; unknown keys are an error. Every
method goes through the same data, seed, trainer (``FreezeTrainer``), evaluation and outputs, so
differences between results are the method's. The recipe's own defaults for TrainingArguments are
in ``RECIPE_DEFAULTS``; a config only says what differs.

Outputs in ``output_dir`` (``recipes.outputs``): the saved model (the whole model, the PEFT
adapter, or with ``--save_trainable_only`` a freeze delta) with its tokenizer and a model card,
unless ``--save_model false``; ``results.json`` (written atomically, last, only after a
successful run); the trainer's logs (TensorBoard when installed); checkpoints only if asked
(``save_strategy`` defaults to "no"). ``--resume_from_checkpoint PATH|true`` resumes; a non-empty
``output_dir`` is refused unless ``--overwrite_output_dir true`` or a resume is asked for.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import os
import platform
import resource
import sys
import tempfile
from dataclasses import dataclass, field
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `recipes` and `freeze_policies` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments

from recipes.outputs import (
    OutputError,
    RunOutputs,
    RunTrainingArguments,
    check_output_options,
    open_run_dir,
    total_params,
    write_json_atomic,
)

METHODS = ("full", "freeze", "peft")
PEFT_METHODS = ("lora", "dora", "ia3", "prefix_tuning", "prompt_tuning")
FREEZE_MODES = ("requires_grad", "zero_lr", "zero_grad")
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


class ConfigError(ValueError):
    """Bad configuration: one line naming the bad value and the valid choices."""


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="minilm",
        metadata={"help": "'minilm' or 'smollm2' (embedded, offline), a local folder or a hub id"},
    )
    task: str = field(default="classification", metadata={"help": "classification | causal_lm"})
    max_length: int = field(
        default=128, metadata={"help": "max tokens per example (classification) or block size"}
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
        from recipes.models import TASKS

        _choice("task", self.task, TASKS)
        _positive_int("max_length", self.max_length)


@dataclass
class DataArguments:
    dataset: str = field(
        default="tweets",
        metadata={"help": "'tweets' or 'chatterbot' (embedded), a local file or a hub dataset id"},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "hub dataset config"})
    text_column: str = field(default="text", metadata={"help": "column holding the text"})
    label_column: str = field(default="label", metadata={"help": "column holding the label"})
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
                _positive_int(name, getattr(self, name))
        for name in ("dataset", "text_column", "label_column"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a non-empty string")


@dataclass
class MethodArguments:
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
    freeze_mode: str = field(
        default="requires_grad", metadata={"help": "requires_grad | zero_lr | zero_grad"}
    )
    layer_lr_decay: float = field(default=1.0, metadata={"help": "lr factor per block downwards"})
    head_lr_multiplier: float = field(default=1.0, metadata={"help": "lr factor for the head"})
    audit: str = field(
        default="raise",
        metadata={"help": "frozen-weights audit when a frozen weight moved: raise | log | off"},
    )
    cache_frozen_prefix: bool = field(
        default=False,
        metadata={"help": "cache the frozen prefix's output per example and train the top from "
                  "it (the prefix runs in eval mode); needs a policy with a frozen prefix"},
    )
    prefix_cache_dir: str | None = field(
        default=None, metadata={"help": "keep the prefix cache on disk here instead of in RAM"}
    )
    frozen_dtype: str | None = field(
        default=None,
        metadata={"help": "bfloat16 | float16: store frozen weights in it, trainable ones in "
                  "float32 (needs --bf16 or --fp16); default: dtypes as loaded"},
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
    peft_method: str | None = field(
        default=None, metadata={"help": "lora | dora | ia3 | prefix_tuning | prompt_tuning"}
    )
    peft_options: str | None = field(
        default=None, metadata={"help": "options of the PEFT config: YAML mapping or JSON"}
    )

    def __post_init__(self):
        self.policy_options = _mapping("policy_options", self.policy_options)
        self.peft_options = _mapping("peft_options", self.peft_options)
        budget = self.budget_step_ratio is not None or self.budget_memory_gb is not None
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
        _choice("method", self.method, METHODS)
        _choice("freeze_mode", self.freeze_mode, FREEZE_MODES)
        _choice("audit", self.audit, ("raise", "log", "off"))
        if self.frozen_dtype is not None:
            _choice("frozen_dtype", self.frozen_dtype, ("bfloat16", "float16"))
        if self.method == "freeze" and not self.policy and not budget:
            raise ConfigError("method='freeze' needs a policy; see freeze_policies.list_policies()")
        if self.method != "freeze" and self.policy:
            raise ConfigError(
                f"policy={self.policy!r} is only used with method='freeze', not {self.method!r}"
            )
        if self.method == "peft":
            _choice("peft_method", self.peft_method, PEFT_METHODS)
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


ARGUMENT_CLASSES = (ModelArguments, DataArguments, MethodArguments, RunTrainingArguments)


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}")


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}={value!r} must be an integer >= 1")


def _mapping(name: str, value) -> dict:
    if value is None or isinstance(value, dict):
        return dict(value or {})
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ConfigError(f"{name}={value!r} is not a mapping (e.g. '{{\"n\": 4}}')")
    return parsed


class RecipeParser(HfArgumentParser):
    """``HfArgumentParser`` whose usage errors are one-line ``ConfigError``s, not the usage of
    every TrainingArguments flag followed by ``exit(2)``."""

    def error(self, message):
        raise ConfigError(f"{message}; see python recipes/run.py --help")


def make_parser() -> HfArgumentParser:
    parser = RecipeParser(ARGUMENT_CLASSES)
    parser.add_argument("--config", help="YAML file of fields; flags override it")
    return parser


def parse_args(argv: list[str] | None = None):
    """(model_args, data_args, method_args, training_args) from ``--config`` YAML and flags.

    Everything that can be checked without data or a model is checked here, so a bad value
    costs no model load: YAML syntax and value types, the argument dataclasses' own checks, the
    training arguments (``check_training_arguments``), output_dir writability and the launch
    (``freeze_policies.distributed.check_launch``).
    """
    parser = make_parser()
    known = {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls)}
    config_path = parser.parse_known_args(argv)[0].config
    defaults = dict(RECIPE_DEFAULTS)
    if config_path:
        defaults.update(_typed(parser, read_config(config_path, known), config_path))
    parser.set_defaults(**defaults)
    rest = parser.parse_known_args(argv)[1]
    if rest:
        flag = next((r for r in rest if r.startswith("--")), rest[0]).split("=")[0]
        close = difflib.get_close_matches(flag.lstrip("-"), known, n=1)
        hint = f" (did you mean --{close[0]}?)" if close else ""
        raise ConfigError(f"unknown arguments {rest}{hint}; see python recipes/run.py --help")
    try:
        *parsed, _config = parser.parse_args_into_dataclasses(argv)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:  # TrainingArguments' own checks, often multi-line
        raise ConfigError(_first_line(error)) from None
    check_training_arguments(parsed[3])
    from freeze_policies.distributed import check_launch

    try:
        check_launch(use_cpu=bool(parsed[3].use_cpu))
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return parsed


def read_config(config_path: str, known: set[str]) -> dict:
    """The ``--config`` YAML as a mapping of known keys; one-line ``ConfigError`` otherwise."""
    path = Path(config_path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"config file {config_path!r} {what}")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"config file {config_path!r} is not UTF-8 text") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or _first_line(error)
        raise ConfigError(f"config file {config_path!r} is not valid YAML: {problem}{where}") \
            from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {config_path!r} is not a YAML mapping of field: value")
    unknown = sorted(str(key) for key in loaded if key not in known)
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"unknown key {', '.join(unknown)}{hint} in {config_path}; valid keys: fields of "
            "ModelArguments, DataArguments, MethodArguments and TrainingArguments "
            "(python recipes/run.py --help)"
        )
    return loaded


def _typed(parser, loaded: dict, config_path: str) -> dict:
    """YAML scalars converted by the flag's own type, as if given on the command line: a
    string where a number belongs (YAML reads ``1e-4`` as a string) is parsed, a value of the
    wrong kind is a ``ConfigError`` naming the key."""
    actions = {action.dest: action for action in parser._actions}
    typed = {}
    for key, value in loaded.items():
        action = actions[key]
        convert = action.type if callable(action.type) else None
        if value is None or convert is None or isinstance(value, (dict, list)):
            typed[key] = value
            continue
        bad = (convert in (int, float) and isinstance(value, bool)) or (
            convert is int and isinstance(value, float) and not value.is_integer()
        )
        if convert is int and isinstance(value, float) and not bad:
            value = int(value)
        try:
            converted = None if bad else convert(str(value) if convert is not bool else value)
        except (ValueError, TypeError, AttributeError, argparse.ArgumentTypeError):
            bad = True
        if not bad and action.choices is not None and converted not in action.choices:
            choices = ", ".join(str(choice) for choice in action.choices)
            raise ConfigError(f"{key}={value!r} in {config_path} is not one of {choices}")
        if bad:
            kind = getattr(convert, "__name__", "value").replace("string_to_bool", "bool")
            raise ConfigError(f"{key}={value!r} in {config_path} is not a valid {kind}")
        typed[key] = converted
    return typed


def check_training_arguments(args: TrainingArguments) -> None:
    """The TrainingArguments a run would otherwise reject late (after the model is built, or in
    ``train()``) or not at all, each named by its flag; then output_dir's writability."""
    lr = args.learning_rate
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr >= 0):
        raise ConfigError(f"learning_rate={lr!r} must be a number >= 0 (e.g. 5e-5)")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size",
                 "gradient_accumulation_steps"):
        _positive_int(name, getattr(args, name))
    for name in ("weight_decay", "max_grad_norm"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{name}={value!r} must be a number >= 0")
    if args.max_steps is not None and args.max_steps <= 0 and not args.num_train_epochs > 0:
        raise ConfigError(
            f"num_train_epochs={args.num_train_epochs!r} trains nothing; give num_train_epochs "
            "> 0 or max_steps >= 1"
        )
    if not 0 <= args.seed < 2**32:
        raise ConfigError(f"seed={args.seed!r} must be in 0..{2**32 - 1}")
    check_output_dir(args.output_dir)


def check_output_dir(output_dir: str) -> None:
    """``ConfigError`` if ``output_dir`` cannot be created or written; creates nothing.

    Probes the directory, or its nearest existing ancestor when it does not exist yet, with a
    temporary file that is removed at once.
    """
    path = Path(output_dir).expanduser()
    probe = path
    while not os.path.exists(probe) and probe.parent != probe:  # False where access is denied
        probe = probe.parent
    if not probe.is_dir():
        what = "is a file" if probe == path else f"cannot be created: {probe} is a file"
        raise ConfigError(f"output_dir={output_dir!r} {what}; give a directory")
    try:
        handle, tmp = tempfile.mkstemp(dir=probe, prefix=".write-test-")
    except OSError as error:
        where = "" if probe == path else f" ({probe} does not allow creating it)"
        raise ConfigError(
            f"output_dir={output_dir!r} is not writable{where}: {error.strerror}; give another "
            "--output_dir"
        ) from None
    os.close(handle)
    os.unlink(tmp)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# -- building the run -------------------------------------------------------------------------


def load_data(model_args, data_args):
    from recipes import data

    common = dict(
        text_column=data_args.text_column,
        dataset_config=data_args.dataset_config,
        seed=data_args.data_seed_splits,
        max_train_samples=data_args.max_train_samples,
        max_eval_samples=data_args.max_eval_samples,
    )
    if model_args.task == "classification":
        return data.load_classification_splits(
            data_args.dataset, label_column=data_args.label_column, **common
        )
    return data.load_causal_lm_splits(data_args.dataset, **common), None


def build_peft_model(model, model_args, method_args):
    """Wrap ``model`` with the PEFT method; the classification head trains in every method."""
    import peft

    from freeze_policies import anatomy

    task_type = (
        peft.TaskType.SEQ_CLS if model_args.task == "classification" else peft.TaskType.CAUSAL_LM
    )
    options = dict(method_args.peft_options)
    if model_args.task == "classification":
        head_modules = sorted({name.rsplit(".", 1)[0] for name in anatomy(model).head})
        options.setdefault("modules_to_save", head_modules)
    name = method_args.peft_method
    config_cls = {
        "lora": peft.LoraConfig,
        "dora": peft.LoraConfig,
        "ia3": peft.IA3Config,
        "prefix_tuning": peft.PrefixTuningConfig,
        "prompt_tuning": peft.PromptTuningConfig,
    }[name]
    if name == "dora":
        options["use_dora"] = True
    if name in ("prefix_tuning", "prompt_tuning"):
        options.setdefault("num_virtual_tokens", 10)
        options.pop("modules_to_save", None) if name == "prefix_tuning" else None
    valid = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(options) - valid)
    if unknown:
        raise ConfigError(
            f"peft_options {unknown} are not options of {config_cls.__name__} "
            f"(e.g. {', '.join(sorted(valid)[:8])} ...)"
        )
    try:
        wrapped = peft.get_peft_model(model, config_cls(task_type=task_type, **options))
        smoke_forward(wrapped)  # some methods fail only at the first forward
    except (ValueError, TypeError, RuntimeError) as error:
        raise ConfigError(f"peft_method={name!r}: {error}".splitlines()[0]) from None
    return wrapped


def smoke_forward(model) -> None:
    """One no-grad forward on two tokens, so incompatibilities surface before training."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = torch.tensor([[1, 2]], device=device)
    try:
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        model.train(was_training)


def environment() -> dict:
    versions = {
        p: version(p)
        for p in ("torch", "transformers", "peft", "accelerate", "datasets", "evaluate")
    }
    hardware = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        hardware["gpu"] = torch.cuda.get_device_name(0)
        hardware["gpu_count"] = torch.cuda.device_count()
    return {"versions": versions, "hardware": hardware, "python": platform.python_version()}


def prepare(model_args, data_args, method_args, training_args):
    """Data, model, method and trainer; every input error surfaces here, before training."""
    from transformers import DataCollatorWithPadding, default_data_collator, set_seed

    from freeze_policies import get_policy
    from recipes import data, models
    from recipes.metrics import make_compute_metrics
    from recipes.outputs import RunTrainer

    _choice("task", model_args.task, models.TASKS)
    # Seed before anything random is built (the classification head, LoRA's A matrices, prompt
    # embeddings): Trainer seeds only in its __init__, after the model exists.
    set_seed(training_args.seed, deterministic=training_args.full_determinism)
    policy = (
        get_policy(method_args.policy, **method_args.policy_options)
        if method_args.method == "freeze" and method_args.policy
        else None
    )
    splits, label_names = load_data(model_args, data_args)
    model, tokenizer = models.load_model_and_tokenizer(
        model_args.model_name_or_path,
        model_args.task,
        label_names=label_names,
        cache_dir=model_args.model_cache_dir,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
    )
    if model_args.task == "classification":
        tokenized = data.tokenize_classification(splits, tokenizer, model_args.max_length)
        collator = DataCollatorWithPadding(tokenizer)
        if data_args.max_validation_samples is not None:
            validation = tokenized["validation"]
            if data_args.max_validation_samples < len(validation):
                tokenized["validation"] = validation.shuffle(
                    seed=data_args.data_seed_splits
                ).select(range(data_args.max_validation_samples))
    else:
        tokenized = data.tokenize_causal_lm(splits, tokenizer, model_args.max_length)
        collator = default_data_collator
    if method_args.method == "peft":
        model = build_peft_model(model, model_args, method_args)
    budget = None
    if method_args.budget_step_ratio is not None or method_args.budget_memory_gb is not None:
        budget = choose_by_budget(model, tokenized["train"], collator, model_args, method_args,
                                  training_args)
        policy = budget.policy  # None: full fine-tuning fits the budget
        # report what runs: bottom_n with the chosen n, or full fine-tuning
        method_args.method = "freeze" if policy is not None else "full"
        method_args.policy = policy.name if policy is not None else None
        method_args.policy_options = policy.options() if policy is not None else {}
    if policy is not None:  # check the policy against this model before any output is made
        policy.trainable_names(policy.anatomy(model))
    trainer = RunTrainer(
        model=model,
        args=training_args,
        train_dataset=tokenized["train"],
        eval_dataset=tokenized["validation"],
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=make_compute_metrics(model_args.task),
        freeze_policy=policy,
        freeze_mode=method_args.freeze_mode,
        layer_lr_decay=method_args.layer_lr_decay,
        head_lr_multiplier=method_args.head_lr_multiplier,
        audit=method_args.audit,
        cache_frozen_prefix=method_args.cache_frozen_prefix,
        prefix_cache_dir=method_args.prefix_cache_dir,
        frozen_dtype=method_args.frozen_dtype,
    )
    if model_args.task == "classification":
        # Sequence classifiers average their loss per batch; they take **kwargs, so Trainer would
        # assume they consume num_items_in_batch and scale the loss by the world size under DDP.
        trainer.model_accepts_loss_kwargs = False
    trainer.budget_choice = budget
    return trainer, tokenized


def choose_by_budget(model, train, collator, model_args, method_args, training_args):
    """bottom_n picked by ``freeze_policies.budget`` from the budget flags; printed on rank 0."""
    from freeze_policies.budget import choose_frozen_depth

    batch = None
    if method_args.budget_calibration_steps > 0:
        rows = [train[i] for i in range(min(len(train), training_args.per_device_train_batch_size))]
        batch = collator(rows)
    gib = method_args.budget_memory_gb
    choice = choose_frozen_depth(
        model,
        max_step_ratio=method_args.budget_step_ratio,
        max_memory_bytes=int(gib * 2**30) if gib is not None else None,
        seq_len=model_args.max_length,
        batch_size=training_args.per_device_train_batch_size,
        calibrate=batch,
        calibration_steps=method_args.budget_calibration_steps,
    )
    if training_args.process_index == 0:
        print(f"\n{choice}\n", flush=True)
    return choice


def policy_counts(trainer, summary) -> dict:
    """Trainable counts as the policy means them: under zero_lr / zero_grad every parameter
    requires grad, but only the policy's set is updated. ``trainable_params_max`` counts every
    parameter some stage of a schedule trains."""
    callback = trainer.freeze_callback
    if callback.policy is None:
        return {"trainable_params": summary.trainable, "trainable_params_max": summary.trainable}
    sizes = {name: p.numel() for name, p in trainer.model.named_parameters()}
    return {
        "trainable_params": sum(sizes[n] for n in callback.trainable_at(0)),
        "trainable_params_max": sum(sizes[n] for n in callback.ever_trainable),
    }


def main(argv: list[str] | None = None) -> dict:
    """Run one fine-tuning job; return (and write) its results."""
    model_args, data_args, method_args, training_args = parse_args(argv)
    try:
        check_output_options(method_args.method, training_args)
        run_dir = open_run_dir(training_args)
    except OutputError as error:
        raise ConfigError(str(error)) from None
    try:
        return run(model_args, data_args, method_args, training_args, run_dir, argv)
    except BaseException:
        run_dir.failed()  # no empty directory, no temporary file; checkpoints stay for a resume
        raise


def run(model_args, data_args, method_args, training_args, run_dir, argv) -> dict:
    """``main`` once ``output_dir`` is settled: build, train (or resume), evaluate, save."""
    from freeze_policies import predict_cost, summarize
    from recipes.metrics import perplexity
    from recipes.models import resolve_model_path

    results_path = run_dir.path / "results.json"
    try:
        trainer, tokenized = prepare(model_args, data_args, method_args, training_args)
    except (ValueError, OSError) as error:  # bad input, found before training: one line
        raise ConfigError(str(error).strip().splitlines()[0]) from error
    summary = summarize(trainer.model)
    prompt_tokens = method_args.peft_options.get("num_virtual_tokens", 0)
    callback = trainer.freeze_callback
    preview = predict_cost(
        trainer.model,
        callback.trainable_at(0) if callback.policy is not None else None,
        seq_len=model_args.max_length + prompt_tokens,
        batch_size=training_args.per_device_train_batch_size,
    )
    if trainer.is_world_process_zero():
        print(f"\n{summary}\n\n{preview}\n", flush=True)

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    train_output = trainer.train(resume_from_checkpoint=run_dir.checkpoint)
    validation = trainer.evaluate(tokenized["validation"], metric_key_prefix="eval")
    test = (  # do_predict=False (the sweep's short runs): the test split is never read
        trainer.evaluate(tokenized["test"], metric_key_prefix="test")
        if training_args.do_predict else {}
    )
    for metrics, prefix in ((validation, "eval"), (test, "test")):
        if model_args.task == "causal_lm" and metrics:
            metrics[f"{prefix}_perplexity"] = perplexity(metrics[f"{prefix}_loss"])
    outputs = None
    if training_args.save_model:
        config = trainer.model.config
        outputs = RunOutputs(
            output_dir=run_dir.path,
            method=method_args.method,
            base_model=model_args.model_name_or_path,
            base_path=resolve_model_path(model_args.model_name_or_path,
                                         model_args.model_cache_dir),
            task=model_args.task,
            trainable_only=training_args.save_trainable_only,
            label_config={"id2label": config.id2label, "label2id": config.label2id,
                          "pad_token_id": config.pad_token_id}
            if model_args.task == "classification" else {},
        )
        trainer.run_outputs = outputs
        trainer.save_model()  # RunTrainer: the model, the adapter or the delta, and the tokenizer

    audit = getattr(trainer, "frozen_audit", None)
    timing = ("_runtime", "_per_second")
    results = {
        "method": method_args.method,
        "policy": method_args.policy,
        "policy_options": method_args.policy_options,
        "freeze_mode": method_args.freeze_mode if method_args.method == "freeze" else None,
        "peft_method": method_args.peft_method,
        "peft_options": method_args.peft_options,
        "command": " ".join(["recipes/run.py", *(sys.argv[1:] if argv is None else argv)]),
        "model": model_args.model_name_or_path,
        "task": model_args.task,
        "dataset": data_args.dataset,
        "seed": training_args.seed,
        "learning_rate": training_args.learning_rate,
        "max_steps": trainer.state.max_steps,
        **policy_counts(trainer, summary),
        "total_params": total_params(trainer.model),
        "groups": summary.as_dict()["groups"],
        "cost_preview": preview.as_dict(),
        "budget": trainer.budget_choice.as_dict() if trainer.budget_choice else None,
        **{k: v for k, v in {**validation, **test}.items() if not k.endswith(timing)},
        "train_loss": train_output.training_loss,
        "train_runtime": train_output.metrics["train_runtime"],
        "train_samples_per_second": train_output.metrics["train_samples_per_second"],
        "train_steps_per_second": train_output.metrics["train_steps_per_second"],
        **peak_memory(),
        **getattr(trainer, "cost_figures", {}),
        "frozen_audit": audit.as_dict() if audit is not None else None,
        "prefix_cache": prefix_cache_stats(trainer),
        "log_history": trainer.state.log_history,
        "resumed_from": run_dir.checkpoint,
        "saved": outputs.saved if outputs is not None else None,
        **environment(),
    }
    if outputs is not None:
        outputs.results = results
        if trainer.is_world_process_zero():
            outputs.write_card()
    if trainer.is_world_process_zero():
        write_json_atomic(results_path, results)
        shown = {k: v for k, v in results.items() if k.startswith(("eval_", "test_"))}
        print(json.dumps({"results": str(results_path), **shown}, indent=2), flush=True)
    if training_args.push_to_hub:  # Trainer's own push: RunTrainer saves and writes the card
        try:
            trainer.push_to_hub(commit_message=f"recipes/run.py: {results['command']}")
        except Exception as error:
            raise ConfigError(
                f"push_to_hub to {trainer.hub_model_id or training_args.hub_model_id!r} failed: "
                f"{str(error).strip().splitlines()[0] if str(error).strip() else error!r} "
                f"(the run's outputs are in {str(run_dir.path)!r})"
            ) from error
    return results


def prefix_cache_stats(trainer) -> dict | None:
    cache = trainer.prefix_cache
    if cache is None or not cache.replay:
        return None
    return {**cache.stats, "bytes": cache.nbytes, "depth": cache.depth}


def peak_memory() -> dict:
    """CUDA max allocated on a GPU; the process's peak resident memory otherwise."""
    if torch.cuda.is_available():
        return {"peak_memory_bytes": torch.cuda.max_memory_allocated(), "peak_memory_kind": "cuda"}
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_memory_bytes": peak_kib * 1024, "peak_memory_kind": "cpu_max_rss"}


USER_ERROR_EXIT = 2  # as argparse exits on a usage error; a crash exits 1


def exit_on_user_error(error: BaseException):
    """Bad input: one line on stderr and exit status 2, without a traceback.

    Under a multi-process launcher every process meets the same bad value, so only the first
    process of each machine (``LOCAL_RANK`` 0) prints; the others exit quietly with the same
    status. The launcher (torchrun, under ``accelerate launch``) then reports the failed
    processes in its own words: it treats any non-zero exit as a worker failure, and no worker can
    silence that.
    """
    if os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")) == "0":
        print(f"error: {_first_line(error)}", file=sys.stderr, flush=True)
    raise SystemExit(USER_ERROR_EXIT)


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as error:  # ConfigError, FreezePolicyError, ...
        exit_on_user_error(error)
