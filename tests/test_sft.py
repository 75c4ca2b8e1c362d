"""recipes/run.py --task sft: prompt -> completion pairs on a decoder, the loss on the completion
only. The labels, the truncation that never cuts an answer, the split by prompt, the completion
metrics, a run per kind of method with its generations, frozen weights, and bad input."""

import json
import logging
import math
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from recipes.data.files import left_out_of
from recipes.data.sources import split_digests
from recipes.launcher import models
from recipes.launcher.common import ConfigError
from recipes.launcher.main import main
from recipes.launcher.metrics.completion import completion_predictions, completion_scores
from recipes.launcher.results import read_results
from recipes.launcher.sft import (
    CompletionCollator,
    encode_pair,
    generation_rows,
    load_sft_splits,
    start_ids,
    tokenize_sft,
)

WORDS = ["hello", "world", "how", "are", "you", "i", "am", "fine", "what", "is", "your", "name",
         "my", "bot", "tell", "me", "a", "joke", "no", "yes", "good", "bad", "day", "night"]
SPECIALS = ["<pad>", "<unk>", "<eos>", "<s>"]
VOCAB = {token: index for index, token in enumerate([*SPECIALS, *WORDS])}
PAD, UNK, EOS, BOS = 0, 1, 2, 3


def word_tokenizer(bos: bool = False) -> PreTrainedTokenizerFast:
    """A word-level tokenizer: one id per word (``VOCAB``), an eos token; with ``bos``, a BOS
    before every text, as Llama's tokenizer does."""
    backend = Tokenizer(WordLevel(VOCAB, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    if bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", BOS)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                   eos_token="<eos>", pad_token="<pad>",
                                   bos_token="<s>" if bos else None)


def ids(text: str) -> list[int]:
    return [VOCAB[word] for word in text.split()]


def pairs(*rows) -> datasets.DatasetDict:
    split = datasets.Dataset.from_list([{"prompt": p, "completion": c} for p, c in rows])
    return datasets.DatasetDict({"train": split, "validation": split, "test": split})


# -- tokenization: labels and truncation -------------------------------------------------------


@pytest.mark.parametrize("bos", [False, True], ids=["no-bos", "bos"])
def test_labels_mask_exactly_the_prompt_tokens(bos):
    tokenizer = word_tokenizer(bos)
    assert start_ids(tokenizer) == ([BOS] if bos else [])
    row = tokenize_sft(pairs(("how are you", "i am fine")), tokenizer, 32)["train"][0]
    prompt = [BOS] * bos + ids("how are you")  # the newline is whitespace to this tokenizer
    answer = ids("i am fine") + [EOS]
    assert row["input_ids"] == prompt + answer
    assert row["labels"] == [-100] * len(prompt) + answer
    assert row["attention_mask"] == [1] * len(prompt + answer)
    assert (row["prompt"], row["completion"]) == ("how are you", "i am fine")


def test_a_chat_template_renders_the_prompt_as_a_user_turn():
    tokenizer = word_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }} {{ m['content'] }} "
                               "{% endfor %}{% if add_generation_prompt %}bot {% endif %}")
    row = tokenize_sft(pairs(("how are you", "i am fine")), tokenizer, 32,
                       chat_template=True)["train"][0]
    prompt = [UNK] + ids("how are you bot")  # "user" is not in the vocabulary
    assert row["input_ids"] == prompt + ids("i am fine") + [EOS]
    assert row["labels"] == [-100] * len(prompt) + ids("i am fine") + [EOS]


def test_the_prompt_is_cut_from_the_left_and_the_completion_never(caplog):
    assert encode_pair([BOS], [10, 11, 12, 13], [20, 21], EOS, 6) == {
        "input_ids": [BOS, 12, 13, 20, 21, EOS], "labels": [-100, -100, -100, 20, 21, EOS],
        "cut": True}
    assert encode_pair([], [10], [20, 21, 22], EOS, 4) is None  # no room for a prompt token
    splits = pairs(("what is your name my bot", "my name is bot"),
                   ("hello", "good day"),
                   ("hello world", "i am a good bot no bad bot"))  # 9 + eos: too long
    with caplog.at_level(logging.WARNING, logger="recipes.data.sources"):
        tokenized = tokenize_sft(splits, word_tokenizer(), 7, source="pairs.jsonl")
    train = tokenized["train"]
    assert len(train) == 2
    assert train[0]["input_ids"] == ids("my bot my name is bot") + [EOS]
    assert train[0]["labels"] == [-100, -100] + ids("my name is bot") + [EOS]
    assert train[1]["input_ids"] == ids("hello good day") + [EOS]
    recorded = left_out_of(tokenized)
    assert recorded["count"] == 3  # the long row, in each of the three splits
    reason = ("whose completion and eos token leave no room for the prompt in max_length=7 "
              "(answers are never cut)")
    assert recorded["reasons"] == {f"{name}: {reason}": 1
                                   for name in ("train", "validation", "test")}
    messages = [r.getMessage() for r in caplog.records]
    assert any("1 of 3 rows left out before training: 1 " + reason in m for m in messages)
    assert any("train split: 1 of 2 prompts cut from the left" in m for m in messages)


