"""One launcher for full fine-tuning, every freeze policy and the PEFT baselines.

    accelerate launch recipes/run.py --config configs/tweets/minilm/bottom_n.yaml [--field value]
    python recipes/run.py --config ... [--field value]

YAML keys are the fields of ``ModelArguments``, ``DataArguments``, ``MethodArguments`` and
``transformers.TrainingArguments``; flags override the YAML; unknown keys are an error. Every
method goes through the same data, seed, trainer (``FreezeTrainer``), evaluation and outputs, so
differences between results are the method's. The recipe's own defaults for TrainingArguments are
in ``RECIPE_DEFAULTS``; a config only says what differs.

Outputs in ``output_dir``: ``results.json`` (written atomically, last, only after a successful
run), the trainer's logs (TensorBoard when installed) and nothing else unless asked
(``save_strategy`` defaults to "no").
"""

from __future__ import annotations

import dataclasses
import difflib
import json
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
    peft_method: str | None = field(
        default=None, metadata={"help": "lora | dora | ia3 | prefix_tuning | prompt_tuning"}
    )
    peft_options: str | None = field(
        default=None, metadata={"help": "options of the PEFT config: YAML mapping or JSON"}
    )

    def __post_init__(self):
        self.policy_options = _mapping("policy_options", self.policy_options)
        self.peft_options = _mapping("peft_options", self.peft_options)
        if self.method is None:
            self.method = "freeze" if self.policy else "peft" if self.peft_method else "full"
        _choice("method", self.method, METHODS)
        _choice("freeze_mode", self.freeze_mode, FREEZE_MODES)
        _choice("audit", self.audit, ("raise", "log", "off"))
        if self.method == "freeze" and not self.policy:
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


    frozen_dtype: str | None = field(
        default=None,
        metadata={"help": "bfloat16 | float16: store frozen weights in it, trainable ones in "
                  "float32 (needs --bf16 or --fp16); default: dtypes as loaded"},
    )
ARGUMENT_CLASSES = (ModelArguments, DataArguments, MethodArguments, TrainingArguments)


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}")


def _mapping(name: str, value) -> dict:
    if value is None or isinstance(value, dict):
        return dict(value or {})
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = None
        if self.frozen_dtype is not None:
            _choice("frozen_dtype", self.frozen_dtype, ("bfloat16", "float16"))
    if not isinstance(parsed, dict):
        raise ConfigError(f"{name}={value!r} is not a mapping (e.g. '{{\"n\": 4}}')")
    return parsed


def make_parser() -> HfArgumentParser:
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    parser.add_argument("--config", help="YAML file of fields; flags override it")
    return parser


def parse_args(argv: list[str] | None = None):
    """(model_args, data_args, method_args, training_args) from ``--config`` YAML and flags."""
    parser = make_parser()
    known = {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls)}
    config_path = parser.parse_known_args(argv)[0].config
    defaults = dict(RECIPE_DEFAULTS)
    if config_path:
        path = Path(config_path)
        if not path.is_file():
            raise ConfigError(f"config file {config_path!r} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {config_path!r} is not a YAML mapping")
        unknown = sorted(set(loaded) - known)
        if unknown:
            close = difflib.get_close_matches(unknown[0], known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"unknown key {', '.join(unknown)}{hint} in {config_path}; valid keys: fields of "
                "ModelArguments, DataArguments, MethodArguments and TrainingArguments "
                "(python recipes/run.py --help)"
            )
        defaults.update(loaded)
    parser.set_defaults(**defaults)
    rest = parser.parse_known_args(argv)[1]
    if rest:
        raise ConfigError(f"unknown arguments {rest}; see python recipes/run.py --help")
    *parsed, _config = parser.parse_args_into_dataclasses(argv)
    return parsed


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


def write_json_atomic(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w") as out:
        json.dump(payload, out, indent=2, sort_keys=True, default=str)
        out.write("\n")
    os.replace(tmp, path)


def prepare(model_args, data_args, method_args, training_args):
    """Data, model, method and trainer; every input error surfaces here, before training."""
    from transformers import DataCollatorWithPadding, default_data_collator

    from transformers import set_seed

    from freeze_policies import FreezeTrainer, get_policy
    from recipes import data, models
    from recipes.metrics import make_compute_metrics

    _choice("task", model_args.task, models.TASKS)
    # Seed before anything random is built (the classification head, LoRA's A matrices, prompt
    # embeddings): Trainer seeds only in its __init__, after the model exists.
    set_seed(training_args.seed, deterministic=training_args.full_determinism)
    policy = (
        get_policy(method_args.policy, **method_args.policy_options)
        if method_args.method == "freeze"
        else None
    )
    splits, label_names = load_data(model_args, data_args)
    model, tokenizer = models.load_model_and_tokenizer(
        model_args.model_name_or_path,
        model_args.task,
        label_names=label_names,
        cache_dir=model_args.model_cache_dir,
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
    if policy is not None:  # check the policy against this model before any output is made
        policy.trainable_names(policy.anatomy(model))
    trainer = FreezeTrainer(
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
    )
    if model_args.task == "classification":
        # Sequence classifiers average their loss per batch; they take **kwargs, so Trainer would
        # assume they consume num_items_in_batch and scale the loss by the world size under DDP.
        trainer.model_accepts_loss_kwargs = False
    return trainer, tokenized


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
    from freeze_policies import predict_cost, summarize
    from recipes.metrics import perplexity

    model_args, data_args, method_args, training_args = parse_args(argv)
    results_path = Path(training_args.output_dir) / "results.json"
    if results_path.exists():  # a stale success claim must not survive a failed re-run
        results_path.unlink()
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
    train_output = trainer.train()
    validation = trainer.evaluate(tokenized["validation"], metric_key_prefix="eval")
    test = (  # do_predict=False (the sweep's short runs): the test split is never read
        trainer.evaluate(tokenized["test"], metric_key_prefix="test")
        if training_args.do_predict else {}
    )
    for metrics, prefix in ((validation, "eval"), (test, "test")):
        if model_args.task == "causal_lm" and metrics:
            metrics[f"{prefix}_perplexity"] = perplexity(metrics[f"{prefix}_loss"])

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
        "total_params": summary.total,
        "groups": summary.as_dict()["groups"],
        "cost_preview": preview.as_dict(),
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
        **environment(),
    }
    if trainer.is_world_process_zero():
        write_json_atomic(results_path, results)
        shown = {k: v for k, v in results.items() if k.startswith(("eval_", "test_"))}
        print(json.dumps({"results": str(results_path), **shown}, indent=2), flush=True)
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


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError) as error:
        # Bad input: one clear line, no traceback, nothing written.
        raise SystemExit(f"error: {error}") from None
        frozen_dtype=method_args.frozen_dtype,
