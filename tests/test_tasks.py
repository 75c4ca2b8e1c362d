"""The launcher's task table (recipes.launcher.tasks): every task is one complete entry, and the
modules that differ by task ask the entry (a task added to the table reaches them)."""

import dataclasses
from pathlib import Path

import peft
import pytest
import transformers

from recipes.launcher import models
from recipes.launcher.arguments import ModelArguments
from recipes.launcher.model_card import model_card
from recipes.launcher.outputs import RunOutputs
from recipes.launcher.results import RunResults
from recipes.launcher.tasks import TASKS, get_task
from recipes.report import aggregate


def test_every_entry_is_complete_and_names_real_classes():
    assert list(TASKS) == ["classification", "causal_lm", "seq2seq", "sft"]
    for name, task in TASKS.items():
        assert task.name == name
        assert hasattr(transformers, task.auto_class), task.auto_class
        assert hasattr(peft.TaskType, task.peft_task_type), task.peft_task_type
        assert issubclass(task.trainer_class(), transformers.Trainer)
        assert task.metrics.select.startswith("eval_") and task.metrics.primary.startswith("test_")
    assert TASKS["classification"].make_compute_metrics() is not None
    assert TASKS["seq2seq"].generates and TASKS["seq2seq"].trainer_class() is not (
        TASKS["causal_lm"].trainer_class())
    # sft scores completion tokens (its own metrics and trainer) and records generations
    assert TASKS["sft"].make_compute_metrics() is not None and not TASKS["sft"].generates
    assert TASKS["sft"].generate_examples is not None and all(
        TASKS[name].generate_examples is None for name in ("classification", "causal_lm",
                                                           "seq2seq"))
    # the report selects and reports each task by its entry
    assert {name: task.metrics for name, task in TASKS.items()} == aggregate.TASKS


def test_the_valid_tasks_are_the_table(monkeypatch):
    with pytest.raises(ValueError, match="task='translation' is not one of classification, "
                                         "causal_lm, seq2seq, sft"):
        ModelArguments(task="translation")
    with pytest.raises(ValueError, match="unknown task 'translation'; valid tasks: "
                                         "classification, causal_lm, seq2seq, sft"):
        get_task("translation")


def test_a_task_added_to_the_table_reaches_loading_arguments_and_the_card(monkeypatch, tiny_bert):
    """One entry is all a new task needs: argument checking, model loading and the model card's
    loading code follow it."""
    loaded = []

    def load_token_classifier(name, path, kwargs, **_):
        loaded.append(name)
        return transformers.AutoModelForTokenClassification.from_pretrained(
            path, num_labels=3, **kwargs)

    entry = dataclasses.replace(TASKS["classification"], name="tokens",
                                auto_class="AutoModelForTokenClassification",
                                load_model=load_token_classifier)
    monkeypatch.setitem(TASKS, "tokens", entry)
    assert ModelArguments(task="tokens").task == "tokens"
    model, _ = models.load_model_and_tokenizer(str(tiny_bert), "tokens")
    assert loaded == [str(tiny_bert)]
    assert type(model).__name__ == "BertForTokenClassification"
    outputs = RunOutputs(output_dir=Path(tiny_bert), method="full", base_model="m", base_path="m",
                         auto_class=entry.auto_class, trainable_only=False,
                         results=RunResults("full", "m", "tokens", 0, 1e-4, total_params=2,
                                            trainable_params=2, max_steps=1, command="c"))
    card = model_card(outputs)
    assert f"model = AutoModelForTokenClassification.from_pretrained({str(tiny_bert)!r})" in card
