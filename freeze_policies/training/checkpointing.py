"""Gradient checkpointing with frozen embeddings.

Reentrant activation checkpointing recomputes a block in backward only when one of its inputs
requires grad. With the input embeddings frozen, no input does: training fails with "element 0
of tensors does not require grad", or trains nothing silently. ``ensure_input_grads`` then calls
``model.enable_input_require_grads()`` (transformers' fix: a hook that makes the embeddings'
output require grad), unless the model is already hooked.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from torch import nn

from freeze_policies.structure.discover import Anatomy

logger = logging.getLogger("freeze_policies")


def is_checkpointing(model: nn.Module) -> bool:
    """Whether ``model`` checkpoints activations (transformers 5 and 4 spell it differently)."""
    for attribute in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), attribute):
            return bool(getattr(model, attribute))
    return False


def ensure_input_grads(
    model: nn.Module, anat: Anatomy | None, trainable: Collection[str]
) -> None:
    """Hook the embeddings' output to require grad when ``model`` checkpoints activations and
    its input embeddings are frozen (``trainable``: the names that train now; without an
    anatomy, the embeddings are found by ``get_input_embeddings``)."""
    if not is_checkpointing(model):
        return
    if anat is not None:
        embeddings_frozen = not set(anat.embeddings) <= set(trainable)
    else:
        embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") \
            else None
        embeddings_frozen = embeddings is not None and not all(
            p.requires_grad for p in embeddings.parameters()
        )
    hooked = getattr(model, "_require_grads_hooks", None) or getattr(
        model, "_require_grads_hook", None
    )
    if embeddings_frozen and not hooked and hasattr(model, "enable_input_require_grads"):
        model.enable_input_require_grads()
        logger.info("gradient checkpointing with frozen embeddings: input grads enabled")
