"""Which of the launcher's tasks a model can do, read from its config before any weight loads
(the tasks themselves are the table in ``recipes.launcher.tasks``).

- ``classification``: any model type with an ``AutoModelForSequenceClassification`` class.
- ``causal_lm``: a decoder, a model that predicts each token from the ones before it (Llama,
  GPT-2, SmolLM2, ...). An encoder-only model (BERT, MiniLM, RoBERTa, ...) is refused although
  transformers has a ``BertLMHeadModel``: loaded without ``is_decoder`` it attends both ways, sees
  the tokens it is asked to predict, and reports a perplexity that means nothing.
- ``seq2seq``: an encoder-decoder with an ``AutoModelForSeq2SeqLM`` class (T5, BART, ...).

Each task's entry in ``recipes.launcher.tasks`` names its ``*_refusal`` function here (what the
task needs and what the model is, or None when it can do the task);
``recipes.launcher.tasks.check_model_task`` adds the tasks the model can do and raises. A model
folder without a ``config.json`` (an empty folder, or a PEFT adapter folder) is refused in one
line by ``read_model_config``.
"""

from __future__ import annotations

from pathlib import Path


def model_class_name(config) -> str:
    """The class a config was saved from (its first ``architectures`` entry), else its type."""
    architectures = getattr(config, "architectures", None) or []
    return architectures[0] if architectures else f"{config.model_type!r} model"


def is_decoder(config) -> bool:
    """Whether a causal LM of this config predicts each token from the ones before it only."""
    from transformers.models.auto import modeling_auto

    if config.model_type not in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return False
    if getattr(config, "is_decoder", False) or getattr(config, "is_encoder_decoder", False):
        return True  # a decoder config, or the decoder of an encoder-decoder (BartForCausalLM)
    # a type that is also a masked LM is an encoder whose causal-LM head needs is_decoder=True
    return config.model_type not in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES


def read_model_config(name: str, path: str):
    """The config of the model at ``path`` (``name`` as the user gave it); a local folder without
    a ``config.json`` is a one-line ``ValueError``."""
    from transformers import AutoConfig

    folder = Path(path)
    if folder.is_dir() and not (folder / "config.json").is_file():
        files = sorted(entry.name for entry in folder.iterdir())
        if "adapter_config.json" in files:
            what = "is a PEFT adapter folder (adapter_config.json), not a model"
        elif files:
            shown = ", ".join(files[:4]) + (", ..." if len(files) > 4 else "")
            what = f"has no config.json (it holds {shown})"
        else:
            what = "is empty"
        raise ValueError(
            f"model folder {name!r} {what}; give a folder written by save_pretrained (with "
            "config.json and weights), 'minilm', 'smollm2' or a Hub model id"
        )
    return AutoConfig.from_pretrained(path)


SEQ2SEQ_EXAMPLES = ("t5", "bart", "mt5", "pegasus", "marian")


def causal_lm_refusal(name: str, config) -> str | None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    if is_decoder(config):
        return None
    kind = (
        "an encoder: it attends both ways and would see the tokens it is asked to predict"
        if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
        else "not a decoder"
    )
    return (
        "needs a decoder (a model that predicts each token from the ones before it: Llama, "
        f"GPT-2, SmolLM2, ...), but model {name!r} is a {model_class_name(config)} (type "
        f"{config.model_type!r}, {kind})"
    )


def seq2seq_refusal(name: str, config) -> str | None:
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES as SEQ2SEQ,
    )

    if config.model_type in SEQ2SEQ:
        return None
    examples = ", ".join(t for t in SEQ2SEQ_EXAMPLES if t in SEQ2SEQ)
    return (
        f"needs an encoder-decoder text model (AutoModelForSeq2SeqLM: {examples}, ...), but "
        f"model {name!r} is of type {config.model_type!r}"
    )


def classification_refusal(name: str, config) -> str | None:
    from transformers.models.auto import modeling_auto

    if config.model_type in modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        return None
    return (
        f"needs a model type with a sequence-classification head, but model {name!r} is a "
        f"{model_class_name(config)} (type {config.model_type!r})"
    )