def test_the_collator_pads_right_with_minus_100_labels():
    rows = [{"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7],
             "prompt": "x"},
            {"input_ids": [5, 6], "attention_mask": [1, 1], "labels": [-100, 6]}]
    batch = CompletionCollator(PAD)(rows)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 6, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [-100, 6, -100]]
    assert set(batch) == {"input_ids", "attention_mask", "labels"}


# -- data: the split by prompt -----------------------------------------------------------------


def test_chatterbot_pairs_split_by_prompt_without_overlap_and_by_seed():
    splits = load_sft_splits("chatterbot", seed=0)
    prompts = {name: set(split["prompt"]) for name, split in splits.items()}
    assert not prompts["train"] & prompts["validation"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["validation"] & prompts["test"]
    sizes = {name: len(split) for name, split in splits.items()}
    assert sum(sizes.values()) == 1243 and len(set().union(*prompts.values())) == 1043
    assert 110 <= sizes["test"] <= 140 and 110 <= sizes["validation"] <= 140
    jokes = [name for name, split in splits.items() if "Tell me a joke" in split["prompt"]]
    assert len(jokes) == 1  # its 30 answers are in one split
    assert split_digests(load_sft_splits("chatterbot", seed=0)) == split_digests(splits)
    assert split_digests(load_sft_splits("chatterbot", seed=1)) != split_digests(splits)
    small = load_sft_splits("chatterbot", seed=0, max_train_samples=50, max_eval_samples=10)
    assert {name: len(split) for name, split in small.items()} == {
        "train": 50, "validation": 10, "test": 10}
    assert set(small["test"]["prompt"]) <= prompts["test"]


def test_a_file_of_repeated_prompts_splits_by_prompt(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i % 10}", "completion": f"a{i}"}) + "\n"
                            for i in range(60)))
    splits = load_sft_splits(str(path), seed=3)
    prompts = [set(split["prompt"]) for split in splits.values()]
    assert sum(map(len, prompts)) == 10 and len(set().union(*prompts)) == 10
    assert all(len(split) % 6 == 0 for split in splits.values())  # whole prompts, 6 rows each


# -- metrics -----------------------------------------------------------------------------------


def test_token_accuracy_and_loss_on_constructed_logits():
    labels = torch.tensor([[-100, -100, 3, 1], [-100, 2, 4, -100]])
    logits = torch.full((2, 4, 5), -5.0)
    logits[0, 1, 3] = logits[0, 2, 0] = 5.0  # predicts 3 (right), then 0 (label 1: wrong)
    logits[1, 0, 2] = logits[1, 1, 4] = 5.0  # predicts 2, then 4: both right
    logits[:, 3, 1] = 5.0  # the last position predicts nothing: dropped
    predicted, losses = completion_predictions(logits, labels)
    assert predicted.tolist() == [[-100, 0, 3, 0], [-100, 2, 4, 0]]  # aligned with the labels
    expected = torch.nn.functional.cross_entropy(
        torch.stack([logits[0, 1], logits[0, 2], logits[1, 0], logits[1, 1]]),
        torch.tensor([3, 1, 2, 4]))
    scores = completion_scores(predicted, losses, labels)
    assert scores["token_accuracy"] == 0.75 and scores["completion_tokens"] == 4
    assert scores["completion_loss"] == pytest.approx(expected.item(), rel=1e-6)
    # Trainer pads batches of other widths with -100 before concatenating: nothing changes
    padded = [np.pad(a.numpy(), ((0, 0), (0, 2)), constant_values=-100)
              for a in (predicted, losses, labels)]
    assert completion_scores(*padded) == scores


def test_the_loss_is_the_mean_over_tokens_not_over_batches():
    """Two batches of 1 and 3 completion tokens: the exact mean weighs tokens, where a mean of
    the batches' means (Trainer's eval_loss) would weigh the one token as much as the three."""
    first = torch.tensor([[-100, 1]])
    second = torch.tensor([[-100, 1, 1, 1]])
    logits_1, logits_2 = torch.zeros(1, 2, 3), torch.zeros(1, 4, 3)
    logits_1[0, 0, 1] = 4.0  # confident and right: a small loss
    parts = [completion_predictions(lg, lb) for lg, lb in ((logits_1, first), (logits_2, second))]
    width = 4
    stacked = [np.concatenate([np.pad(p[i].numpy(), ((0, 0), (0, width - p[i].shape[1])),
                                      constant_values=-100) for p in parts]) for i in (0, 1)]
    labels = np.concatenate([np.pad(first.numpy(), ((0, 0), (0, 2)), constant_values=-100),
                             second.numpy()])
    loss = completion_scores(*stacked, labels)["completion_loss"]
    small = torch.nn.functional.cross_entropy(logits_1[0, :1], torch.tensor([1])).item()
    assert loss == pytest.approx((small + 3 * math.log(3)) / 4, rel=1e-6)
    assert abs(loss - (small + math.log(3)) / 2) > 0.1


