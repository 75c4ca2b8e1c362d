"""Metric helpers for transformers' ``Trainer``.

``make_compute_metrics("classification")`` reports accuracy and macro-F1 through the local
`evaluate` module in ``classification.py`` (loaded by path, so it works offline). Causal-LM and
sequence-to-sequence runs report perplexity, which the caller derives from the evaluation loss
with :func:`perplexity`.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from recipes.launcher.models import TASKS  # the launcher's tasks, defined once

CLASSIFICATION_METRIC_PATH = str(Path(__file__).resolve().with_name("classification.py"))
"""Absolute path of the accuracy / macro-F1 module, for ``evaluate.load``."""


def load_classification_metric():
    """Load the accuracy / macro-F1 module with ``evaluate.load`` (no network needed)."""
    import evaluate

    return evaluate.load(CLASSIFICATION_METRIC_PATH, keep_in_memory=True)


def make_compute_metrics(task: str):
    """Return a ``compute_metrics(eval_pred)`` callable for ``Trainer``, or None.

    For ``"classification"`` the callable takes the argmax of the logits and returns
    ``{"accuracy": ..., "f1": ...}``. For ``"causal_lm"`` and ``"seq2seq"`` this returns None:
    per-token logits are too large to collect, and perplexity comes from
    ``perplexity(metrics["eval_loss"])``.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    if task in ("causal_lm", "seq2seq"):
        return None
    metric = load_classification_metric()

    def compute_metrics(eval_pred) -> dict[str, float]:
        logits, labels = eval_pred[0], eval_pred[1]
        if isinstance(logits, (tuple, list)):
            logits = logits[0]
        predictions = np.argmax(np.asarray(logits), axis=-1)
        return metric.compute(predictions=predictions, references=np.asarray(labels))

    return compute_metrics


def perplexity(eval_loss: float) -> float:
    """``exp(eval_loss)``, or ``inf`` when that overflows a float."""
    try:
        return math.exp(eval_loss)
    except OverflowError:
        return math.inf
