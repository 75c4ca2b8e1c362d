"""The launcher's tasks, one table: ``--task`` picks an entry of :data:`TASKS`.

A :class:`Task` holds everything that differs between tasks: the ``transformers`` Auto class
(loading, and the loading code of the model card), how the model is loaded, the data (splits and
tokenization with the collator), the metrics the trainer computes, the metrics the sweep selects
on and the report shows (:class:`TaskMetrics`), the trainer class, PEFT's task type and a few
flags. Every other module asks the entry instead of comparing the task's name: ``models``
(loading), ``build`` (data, trainer), ``main`` (derived metrics, the card's label config),
``parsing`` (generation flags, and the options only some tasks read: a task refuses those its
entry's ``options`` does not list), ``arguments`` (the valid ``--task`` values),
``peft_methods``, ``main`` again (the generations a task records after training), ``model_card``
(through the Auto class ``main`` hands it), ``recipes.report.aggregate`` and
``recipes.experiments.sweep`` (selection and reported metrics).

Adding a task is adding one entry here (its functions may live in their own module, as
``recipes.launcher.seq2seq`` does for ``seq2seq`` and ``recipes.launcher.sft`` for ``sft``).

The library's own preview (``python -m freeze_policies``) keeps its own small mapping of task
name to Auto class: the library is installed without the recipes and must not import them, and
it previews more kinds of model (speech, CTC, vision-language, dual encoders) than the launcher
trains.

Imports of the heavy modules happen inside the entries' functions, so reading the table (for
``--help`` or the report) loads neither ``datasets`` nor ``transformers``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from recipes.launcher.model_tasks import (
    causal_lm_refusal,
    classification_refusal,
    read_model_config,
    seq2seq_refusal,
)

if TYPE_CHECKING:
    from recipes.launcher.results import RunResults


@dataclass(frozen=True)
class TaskMetrics:
    """Which validation metric chooses the rate, and which test metrics are reported."""

    select: str  # validation metric in results.json
    higher_is_better: bool
    primary: str  # the test metric of the statistics, plots and findings
    reported: tuple[tuple[str, str], ...]  # (key, column title)
    as_percent: bool  # the task's metrics are shares, shown as percentages (classification)
    # reported metrics shown as percentages where the task's others are not (sft's token
    # accuracy beside its loss)
    percent_keys: tuple[str, ...] = ()

    def score(self, run: RunResults) -> float:
        """``recipes/sweep.py``'s selection score: higher is better."""
        value = run.metrics[self.select]
        return value if self.higher_is_better else -value

    def display(self, score: float) -> float:
        """A selection score back in the metric's own terms."""
        return score if self.higher_is_better else -score

    def is_percent(self, key: str) -> bool:
        """Whether the report shows metric ``key`` as a percentage."""
        return self.as_percent or key in self.percent_keys


@dataclass(frozen=True)
class Task:
    """One ``--task``: what the launcher does differently for it."""

    name: str
    help: str  # a few words for --help
    auto_class: str  # the transformers Auto class: loading here and in the model card
    load_model: Callable[..., Any]  # (name, path, kwargs, num_labels, label_names, ignore) -> model
    load_data: Callable[[Any, Any], tuple]  # (model_args, data_args) -> (splits, label names)
    prepare_data: Callable[..., tuple]  # (splits, tokenizer, model, model_args, data_args)
    #                                     -> (tokenized splits, data collator)
    metrics: TaskMetrics  # the sweep's selection and the report's columns
    compute_metrics: Callable[[], Callable | None]  # Trainer's compute_metrics, or None
    trainer_class: Callable[[], type]  # the launcher's trainer for it (imported on call)
    peft_task_type: str  # peft.TaskType's member name
    reports_perplexity: bool = False  # eval_/test_perplexity from the loss
    has_labels: bool = False  # a classification head: label names, id2label in the card
    per_batch_loss: bool = False  # the loss is averaged per batch (see build.prepare)
    generates: bool = False  # accepts --predict_with_generate and the generation flags
    # (trainer, tokenized splits, model_args) -> results.json's ``generations`` after training,
    # or None for a task that records none
    generate_examples: Callable[..., list | None] | None = None
    # (model name, config) -> what the task needs and what the model is, or None if it can do it
    # (``recipes.launcher.model_tasks``; read from the config before any weight loads)
    refuse_model: Callable[[str, Any], str | None] = lambda name, config: None
    # the model and data arguments only some tasks read (``generations``, ``source_column``, ...)
    # that this one reads: one given explicitly to a task that does not list it is refused
    # before any model loads (``recipes.launcher.parsing.check_task_options``)
    options: tuple[str, ...] = ()

    def make_compute_metrics(self) -> Callable | None:
        return self.compute_metrics()


