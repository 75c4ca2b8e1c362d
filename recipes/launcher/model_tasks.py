"""Which of the launcher's tasks a model can do, read from its config before any weight loads
(the tasks themselves are the table in ``recipes.launcher.tasks``).

- ``classification``: any model type with an ``AutoModelForSequenceClassification`` class.
- ``causal_lm``: a decoder, a model that predicts each token from the ones before it (Llama,
  GPT-2, SmolLM2, ...). An encoder-only model (BERT, MiniLM, RoBERTa, ...) is refused although
  transformers has a ``BertLMHeadModel``: loaded without ``is_decoder`` it attends both ways, sees
  the tokens it is asked to predict, and reports a perplexity that means nothing.
- ``seq2seq``: an encoder-decoder with an ``AutoModelForSeq2SeqLM`` class (T5, BART, ...).

``check_model_task`` refuses a model that cannot do the task in one line naming the model, its
class and the tasks it can do; a model folder without a ``config.json`` (an empty folder, or a
PEFT adapter folder) is refused in one line too.
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


def tasks_of(config) -> list[str]:
    """The launcher's tasks a model of ``config`` can do."""
    from transformers.models.auto import modeling_auto

    tasks = []
    if config.model_type in modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        tasks.append("classification")
    if is_decoder(config):
        tasks.append("causal_lm")
    if config.model_type in modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES:
        tasks.append("seq2seq")
    return tasks


def describe_tasks(tasks: list[str]) -> str:
    if not tasks:
        return "none of the launcher's tasks"
    return "task " + " or ".join(repr(task) for task in tasks)


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


def check_model_task(name: str, path: str, task: str):
    """Refuse, before any weight loads, a model that cannot do ``task`` (module docstring);
    return its config."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    config = read_model_config(name, path)
    if task == "causal_lm" and not is_decoder(config):
        kind = (
            "an encoder: it attends both ways and would see the tokens it is asked to predict"
            if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES
            else "not a decoder"
        )
        raise ValueError(
            f"task='causal_lm' needs a decoder (a model that predicts each token from the ones "
            f"before it: Llama, GPT-2, SmolLM2, ...), but model {name!r} is a "
            f"{model_class_name(config)} (type {config.model_type!r}, {kind}); for it use "
            f"{describe_tasks(tasks_of(config))}"
        )
    if task == "seq2seq" and "seq2seq" not in tasks_of(config):
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES as SEQ2SEQ,
        )

        examples = ", ".join(t for t in SEQ2SEQ_EXAMPLES if t in SEQ2SEQ)
        raise ValueError(
            f"task='seq2seq' needs an encoder-decoder text model (AutoModelForSeq2SeqLM: "
            f"{examples}, ...), but model {name!r} is of type {config.model_type!r}; for it use "
            f"{describe_tasks(tasks_of(config))}"
        )
    if task == "classification" and "classification" not in tasks_of(config):
        raise ValueError(
            f"task='classification' needs a model type with a sequence-classification head, but "
            f"model {name!r} is a {model_class_name(config)} (type {config.model_type!r}); for "
            f"it use {describe_tasks(tasks_of(config))}"
        )
    return config
