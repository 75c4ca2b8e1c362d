"""Teacher-forced metrics of ``--task sft`` over the completion tokens: their mean cross-entropy
and the share the model predicts exactly (token accuracy).

The labels hold the completion's token ids (its end-of-sequence token included) and -100 on the
prompt and on padding, so a position counts when its label is not -100; the logits at position
``t`` predict the label at ``t + 1``, as in the model's own loss.

Keeping every logit of an evaluation set would take ``rows x tokens x vocabulary`` floats (1.6 GB
for 124 SmolLM2 rows of 64 tokens), so :func:`completion_predictions` (``Trainer``'s
``preprocess_logits_for_metrics``) reduces each batch's logits on the spot to two numbers per
position, aligned with the labels: the predicted id and the cross-entropy of the label.
:func:`completion_compute_metrics` then scores the whole set from those:

- ``completion_loss``: the cross-entropy summed over every completion token of the set, over
  their number. ``Trainer``'s own ``eval_loss`` is not quite this: it averages each batch's
  token mean with the batch's rows as weights, so a batch of short answers counts as much as one
  of long answers. The launcher's sft trainer reports this exact mean as ``eval_loss`` /
  ``test_loss`` (``recipes.launcher.sft.RunSFTTrainer``), and perplexity is its exponential.
- ``token_accuracy``: the share of completion tokens whose argmax is the label, in [0, 1].
- ``completion_tokens``: how many tokens were scored.
"""

from __future__ import annotations

import numpy as np

IGNORE = -100
"""The label of a position that is not scored (prompt, padding), as transformers' losses use."""


def completion_predictions(logits, labels):
    """``preprocess_logits_for_metrics``: ``(predicted ids, cross-entropy)``, each of the labels'
    shape, position ``t`` holding the prediction made at ``t - 1`` for label ``t``; position 0,
    which nothing predicts, holds -100 and 0."""
    import torch
    import torch.nn.functional as F

    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    labels = labels.to(logits.device)
    predicted = torch.full(labels.shape, IGNORE, dtype=torch.long, device=logits.device)
    losses = torch.zeros(labels.shape, dtype=torch.float32, device=logits.device)
    shifted = logits[:, :-1].float()
    predicted[:, 1:] = shifted.argmax(-1)
    losses[:, 1:] = F.cross_entropy(shifted.transpose(1, 2), labels[:, 1:], ignore_index=IGNORE,
                                    reduction="none")
    return predicted, losses


def completion_scores(predicted, losses, labels) -> dict[str, float]:
    """The metrics from ``completion_predictions``'s arrays (any batches, concatenated)."""
    predicted, losses, labels = (np.asarray(a) for a in (predicted, losses, labels))
    scored = labels != IGNORE
    scored[:, 0] = False  # nothing predicts the first token
    count = int(scored.sum())
    if count == 0:
        raise ValueError("no completion token to score (every label is -100)")
    return {
        "completion_loss": float(losses[scored].astype(np.float64).sum() / count),
        "token_accuracy": float((predicted[scored] == labels[scored]).mean()),
        "completion_tokens": count,
    }


def completion_compute_metrics():
    """A ``compute_metrics(eval_pred)`` for ``Trainer`` whose predictions are
    ``completion_predictions``'s pair."""

    def compute_metrics(eval_pred) -> dict[str, float]:
        (predicted, losses), labels = eval_pred[0], eval_pred[1]
        return completion_scores(predicted, losses, labels)

    return compute_metrics