def test_generation_rows_are_the_first_distinct_prompts():
    split = datasets.Dataset.from_dict({"prompt": ["a", "a", "b", "c", "b", "d"]})
    assert generation_rows(split, 3) == [0, 2, 3]
    assert generation_rows(split, 0) == []


# -- recipes/run.py --task sft end to end ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A 3-block Llama whose lm_head is the input embedding matrix (as SmolLM2's), with the
    word-level tokenizer."""
    folder = tmp_path_factory.mktemp("tiny-llama-sft")
    word_tokenizer().save_pretrained(folder)
    config = AutoConfig.for_model("llama", hidden_size=32, num_hidden_layers=3,
                                  num_attention_heads=2, num_key_value_heads=1,
                                  intermediate_size=37, vocab_size=len(VOCAB),
                                  tie_word_embeddings=True, pad_token_id=PAD, eos_token_id=EOS,
                                  bos_token_id=BOS)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    """40 prompt/completion rows (10 prompts, 4 answers each), one with an empty completion, one
    with a null prompt and one whose completion does not fit max_length=12."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        prompt = " ".join(rng.choice(WORDS, size=3 + i % 4))
        rows.append({"prompt": f"{WORDS[i % 10]} {prompt}",
                     "completion": " ".join(rng.choice(WORDS, size=2 + i % 3))})
    rows[5]["completion"] = ""
    rows[6]["prompt"] = None
    rows[7]["completion"] = " ".join(WORDS[:12])
    path = tmp_path_factory.mktemp("sft-data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def flags(model, data, out, *extra):
    return ["--model_name_or_path", model, "--task", "sft", "--dataset", data,
            "--output_dir", str(out), "--max_steps", "3", "--per_device_train_batch_size", "4",
            "--per_device_eval_batch_size", "8", "--max_length", "12", "--eval_strategy", "no",
            "--report_to", "none", "--use_cpu", "true", "--learning_rate", "1e-2",
            "--logging_steps", "1", "--disable_tqdm", "true", "--generations", "3",
            "--max_new_tokens", "4", *extra]


METHODS = {
    "full": [],
    "bottom_n": ["--policy", "bottom_n", "--policy_options",
                 '{"n": 2, "tied_weights": "freeze"}', "--cache_frozen_prefix", "true"],
    "lora": ["--peft_method", "lora", "--peft_options",
             '{"r": 2, "target_modules": ["q_proj", "v_proj"]}'],
    # as configs/chatterbot/smollm2/sft_auto_freeze.yaml: the first freeze takes the tied head
    "auto_freeze": ["--policy", "auto_freeze", "--policy_options",
                    '{"every": 1, "tied_weights": "freeze"}', "--cache_frozen_prefix", "true",
                    "--max_steps", "6"],
}


@pytest.mark.parametrize("method", list(METHODS))
def test_a_run_records_the_completion_metrics_and_generations(method, tmp_path, tiny_llama,
                                                              pairs_file):
    out = tmp_path / "out"
    main(flags(tiny_llama, pairs_file, out, *METHODS[method]))
    run = read_results(out / "results.json")
    assert (run.task, run.method) == ("sft", {"lora": "peft", "full": "full"}.get(method,
                                                                                  "freeze"))
    for prefix in ("eval", "test"):
        loss = run.metrics[f"{prefix}_loss"]
        assert loss > 0 and run.metrics[f"{prefix}_perplexity"] == pytest.approx(math.exp(loss))
        assert 0 <= run.metrics[f"{prefix}_token_accuracy"] <= 1
        assert run.metrics[f"{prefix}_completion_tokens"] > 0
    assert run.rows_left_out["count"] == 3
    assert run.rows_left_out["reasons"]["train: with no completion in column 'completion'"] == 1
    assert run.rows_left_out["reasons"]["train: with no prompt in column 'prompt'"] == 1
    assert set(run.data) == {"train", "validation", "test"}
    assert len(run.generations) == 3
    test_prompts = set(load_sft_splits(pairs_file)["test"]["prompt"])
    for example in run.generations:
        assert set(example) == {"prompt", "reference", "generated", "stopped"}
        assert example["prompt"] in test_prompts and isinstance(example["generated"], str)
    assert len({example["prompt"] for example in run.generations}) == 3
    if method == "bottom_n":  # embeddings (= the tied head) and blocks 0, 1 never moved
        assert run.frozen_audit["passed"] and run.prefix_cache["records"] > 0  # cache on
        base = load_file(Path(tiny_llama) / "model.safetensors")
        trained = load_file(out / "model.safetensors")
        frozen = [name for name in base if name.startswith(
            ("model.embed_tokens.", "model.layers.0.", "model.layers.1."))]
        assert frozen and all(torch.equal(base[name], trained[name]) for name in frozen)
        assert any(not torch.equal(base[name], trained[name]) for name in base
                   if name.startswith("model.layers.2."))
    if method == "auto_freeze":  # it froze blocks, with the tied head, and replayed them
        frozen = [event for event in run.schedule_events if event.get("froze")]
        assert frozen and run.frozen_audit["passed"] and run.prefix_cache["records"] > 0


def test_eval_loss_is_the_exact_mean_over_validation_completion_tokens(tmp_path, tiny_llama,
                                                                       pairs_file):
    """The saved model, rescored by hand row by row, gives the run's eval_loss and token
    accuracy: the mean over every completion token, whatever the batches."""
    out = tmp_path / "out"
    run = main(flags(tiny_llama, pairs_file, out, "--per_device_eval_batch_size", "3"))
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = models.load_model_and_tokenizer(str(out), "sft")[1]
    validation = tokenize_sft(load_sft_splits(pairs_file), tokenizer, 12)["validation"]
    total, right, count = 0.0, 0, 0
    with torch.no_grad():
        for row in validation:
            logits = model(input_ids=torch.tensor([row["input_ids"]])).logits[0, :-1]
            labels = torch.tensor(row["labels"][1:])
            scored = labels != -100
            total += torch.nn.functional.cross_entropy(logits[scored], labels[scored],
                                                       reduction="sum").item()
            right += (logits[scored].argmax(-1) == labels[scored]).sum().item()
            count += scored.sum().item()
    assert run["eval_completion_tokens"] == count
    assert run["eval_loss"] == pytest.approx(total / count, rel=1e-5)
    assert run["eval_token_accuracy"] == pytest.approx(right / count)


# -- bad input ---------------------------------------------------------------------------------


def test_a_file_without_completion_is_one_line_before_any_model_loads(tmp_path, tiny_llama,
                                                                      run_cli, monkeypatch):
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q {i}", "answer": f"a {i}"}) + "\n"
                            for i in range(10)))
    loaded = []
    monkeypatch.setattr(models, "load_model_and_tokenizer", lambda *a, **k: loaded.append(a))
    done = run_cli(*flags(tiny_llama, str(path), tmp_path / "out"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: completion_column='completion' is not a column of {str(path)!r}; its "
        "columns: prompt, answer")
    assert loaded == [] and not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="^prompt_column and completion_column are both "
                                          "'prompt'; name two different columns$"):
        main(flags(tiny_llama, str(path), tmp_path / "out", "--completion_column", "prompt"))


