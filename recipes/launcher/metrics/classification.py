"""Accuracy and macro-averaged F1 as an offline `evaluate` metric module.

Load it by path, which needs no network access::

    import evaluate
    metric = evaluate.load("/abs/path/to/recipes/metrics/classification.py")
    metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])
    # {'accuracy': 0.666..., 'f1': 0.666...}

`evaluate` copies this file into its module cache and imports it on its own, so it must stay
self-contained (no imports from the ``recipes`` package).
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Accuracy (share of exact matches) and macro-averaged F1: the unweighted mean over classes of
F1 = 2·TP / (2·TP + FP + FN). By default the classes are those seen in predictions or references;
pass ``labels`` to fix the class set (a class absent from both then scores F1 = 0).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class ids.
    references (list of int): true class ids.
    labels (list of int, optional): the classes to average F1 over.
Returns:
    accuracy (float): in [0, 1].
    f1 (float): macro-averaged F1 in [0, 1].
"""


def macro_f1(predictions: np.ndarray, references: np.ndarray, labels=None) -> float:
    """Unweighted mean of per-class F1 over ``labels`` (default: every class that occurs)."""
    if labels is None:
        labels = np.union1d(predictions, references)
    scores = []
    for label in labels:
        predicted, actual = predictions == label, references == label
        true_pos = np.sum(predicted & actual)
        denominator = np.sum(predicted) + np.sum(actual)  # = 2·TP + FP + FN
        scores.append(2 * true_pos / denominator if denominator else 0.0)
    return float(np.mean(scores)) if scores else 0.0


class ClassificationMetrics(evaluate.Metric):
    """Accuracy and macro-F1 for single-label classification."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, labels=None):
        predictions = np.asarray(predictions, dtype=np.int64)
        references = np.asarray(references, dtype=np.int64)
        if predictions.size == 0:
            raise ValueError("cannot compute metrics on zero predictions")
        return {
            "accuracy": float(np.mean(predictions == references)),
            "f1": macro_f1(predictions, references, labels),
        }