# -- classification -------------------------------------------------------------------------


def _load_classifier(name, path, kwargs, num_labels=None, label_names=None,
                     ignore_mismatched_sizes=False):
    from transformers import AutoModelForSequenceClassification

    kwargs = {**kwargs, **label_kwargs(num_labels, label_names),
              "ignore_mismatched_sizes": ignore_mismatched_sizes}
    try:
        return AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    except RuntimeError as error:
        if not any(sign in str(error) for sign in ("size mismatch", "ignore_mismatched_sizes")):
            raise  # (transformers 4 says "size mismatch", 5 names the flag)
        raise ValueError(
            f"the classification head of {name!r} does not fit the data's "
            f"{kwargs['num_labels']} labels; pass --ignore_mismatched_sizes true to replace it "
            "with a new head"
        ) from None


def label_kwargs(num_labels: int | None, label_names: list[str] | None) -> dict:
    """``from_pretrained`` arguments for a classification head."""
    if label_names is not None:
        label_names = list(label_names)
        if num_labels is not None and num_labels != len(label_names):
            raise ValueError(
                f"num_labels={num_labels} does not match the {len(label_names)} label_names "
                f"{label_names}"
            )
        num_labels = len(label_names)
    if num_labels is None or num_labels < 1:
        raise ValueError(
            f"classification needs num_labels >= 1 or label_names, got num_labels={num_labels!r}"
        )
    names = label_names or [f"LABEL_{i}" for i in range(num_labels)]
    return {
        "num_labels": num_labels,
        "id2label": dict(enumerate(names)),
        "label2id": {label: i for i, label in enumerate(names)},
    }


def _common(data_args) -> dict:
    return dict(
        text_column=data_args.text_column,
        dataset_config=data_args.dataset_config,
        seed=data_args.data_seed_splits,
        max_train_samples=data_args.max_train_samples,
        max_eval_samples=data_args.max_eval_samples,
    )


def _classification_data(model_args, data_args):
    from recipes.data import sources

    return sources.load_classification_splits(
        data_args.dataset, label_column=data_args.label_column, **_common(data_args)
    )


def _classification_tokens(splits, tokenizer, model, model_args, data_args):
    from transformers import DataCollatorWithPadding

    from recipes.data import sources

    tokenized = sources.tokenize_classification(splits, tokenizer, model_args.max_length)
    return limit_validation(tokenized, data_args), DataCollatorWithPadding(tokenizer)


def limit_validation(tokenized, data_args):
    """``max_validation_samples``: a seeded random subset of the validation rows."""
    if data_args.max_validation_samples is not None:
        validation = tokenized["validation"]
        if data_args.max_validation_samples < len(validation):
            tokenized["validation"] = validation.shuffle(
                seed=data_args.data_seed_splits
            ).select(range(data_args.max_validation_samples))
    return tokenized


def _classification_metrics():
    from recipes.launcher.metrics import classification_compute_metrics

    return classification_compute_metrics()


def _run_trainer():
    from recipes.launcher.outputs import RunTrainer

    return RunTrainer


# -- causal language modelling --------------------------------------------------------------