def test_a_column_of_chat_messages_is_one_line(tmp_path, tiny_llama):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q {i}", "completion": [
        {"role": "assistant", "content": f"a {i}"}]}) + "\n" for i in range(10)))
    with pytest.raises(ConfigError, match=r"^completion_column='completion' of '.*chat.jsonl' "
                                          r"holds List values, not text; give a column of "
                                          r"strings \(lists of chat messages are not read\)$"):
        main(flags(tiny_llama, str(path), tmp_path / "out"))


def test_an_encoder_is_refused_for_sft_in_one_line(tmp_path, tiny_bert, pairs_file):
    with pytest.raises(ConfigError, match=r"^task='sft' needs a decoder .* but model .* is a "
                                          r"BertForSequenceClassification"):
        main(flags(tiny_bert, pairs_file, tmp_path / "out"))


@pytest.mark.parametrize("extra,message", [
    (["--generations", "-1"], r"^generations=-1 must be an integer >= 0$"),
    (["--max_new_tokens", "0"], r"^max_new_tokens=0 must be an integer >= 1$"),
    (["--chat_template", "true"], r"^chat_template=true needs a tokenizer with a chat template"),
    (["--dataset", "tweets"], r"^source 'tweets' has no prompt/completion pairs; use "
                              r"'chatterbot', or a file or Hub dataset with --prompt_column and "
                              r"--completion_column$"),
])
def test_other_bad_input_is_one_line(extra, message, tmp_path, tiny_llama, pairs_file):
    with pytest.raises(ConfigError, match=message):
        main(flags(tiny_llama, pairs_file, tmp_path / "out", *extra))
