"""``parse_args``: the launcher's arguments from a ``--config`` YAML and flags, checked.

Flags override the YAML; YAML values are converted by the flag's own type, as if given on the
command line; unknown keys and flags are an error with the closest known name. Every mistake is
one ``ConfigError`` line (argparse's usage dump and ``exit(2)`` are replaced), raised before any
data or model is loaded: the argument dataclasses' own checks (``recipes.launcher.arguments``),
``check_training_arguments`` (what TrainingArguments would reject late or not at all),
output_dir's writability, the generation flags and ``check_task_options`` (an option only other
tasks read, which this one would ignore), and the launch
(``freeze_policies.distributed.guards.check_launch``).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import shlex
import sys
import tempfile
from pathlib import Path

import yaml
from transformers import HfArgumentParser, TrainingArguments

from freeze_policies.policies.registry import load_yaml
from recipes.launcher.arguments import ARGUMENT_CLASSES, RECIPE_DEFAULTS, positive_int
from recipes.launcher.common import ConfigError, first_line


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
    (``freeze_policies.distributed.guards.check_launch``).
    """
    parser = make_parser()
    known = {f.name for cls in ARGUMENT_CLASSES for f in dataclasses.fields(cls)}
    flags_given = parser.parse_known_args(argv)[0]
    config_path = flags_given.config
    defaults = dict(RECIPE_DEFAULTS)
    loaded: dict = {}
    if config_path:
        loaded = read_config(config_path, known)
        loaded = drop_overridden(loaded, flags_given, _flag_values(argv), config_path)
        defaults.update(_typed(parser, loaded, config_path))
    if not config_path:
        check_method_choice({}, _flag_values(argv), "the config")
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
        raise ConfigError(first_line(error)) from None
    check_training_arguments(parsed[3])
    from recipes.launcher.tasks import TASKS

    if parsed[0].task in TASKS and not TASKS[parsed[0].task].generates:
        for name in ("predict_with_generate", "generation_max_length", "generation_num_beams"):
            if getattr(parsed[3], name):
                raise ConfigError(f"{name} is a seq2seq option (generation at evaluation); "
                                  f"task={parsed[0].task!r} does not generate")
    check_task_options(parsed, given_fields(argv), loaded, config_path)
    from freeze_policies.distributed.guards import check_launch

    try:
        check_launch(use_cpu=bool(parsed[3].use_cpu))
    except ValueError as error:
        raise ConfigError(str(error)) from None
    return parsed


def given_fields(argv: list[str] | None) -> set[str]:
    """The fields given on the command line, by field name, however they were spelled
    (``--a_b v``, ``--a-b=v``, a unique abbreviation): the launcher's parser with every default
    suppressed keeps only what was typed. Call it on an ``argv`` that parsed."""
    parser = make_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_known_args(argv)[0])) - {"config"}


def check_task_options(parsed, given: set[str], loaded: dict, config_path: str | None) -> None:
    """An option that only other tasks read (``--generations`` to a classifier, ``--source_column``
    to sft: each entry of ``recipes.launcher.tasks.TASKS`` lists its ``options``), given on the
    command line (``given``) or in the config (``loaded``), is a ``ConfigError`` naming it as the
    user wrote it, its value, the task and the tasks that read it: the run would ignore it.
    Defaults are never refused."""
    from recipes.launcher.tasks import option_tasks

    task = parsed[0].task
    for name, readers in option_tasks().items():
        if task in readers or (name not in given and name not in loaded):
            continue
        if name in given:  # a flag overrides the config, so the flag is what was ignored
            value = next(getattr(args, name) for args in parsed if hasattr(args, name))
            origin = f"--{name} {_flag_text(value)}"
        else:
            origin = f"{name}: {_yaml_value(loaded[name])} in {config_path}"
        raise ConfigError(
            f"{origin} is read only by task {' or '.join(repr(t) for t in readers)}; "
            f"task={task!r} would ignore it: drop it, or give --task {' or '.join(readers)}"
        )


def _flag_text(value) -> str:
    """A parsed value as it would be typed after its flag."""
    if isinstance(value, bool):
        return str(value).lower()
    return shlex.quote(str(value))


# The keys that choose the method, by the method they choose.
METHOD_KEYS = {
    "freeze": ("policy", "policy_options", "budget_step_ratio", "budget_memory_gb"),
    "peft": ("peft_method", "peft_options"),
}


