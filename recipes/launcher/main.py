"""One launcher for full fine-tuning, every freeze policy and the PEFT baselines.

    accelerate launch recipes/run.py --config configs/tweets/minilm/bottom_n.yaml [--field value]
    python recipes/run.py --config ... [--field value]

YAML keys are the fields of ``ModelArguments``, ``DataArguments``, ``MethodArguments`` and
``transformers.TrainingArguments``; flags override the YAML; unknown keys are an error. Every
method goes through the same data, seed, trainer (``FreezeTrainer``), evaluation and outputs, so
differences between results are the method's. The recipe's own defaults for TrainingArguments are
in ``recipes.launcher.arguments.RECIPE_DEFAULTS``; a config only says what differs.

This file runs a job (``main``: output_dir settled, build, train, evaluate, save, results.json);
the arguments are ``recipes.launcher.arguments`` and ``recipes.launcher.parsing``, the building of
data, model and trainer ``recipes.launcher.build``, the PEFT baselines
``recipes.launcher.peft_methods``, the checks on ``output_dir`` before a run
``recipes.launcher.run_dir``, what is saved after it ``recipes.launcher.outputs``.

Outputs in ``output_dir`` (``recipes.launcher.outputs``): the saved model (the whole model, the PEFT
adapter, or with ``--save_trainable_only`` a freeze delta) with its tokenizer and a model card,
unless ``--save_model false``; ``results.json`` (a ``recipes.launcher.results.RunResults``,
written atomically, last, only after a successful run; ``main`` returns its JSON object); the
trainer's logs (TensorBoard when installed); checkpoints only if asked (``save_strategy``
defaults to "no"). ``--resume_from_checkpoint PATH|true`` resumes; a non-empty ``output_dir`` is
refused unless ``--overwrite_output_dir true`` or a resume is asked for.
"""

from __future__ import annotations

import json
import resource
import shlex
import signal
import sys
import threading

import torch

from recipes.launcher.build import prepare
from recipes.launcher.common import ConfigError, environment, exit_on_user_error, write_json_atomic
from recipes.launcher.outputs import RunOutputs, run_record, total_params
from recipes.launcher.parsing import parse_args
from recipes.launcher.peft_methods import added_tokens
from recipes.launcher.results import METRIC_PREFIXES, MethodSpec, RunResults
from recipes.launcher.resuming import check_resume
from recipes.launcher.run_dir import OutputError, check_output_options, open_run_dir