def _load_causal_lm(name, path, kwargs, num_labels=None, label_names=None,
                    ignore_mismatched_sizes=False):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def _causal_lm_data(model_args, data_args):
    from recipes.data import sources

    return sources.load_causal_lm_splits(data_args.dataset, **_common(data_args)), None


def _causal_lm_tokens(splits, tokenizer, model, model_args, data_args):
    from transformers import default_data_collator

    from recipes.data import sources

    return sources.tokenize_causal_lm(splits, tokenizer, model_args.max_length), \
        default_data_collator


def _no_metrics():
    """Per-token logits are too large to collect; perplexity comes from the loss."""
    return None


# -- sequence to sequence (recipes.launcher.seq2seq) ----------------------------------------


def _load_seq2seq(name, path, kwargs, num_labels=None, label_names=None,
                  ignore_mismatched_sizes=False):
    from recipes.launcher.seq2seq import load_seq2seq_model

    return load_seq2seq_model(name, path, **kwargs)


def _seq2seq_data(model_args, data_args):
    from recipes.launcher.seq2seq import load_seq2seq_splits

    common = _common(data_args)
    del common["text_column"]
    return load_seq2seq_splits(data_args.dataset, source_column=data_args.source_column,
                               target_column=data_args.target_column, **common), None


def _seq2seq_tokens(splits, tokenizer, model, model_args, data_args):
    from transformers import DataCollatorForSeq2Seq

    from recipes.launcher.seq2seq import tokenize_seq2seq

    tokenized = tokenize_seq2seq(splits, tokenizer, model_args.max_length,
                                 model_args.max_target_length)
    # pads labels with -100; decoder_input_ids from the labels through the model
    return tokenized, DataCollatorForSeq2Seq(tokenizer, model=model)


def _seq2seq_trainer():
    from recipes.launcher.seq2seq import RunSeq2SeqTrainer  # with Seq2SeqTrainer's evaluation

    return RunSeq2SeqTrainer


# -- supervised fine-tuning (recipes.launcher.sft) ------------------------------------------


def _sft_data(model_args, data_args):
    from recipes.launcher.sft import load_sft_splits

    common = _common(data_args)
    del common["text_column"]
    return load_sft_splits(data_args.dataset, prompt_column=data_args.prompt_column,
                           completion_column=data_args.completion_column, **common), None


def _sft_tokens(splits, tokenizer, model, model_args, data_args):
    from recipes.launcher.sft import CompletionCollator, tokenize_sft

    tokenized = tokenize_sft(splits, tokenizer, model_args.max_length,
                             chat_template=model_args.chat_template, source=data_args.dataset)
    return limit_validation(tokenized, data_args), CompletionCollator(tokenizer.pad_token_id)


def _sft_metrics():
    from recipes.launcher.metrics import completion_compute_metrics

    return completion_compute_metrics()


def _sft_trainer():
    from recipes.launcher.sft import RunSFTTrainer  # scores the completion tokens

    return RunSFTTrainer


def _sft_generations(trainer, tokenized, model_args):
    from recipes.launcher.sft import generate_examples

    return generate_examples(trainer, tokenized, model_args)


BY_LOSS = TaskMetrics(
    "eval_loss", False, "test_loss",
    (("test_loss", "test loss"), ("test_perplexity", "test perplexity")), False,
)

