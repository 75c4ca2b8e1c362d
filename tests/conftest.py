"""Fixtures shared by the launcher tests (recipes/run.py end to end)."""

import pytest
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from recipes.launcher.models import resolve_model_path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A 3-block BERT classifier checkpoint with MiniLM's real tokenizer (no download)."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("minilm"))
    config = AutoConfig.for_model("bert", hidden_size=32, num_hidden_layers=3,
                                  num_attention_heads=2, intermediate_size=37,
                                  vocab_size=tokenizer.vocab_size, num_labels=3)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)
