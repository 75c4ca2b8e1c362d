"""Metric helpers for transformers' ``Trainer``.

:func:`classification_compute_metrics` reports accuracy and macro-F1 through the local
`evaluate` module in ``classification.py`` (loaded by path, so it works offline). Causal-LM and
sequence-to-sequence runs report perplexity, which the caller derives from the evaluation loss
with :func:`perplexity`. Supervised fine-tuning (``--task sft``) scores the completion tokens
only: their exact mean cross-entropy and token accuracy (``completion.py``:
:func:`completion_compute_metrics`, with :func:`completion_predictions` reducing the logits), and
perplexity from that loss. Which task uses which is the task's entry in
``recipes.launcher.tasks`` (``Task.compute_metrics``, ``Task.reports_perplexity``).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from recipes.launcher.metrics.completion import (  # noqa: F401  (the sft task's metrics)
    completion_compute_metrics,
    completion_predictions,
)

CLASSIFICATION_METRIC_PATH = str(Path(__file__).resolve().with_name("classification.py"))
"""Absolute path of the accuracy / macro-F1 module, for ``evaluate.load``."""


def load_classification_metric():
    """Load the accuracy / macro-F1 module with ``evaluate.load`` (no network needed)."""
    import evaluate

    return evaluate.load(CLASSIFICATION_METRIC_PATH, keep_in_memory=True)


def classification_compute_metrics():
    """A ``compute_metrics(eval_pred)`` callable for ``Trainer``: the argmax of the logits,
    scored as ``{"accuracy": ..., "f1": ...}``."""
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