TASKS: dict[str, Task] = {
    task.name: task for task in (
        Task(
            name="classification",
            refuse_model=classification_refusal,
            help="a sequence classifier on labelled texts",
            auto_class="AutoModelForSequenceClassification",
            load_model=_load_classifier,
            load_data=_classification_data,
            prepare_data=_classification_tokens,
            metrics=TaskMetrics(
                "eval_accuracy", True, "test_accuracy",
                (("test_accuracy", "test accuracy (%)"), ("test_f1", "macro-F1 (%)")), True,
            ),
            compute_metrics=_classification_metrics,
            trainer_class=_run_trainer,
            peft_task_type="SEQ_CLS",
            has_labels=True,
            options=("text_column", "label_column", "ignore_mismatched_sizes"),
            # Sequence classifiers average their loss per batch; they take **kwargs, so Trainer
            # would assume they consume num_items_in_batch and scale the loss by the world size
            # under DDP.
            per_batch_loss=True,
        ),
        Task(
            name="causal_lm",
            refuse_model=causal_lm_refusal,
            help="next-token prediction on texts packed into blocks",
            auto_class="AutoModelForCausalLM",
            load_model=_load_causal_lm,
            load_data=_causal_lm_data,
            prepare_data=_causal_lm_tokens,
            metrics=BY_LOSS,
            compute_metrics=_no_metrics,
            trainer_class=_run_trainer,
            peft_task_type="CAUSAL_LM",
            reports_perplexity=True,
            options=("text_column",),
        ),
        Task(
            name="seq2seq",
            refuse_model=seq2seq_refusal,
            help="an encoder-decoder (T5, BART) on source/target pairs",
            auto_class="AutoModelForSeq2SeqLM",
            load_model=_load_seq2seq,
            load_data=_seq2seq_data,
            prepare_data=_seq2seq_tokens,
            metrics=BY_LOSS,
            compute_metrics=_no_metrics,
            trainer_class=_seq2seq_trainer,
            peft_task_type="SEQ_2_SEQ_LM",
            reports_perplexity=True,
            generates=True,
            options=("source_column", "target_column", "max_target_length"),
        ),
        Task(
            name="sft",
            refuse_model=causal_lm_refusal,
            help="a decoder on prompt/completion pairs, the loss on the completion only",
            auto_class="AutoModelForCausalLM",
            load_model=_load_causal_lm,
            load_data=_sft_data,
            prepare_data=_sft_tokens,
            # Selected by validation loss (lower is better, as the causal-LM tasks); the token
            # accuracy is the figure a person reads. It is a share in [0, 1] like classification's
            # accuracy, shown as a percentage beside the loss and perplexity (percent_keys).
            metrics=TaskMetrics(
                "eval_loss", False, "test_loss",
                (("test_loss", "test loss"), ("test_perplexity", "test perplexity"),
                 ("test_token_accuracy", "test token accuracy (%)")), False,
                percent_keys=("test_token_accuracy",),
            ),
            compute_metrics=_sft_metrics,
            trainer_class=_sft_trainer,
            peft_task_type="CAUSAL_LM",
            reports_perplexity=True,
            generate_examples=_sft_generations,
            options=("prompt_column", "completion_column", "chat_template", "generations",
                     "max_new_tokens"),
        ),
    )
}
"""Every ``--task``, by name."""


def option_tasks() -> dict[str, list[str]]:
    """Every task-specific option (a field some entry lists in ``options``) -> the tasks that
    read it, in the table's order."""
    readers: dict[str, list[str]] = {}
    for task in TASKS.values():
        for name in task.options:
            readers.setdefault(name, []).append(task.name)
    return readers


def tasks_of(name: str, config) -> list[str]:
    """The tasks a model of ``config`` can do (every entry that does not refuse it)."""
    return [task.name for task in TASKS.values() if task.refuse_model(name, config) is None]


def check_model_task(name: str, path: str, task: str):
    """Refuse, before any weight loads, a model that cannot do ``task``, in one line naming the
    model, what the task needs and the tasks the model can do; return its config."""
    config = read_model_config(name, path)
    refusal = get_task(task).refuse_model(name, config)
    if refusal is not None:
        can = tasks_of(name, config)
        named = ("task " + " or ".join(repr(t) for t in can) if can
                 else "none of the launcher's tasks")
        raise ValueError(f"task={task!r} {refusal}; for it use {named}")
    return config


def get_task(name: str) -> Task:
    """The entry for ``name``; an unknown name is a ``ValueError`` naming the valid ones."""
    task = TASKS.get(name)
    if task is None:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    return task


__all__ = ["TASKS", "Task", "TaskMetrics", "check_model_task", "get_task", "label_kwargs",
           "option_tasks", "tasks_of"]