def _flag_values(argv: list[str] | None) -> dict[str, str]:
    """The fields given as flags on the command line (``--name value`` or ``--name=value``),
    with the value as typed."""
    tokens = sys.argv[1:] if argv is None else list(argv)
    values = {}
    for index, token in enumerate(tokens):
        if token.startswith("--"):
            name, sep, value = token[2:].partition("=")
            if not sep and index + 1 < len(tokens) and not tokens[index + 1].startswith("--"):
                value = tokens[index + 1]
            values[name] = value
    return values


def drop_overridden(loaded: dict, flags, given: dict[str, str], config_path: str) -> dict:
    """The config's keys a method flag invalidates, dropped with a one-line notice.

    A flag that chooses the method or the policy (``--policy``, ``--peft_method``,
    ``--budget_step_ratio`` / ``--budget_memory_gb``, ``--method``) replaces the config's choice,
    so the config's keys that belong to another choice would otherwise combine with it into
    something nobody asked for (``--policy lisa`` over a bottom_n config keeping ``n``, a budget
    over a LoRA config keeping ``peft_method``): those keys are dropped, and one ``notice:`` line
    on stderr names them, unless they were given as flags too.
    """
    def value(name):
        return getattr(flags, name, None)

    wanted = None  # the method the flags choose
    if "method" in given:
        wanted = value("method")
    elif given.keys() & {"policy", "budget_step_ratio", "budget_memory_gb"}:
        wanted = "freeze"
    elif "peft_method" in given:
        wanted = "peft"
    if wanted is None:
        check_method_choice(loaded, given, config_path)
        return loaded
    drop = []
    for method, keys in METHOD_KEYS.items():
        if method != wanted:
            drop += [key for key in keys if key in loaded and key not in given]
    if wanted == "freeze" and given.keys() & {"budget_step_ratio", "budget_memory_gb"}:
        drop += [key for key in ("policy", "policy_options") if key in loaded and key not in given]
    if "policy" in given and "policy_options" in loaded and "policy_options" not in given \
            and loaded.get("policy") != value("policy"):
        drop.append("policy_options")  # options of the config's policy, not of the flag's
    if "peft_method" in given and "peft_options" in loaded and "peft_options" not in given \
            and loaded.get("peft_method") != value("peft_method"):
        drop.append("peft_options")
    if "method" in loaded and "method" not in given and loaded["method"] != wanted:
        drop.append("method")
    drop = list(dict.fromkeys(drop))
    kept = {key: item for key, item in loaded.items() if key not in drop}
    check_method_choice(kept, given, config_path)
    if not drop:
        return loaded
    typed = ", ".join(f"--{name} {given[name]}" for name in
                      ("method", "policy", "budget_step_ratio", "budget_memory_gb", "peft_method")
                      if name in given)
    dropped = ", ".join(f"{key}: {_yaml_value(loaded[key])}" for key in drop)
    if os.environ.get("LOCAL_RANK", "0") == "0":
        print(f"notice: {typed} on the command line replaces {config_path}'s choice; its "
              f"{dropped} no longer apply and are dropped", file=sys.stderr, flush=True)
    return {key: item for key, item in loaded.items() if key not in drop}


def check_method_choice(loaded: dict, given: dict[str, str], config_path: str) -> None:
    """A freeze choice (a policy or a budget) and a PEFT method left together after
    ``drop_overridden`` (both flags, or both in the config), with no ``method`` to say which:
    a ``ConfigError`` naming each as the user wrote it (the arguments' own check would blame a
    ``method='freeze'`` nobody wrote)."""
    if "method" in given or "method" in loaded:
        return  # the arguments' own checks name the method the user gave

    def origin(key):
        if key in given:
            return f"--{key} {given[key]}"
        return f"{key}: {_yaml_value(loaded[key])} in {config_path}"

    def present(key):
        return key in given or loaded.get(key) is not None

    freeze = next((key for key in ("policy", "budget_step_ratio", "budget_memory_gb")
                   if present(key)), None)
    if freeze is not None and present("peft_method"):
        what = "names a freeze policy" if freeze == "policy" else "picks bottom_n by budget"
        raise ConfigError(
            f"{origin(freeze)} {what} and {origin('peft_method')} trains a PEFT method: give "
            "one of them"
        )


def _yaml_value(value) -> str:
    """A config value as it would be written in the YAML (flow style, one line)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix(
        "\n...").removesuffix(" ...")


def read_config(config_path: str, known: set[str]) -> dict:
    """The ``--config`` YAML as a mapping of known keys; one-line ``ConfigError`` otherwise."""
    path = Path(config_path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise ConfigError(f"config file {config_path!r} {what}")
    try:
        loaded = load_yaml(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"config file {config_path!r} is not UTF-8 text") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or first_line(error)
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
        positive_int(name, getattr(args, name))
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