def main(argv: list[str] | None = None) -> dict:
    """Run one fine-tuning job; return (and write) its results."""
    model_args, data_args, method_args, training_args = parse_args(argv)
    try:
        check_output_options(method_args.method, training_args)
        run_dir = open_run_dir(training_args)
        check_resume(run_dir.checkpoint, model_args, method_args)  # before any model loads
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
    from recipes.data.files import left_out_of
    from recipes.data.sources import split_digests
    from recipes.launcher.metrics import perplexity
    from recipes.launcher.models import resolve_model_path
    from recipes.launcher.tasks import get_task

    results_path = run_dir.path / "results.json"
    try:
        trainer, tokenized = prepare(model_args, data_args, method_args, training_args)
    except (ValueError, OSError) as error:  # bad input, found before training: one line
        raise ConfigError(str(error).strip().splitlines()[0]) from error
    summary = summarize(trainer.model, trainer.anatomy)  # the run's one anatomy (build.py)
    prompt_tokens = added_tokens(method_args.peft_method, method_args.peft_options)
    callback = trainer.freeze_callback
    preview = predict_cost(
        trainer.model,
        callback.trainable_at(0) if callback.policy is not None else None,
        seq_len=model_args.max_length + prompt_tokens,
        batch_size=training_args.per_device_train_batch_size,
        anat=trainer.anatomy,
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
    task = get_task(model_args.task)
    for metrics, prefix in ((validation, "eval"), (test, "test")):
        if task.reports_perplexity and metrics:
            metrics[f"{prefix}_perplexity"] = perplexity(metrics[f"{prefix}_loss"])
    generations = (  # from test prompts: not when the test split is not read
        task.generate_examples(trainer, tokenized, model_args)
        if task.generate_examples is not None and training_args.do_predict else None
    )
    outputs = None
    if training_args.save_model:
        config = trainer.model.config
        outputs = RunOutputs(
            output_dir=run_dir.path,
            method=method_args.method,
            base_model=model_args.model_name_or_path,
            base_path=resolve_model_path(model_args.model_name_or_path,
                                         model_args.model_cache_dir),
            auto_class=task.auto_class,
            trainable_only=training_args.save_trainable_only,
            label_config={"id2label": config.id2label, "label2id": config.label2id,
                          "pad_token_id": config.pad_token_id}
            if task.has_labels else {},
        )
        trainer.run_outputs = outputs
        trainer.save_model()  # RunTrainer: the model, the adapter or the delta, and the tokenizer

    audit = trainer.frozen_audit
    timing = ("_runtime", "_per_second")
    evaluated = {k: v for k, v in {**validation, **test}.items() if not k.endswith(timing)}
    record = RunResults(
        **MethodSpec(
            method=method_args.method,
            policy=method_args.policy,
            policy_options=method_args.policy_options,
            freeze_mode=method_args.freeze_mode if method_args.method == "freeze" else None,
            peft_method=method_args.peft_method,
            peft_options=method_args.peft_options,
        ).as_dict(),
        command=shlex.join(["recipes/run.py", *(sys.argv[1:] if argv is None else argv)]),
        model=model_args.model_name_or_path,
        task=model_args.task,
        dataset=data_args.dataset,
        data=split_digests(tokenized),  # the rows each split held, in order
        rows_left_out=left_out_of(tokenized),  # rows of the data file not used, and why
        seed=training_args.seed,
        learning_rate=training_args.learning_rate,
        max_steps=trainer.state.max_steps,
        total_params=total_params(trainer.model),
        groups=summary.as_dict()["groups"],
        cost_preview=preview.as_dict(),
        budget=trainer.budget_choice.as_dict() if trainer.budget_choice else None,
        metrics={k: v for k, v in evaluated.items() if k.startswith(METRIC_PREFIXES)},
        epoch=evaluated.get("epoch"),
        train_loss=train_output.training_loss,
        train_runtime=train_output.metrics["train_runtime"],
        train_samples_per_second=train_output.metrics["train_samples_per_second"],
        train_steps_per_second=train_output.metrics["train_steps_per_second"],
        **peak_memory(),
        # trainable counts as the policy means them (under zero_lr / zero_grad every parameter
        # requires grad, only the policy's set is updated), the audit's and the cost figures,
        # the prefix cache's counters
        **trainer.freeze_metrics(),
        frozen_audit=audit.as_dict() if audit is not None else None,
        log_history=trainer.state.log_history,
        generations=generations,
        resumed_from=run_dir.checkpoint,
        saved=outputs.saved if outputs is not None else None,
        **environment(),
        **run_record(trainer),  # schedule_events, world_size, accelerate (outputs.py)
    )
    results = record.as_dict()
    if outputs is not None:
        outputs.results = record
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


def peak_memory() -> dict:
    """CUDA max allocated on a GPU; the process's peak resident memory otherwise."""
    if torch.cuda.is_available():
        return {"peak_memory_bytes": torch.cuda.max_memory_allocated(), "peak_memory_kind": "cuda"}
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_memory_bytes": peak_kib * 1024, "peak_memory_kind": "cpu_max_rss"}


def stop_on_sigterm() -> None:
    """SIGTERM (a job scheduler's stop, ``kill``, accelerate stopping its workers) ends the run
    the way Ctrl-C does: ``SystemExit(143)`` is raised in the main thread, so ``finally`` blocks
    and exit handlers run and the prefix cache's file is removed. Python's default for SIGTERM is
    to die on the spot, leaving the file until the next run of the same output_dir starts. Only
    the launcher installs this; the library leaves a process's signal handling to its owner."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def cli() -> None:
    """``recipes/run.py``'s command line: a user error is one line, not a traceback."""
    stop_on_sigterm()
    try:
        main()
    except (ValueError, FileNotFoundError) as error:  # ConfigError, FreezePolicyError, ...
        exit_on_user_error(error)
