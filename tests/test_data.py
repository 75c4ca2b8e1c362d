"""Tests for recipes.data.sources (corpora, splits, tokenization) and recipes.launcher.metrics."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402
import math  # noqa: E402
from collections import Counter  # noqa: E402

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from recipes.data.sources import (  # noqa: E402
    load_causal_lm_splits,
    load_classification_splits,
    load_tweets,
    split_digests,
    tokenize_causal_lm,
    tokenize_classification,
)
from recipes.launcher.metrics import (  # noqa: E402
    CLASSIFICATION_METRIC_PATH,
    perplexity,
)
from recipes.launcher.models import resolve_model_path  # noqa: E402
from recipes.launcher.tasks import get_task  # noqa: E402

SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="module")
def tweets():
    return load_classification_splits("tweets", seed=42)


@pytest.fixture(scope="module")
def bert_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model_path("minilm"))


def label_shares(labels, num_labels=3):
    counts = np.bincount(np.asarray(labels[:]), minlength=num_labels)
    return counts / counts.sum()


# ---------------------------------------------------------------------------- tweets


def test_tweets_labels_and_columns(tweets):
    splits, names = tweets
    assert names == ["negative", "neutral", "positive"]
    for name in SPLITS:
        assert splits[name].column_names == ["text", "label"]
        assert splits[name].features["label"].names == names
        assert isinstance(splits[name][0]["text"], str)


def test_tweets_deduplicated_and_disjoint(tweets):
    splits, _ = tweets
    texts = [text for name in SPLITS for text in splits[name]["text"]]
    assert len(texts) == len(set(texts)) == len(load_tweets())
    assert len(splits["validation"]) == len(splits["test"]) == round(0.1 * len(texts))


def test_tweets_dedup_keeps_consistent_labels():
    frame = load_tweets()
    assert frame["text"].is_unique
    assert 36_000 < len(frame) < 38_158  # 38,158 raw rows, 915 duplicate texts
    assert set(frame["label"]) == {"negative", "neutral", "positive"}


def test_tweets_splits_are_stratified(tweets):
    splits, _ = tweets
    corpus = label_shares([label for name in SPLITS for label in splits[name]["label"]])
    for name in SPLITS:
        assert np.abs(label_shares(splits[name]["label"]) - corpus).max() < 0.01, name


def test_tweets_split_is_deterministic_per_seed(tweets):
    splits, _ = tweets
    again, _ = load_classification_splits("tweets", seed=42)
    other, _ = load_classification_splits("tweets", seed=7)
    for name in SPLITS:
        assert again[name]["text"][:] == splits[name]["text"][:]
    assert split_digests(again) == split_digests(splits)  # labels and row order too
    assert set(other["test"]["text"]) != set(splits["test"]["text"])


def test_split_digests_change_with_any_row_or_their_order(tweets):
    splits, _ = tweets
    digests = split_digests(splits)
    assert {name: d["rows"] for name, d in digests.items()} == {
        name: len(splits[name]) for name in SPLITS}
    test = splits["test"]
    reordered = test.select([1, 0, *range(2, len(test))])
    relabelled = test.map(lambda row, i: {"label": (row["label"] + (i == 5)) % 3},
                          with_indices=True)
    for changed in (reordered, relabelled):
        other = split_digests(datasets.DatasetDict({**splits, "test": changed}))
        assert other["test"]["sha256"] != digests["test"]["sha256"]
        assert other["train"] == digests["train"]


def test_subsampling_is_stratified_and_deterministic(tweets):
    kwargs = dict(seed=42, max_train_samples=200, max_eval_samples=50)
    first, _ = load_classification_splits("tweets", **kwargs)
    second, _ = load_classification_splits("tweets", **kwargs)
    assert [len(first[name]) for name in SPLITS] == [200, 50, 50]
    assert first["train"]["text"][:] == second["train"]["text"][:]
    full, _ = tweets  # the same seed without limits: what the samples are drawn from
    for name in SPLITS:
        expected = label_shares(full[name]["label"]) * len(first[name])
        assert np.abs(np.bincount(first[name]["label"][:], minlength=3) - expected).max() < 1


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(validation_fraction=0), "validation_fraction must be between 0 and 1"),
        (dict(validation_fraction=0.5, test_fraction=0.5), "must be below 1"),
        (dict(max_train_samples=0), "max_train_samples must be a positive integer"),
    ],
)
@pytest.mark.parametrize("loader", [load_classification_splits, load_causal_lm_splits])
def test_bad_split_arguments(kwargs, message, loader):
    with pytest.raises(ValueError, match=message):  # before any data is read
        loader("no-such-file.csv", **kwargs)


def test_unknown_split_option_is_named():
    with pytest.raises(TypeError, match="unexpected keyword argument 'max_train_sample'"):
        load_causal_lm_splits("chatterbot", max_train_sample=10)


def test_chatterbot_is_not_a_classification_source():
    with pytest.raises(ValueError, match="'chatterbot' has no labels"):
        load_classification_splits("chatterbot")


# ---------------------------------------------------------------------------- local files

REVIEWS = [(f"review number {i} is {word}", word) for i in range(30) for word in ("bad", "good")]


def write_reviews(path):
    rows = [{"body": text, "verdict": label, "extra": 1} for text, label in REVIEWS]
    if path.suffix == ".csv":
        lines = ["body,verdict,extra"] + [f"{r['body']},{r['verdict']},1" for r in rows]
        path.write_text("\n".join(lines) + "\n")
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        path.write_text(json.dumps(rows))
    return path


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl"])
def test_local_file_with_custom_columns(tmp_path, suffix):
    path = write_reviews(tmp_path / f"reviews{suffix}")
    splits, names = load_classification_splits(
        str(path), text_column="body", label_column="verdict"
    )
    assert names == ["bad", "good"]  # string labels get ids in sorted order
    assert [len(splits[name]) for name in SPLITS] == [48, 6, 6]
    for name in SPLITS:
        assert splits[name].column_names == ["text", "label"]
        assert sorted(Counter(splits[name]["label"]).values()) == [len(splits[name]) // 2] * 2
        for row in splits[name]:
            assert row["text"].endswith(names[row["label"]])


def test_local_folder_with_test_split_gets_validation_carved(tmp_path):
    for split, count in (("train", 20), ("test", 4)):
        lines = ["text,label"] + [f"{split} text {i},{i % 2}" for i in range(count)]
        (tmp_path / f"{split}.csv").write_text("\n".join(lines) + "\n")
    splits, names = load_classification_splits(str(tmp_path), validation_fraction=0.2)
    assert names == ["0", "1"]
    assert splits["test"]["text"][:] == [f"test text {i}" for i in range(4)]
    assert len(splits["validation"]) == 4 and len(splits["train"]) == 16
    assert all(text.startswith("train") for text in splits["validation"]["text"])


def test_missing_column_is_reported_with_available_columns(tmp_path):
    path = write_reviews(tmp_path / "reviews.csv")
    with pytest.raises(ValueError, match=r"label column 'stars' not found; available columns"):
        load_classification_splits(str(path), text_column="body", label_column="stars")
    with pytest.raises(ValueError, match=r"text column 'text' not found.*'body'"):
        load_causal_lm_splits(str(path))


def test_nonexistent_local_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="data file .*missing.csv' does not exist"):
        load_classification_splits(str(tmp_path / "missing.csv"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_causal_lm_splits("no_such_corpus.jsonl")


def test_unknown_hub_dataset_offline():
    with pytest.raises(ValueError, match="could not load dataset 'no-such-org/no-such-data'"):
        load_classification_splits("no-such-org/no-such-data")


# ---------------------------------------------------------------------------- causal LM


def test_chatterbot_causal_lm_splits():
    splits = load_causal_lm_splits("chatterbot", seed=0)
    sizes = [len(splits[name]) for name in SPLITS]
    assert min(sizes) > 50
    texts = [text for name in SPLITS for text in splits[name]["text"]]
    assert len(texts) == len(set(texts))  # deduplicated and disjoint
    assert all(splits[name].column_names == ["text"] for name in SPLITS)
    assert any("\n" in text for text in texts)  # turns of one conversation joined
    small = load_causal_lm_splits("chatterbot", seed=0, max_train_samples=10, max_eval_samples=5)
    assert [len(small[name]) for name in SPLITS] == [10, 5, 5]


def test_tweets_as_causal_lm_corpus():
    splits = load_causal_lm_splits("tweets", max_train_samples=20, max_eval_samples=5)
    assert [len(splits[name]) for name in SPLITS] == [20, 5, 5]


def test_tokenize_causal_lm_makes_fixed_blocks(bert_tokenizer):
    splits = load_causal_lm_splits("chatterbot", max_train_samples=100, max_eval_samples=40)
    blocks = tokenize_causal_lm(splits, bert_tokenizer, block_size=32)
    for name in SPLITS:
        split = blocks[name]
        assert set(split.column_names) >= {"input_ids", "attention_mask", "labels"}
        assert len(split) > 0
        for row in split:
            assert len(row["input_ids"]) == 32
            assert row["labels"] == row["input_ids"]
    n_tokens = sum(len(ids) for ids in bert_tokenizer(splits["train"]["text"][:])["input_ids"])
    assert len(blocks["train"]) == n_tokens // 32  # one map batch: only the tail is dropped
    with pytest.raises(ValueError, match=r"^block_size=100000 is longer than the model takes "
                       r"\(512 tokens, the tokenizer's model_max_length\)"):
        tokenize_causal_lm(splits, bert_tokenizer, block_size=100_000)
    few = type(splits)({name: splits[name].select(range(2)) for name in SPLITS})
    with pytest.raises(ValueError, match=r"fewer than block_size=512 tokens .*--max_length"):
        tokenize_causal_lm(few, bert_tokenizer, block_size=512)


def test_classification_max_length_beyond_the_model_is_refused(bert_tokenizer, tweets):
    splits = first_rows(tweets[0], train=8, evaluation=4)
    with pytest.raises(ValueError, match=r"^max_length=4096 is longer than the model takes "
                       r"\(512 tokens"):
        tokenize_classification(splits, bert_tokenizer, max_length=4096)


def first_rows(splits, *, train: int, evaluation: int) -> datasets.DatasetDict:
    """The first rows of each tweets split (the loader's own subsampling is tested above)."""
    return datasets.DatasetDict({name: splits[name].select(range(train if name == "train"
                                                                 else evaluation))
                                 for name in SPLITS})


def test_tokenize_classification(bert_tokenizer, tweets):
    splits = first_rows(tweets[0], train=64, evaluation=16)
    tokenized = tokenize_classification(splits, bert_tokenizer, max_length=16)
    train = tokenized["train"]
    assert {"input_ids", "attention_mask", "labels"} <= set(train.column_names)
    assert "text" not in train.column_names
    lengths = {len(ids) for ids in train["input_ids"]}
    assert max(lengths) == 16 and len(lengths) > 1  # truncated, not padded
    assert train["labels"][:] == splits["train"]["label"][:]


# ---------------------------------------------------------------------------- metrics

PREDICTIONS = [0, 0, 1, 1, 2, 2, 2, 0]
REFERENCES = [0, 1, 1, 1, 2, 0, 2, 2]
# By hand: 5 of 8 correct. Class 0: TP 1, FP 2, FN 1 -> F1 2/5. Class 1: TP 2, FP 0, FN 1 -> 4/5.
# Class 2: TP 2, FP 1, FN 1 -> 2/3. Macro F1 = (2/5 + 4/5 + 2/3) / 3 = 28/45.


def test_metric_module_loads_offline_and_is_exact():
    import evaluate

    metric = evaluate.load(CLASSIFICATION_METRIC_PATH)
    result = metric.compute(predictions=PREDICTIONS, references=REFERENCES)
    assert result["accuracy"] == pytest.approx(5 / 8)
    assert result["f1"] == pytest.approx(28 / 45)
    with_absent = metric.compute(
        predictions=PREDICTIONS, references=REFERENCES, labels=[0, 1, 2, 3]
    )
    assert with_absent["f1"] == pytest.approx(28 / 15 / 4)


def test_compute_metrics_takes_argmax_of_logits():
    compute_metrics = get_task("classification").make_compute_metrics()
    logits = np.eye(3)[PREDICTIONS] * 5.0 - 1.0
    result = compute_metrics((logits, np.array(REFERENCES)))
    assert result == pytest.approx({"accuracy": 5 / 8, "f1": 28 / 45})
    assert compute_metrics(((logits, None), np.array(REFERENCES)))["accuracy"] == 5 / 8
    assert get_task("causal_lm").make_compute_metrics() is None
    with pytest.raises(ValueError, match="unknown task 'ranking'; valid tasks"):
        get_task("ranking")


def test_perplexity():
    assert perplexity(0.0) == 1.0
    assert perplexity(math.log(10.0)) == pytest.approx(10.0)
    assert perplexity(1e6) == math.inf


# ---------------------------------------------------------------------------- a user's bad files


def write_csv(path, rows, header="text,label"):
    path.write_text(header + "\n" + "".join(f"{text},{label}\n" for text, label in rows))
    return str(path)


def test_empty_file_is_one_line_naming_it(tmp_path):
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"^data file '.*empty\.csv' is empty \(0 bytes\)$"):
        load_classification_splits(str(empty))
    header_only = tmp_path / "header.csv"
    header_only.write_text("text,label\n")
    with pytest.raises(ValueError, match=r"^data file '.*header\.csv' has no rows$"):
        load_classification_splits(str(header_only))


def test_unparsable_files_name_the_file_and_the_reason(tmp_path):
    csv = tmp_path / "quote.csv"
    csv.write_text('text,label\n"never closed,a\nfine,b\n')
    with pytest.raises(ValueError, match=r"could not read data file '.*quote\.csv' as csv: .*EOF"):
        load_classification_splits(str(csv))
    jsonl = tmp_path / "broken.jsonl"
    jsonl.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": \n')
    with pytest.raises(ValueError, match=r"could not read data file '.*broken\.jsonl' as json"):
        load_classification_splits(str(jsonl))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_non_utf8_file_loads_with_a_warning_naming_what_was_replaced(tmp_path, suffix, caplog):
    path = tmp_path / f"latin1{suffix}"
    rows = [(f"caf\xe9 {i}", "ab"[i % 2]) for i in range(40)]
    if suffix == ".csv":
        body = "text,label\n" + "".join(f"{t},{label}\n" for t, label in rows)
    else:
        body = "".join(json.dumps({"text": t, "label": label}, ensure_ascii=False) + "\n"
                       for t, label in rows)
    path.write_bytes(body.encode("latin-1"))  # \xe9 alone is not UTF-8
    with caplog.at_level("WARNING", logger="recipes.data.sources"):
        splits, names = load_classification_splits(str(path))
    warning = [r.getMessage() for r in caplog.records if r.name == "recipes.data.sources"]
    first_line = 2 if suffix == ".csv" else 1
    assert warning == [f"data file {str(path)!r} is not valid UTF-8: 40 invalid byte sequences "
                       f"(the first on line {first_line}) replaced by U+FFFD"]
    assert names == ["a", "b"]
    texts = [t for name in SPLITS for t in splits[name]["text"]]
    assert len(texts) == 40 and all(t.startswith("caf\ufffd ") for t in texts)


def test_valid_utf8_gets_no_warning(tmp_path, caplog):
    path = write_csv(tmp_path / "ok.csv", [(f"caf\u00e9 {i}", i % 2) for i in range(20)])
    with caplog.at_level("WARNING", logger="recipes.data.sources"):
        splits, _ = load_classification_splits(path)
    assert not [r for r in caplog.records if r.name == "recipes.data.sources"]
    assert splits["train"][0]["text"].startswith("caf\u00e9")


def test_utf16_file_is_refused(tmp_path):
    path = tmp_path / "utf16.csv"
    path.write_bytes("text,label\nhello,a\nbye,b\n".encode("utf-16"))
    with pytest.raises(ValueError, match=r"data file '.*utf16\.csv' is UTF-16; save it as UTF-8"):
        load_classification_splits(str(path))


def test_one_class_label_column_is_refused(tmp_path):
    path = write_csv(tmp_path / "one.csv", [(f"text {i}", "positive") for i in range(40)])
    with pytest.raises(ValueError, match=r"label column 'label' has a single class \('positive'\)"
                       r" in the train split; classification needs at least 2 classes"):
        load_classification_splits(path)
    two = write_csv(tmp_path / "two.csv", [(f"text {i}", "ab"[i % 2]) for i in range(40)])
    with pytest.raises(ValueError, match=r"single class \('a'\)"):  # subsampled down to one row
        load_classification_splits(two, max_train_samples=1)


def test_label_only_in_test_is_named_in_a_warning(tmp_path, caplog):
    write_csv(tmp_path / "train.csv", [(f"train {i}", "ab"[i % 2]) for i in range(40)])
    write_csv(tmp_path / "test.csv", [(f"test {i}", "abc"[i % 3]) for i in range(12)])
    with caplog.at_level("WARNING", logger="recipes.data.sources"):
        splits, names = load_classification_splits(str(tmp_path))
    assert names == ["a", "b", "c"]  # the class stays in the head: ids are the files' labels
    assert 2 not in set(splits["train"]["label"])
    warning = [r.getMessage() for r in caplog.records if r.name == "recipes.data.sources"]
    assert warning == ["label 'c' of column 'label' occurs in the test split but not in train: "
                       "the model never trains on it, and 4 test examples count as errors"]


def test_label_column_that_is_not_a_label_column(tmp_path):
    path = write_csv(tmp_path / "rows.csv", [(f"text {i}", "ab"[i % 2]) for i in range(12)])
    with pytest.raises(ValueError, match=r"label column 'text' has a different value in every row "
                       r"\(12 rows\).*swapped"):
        load_classification_splits(path, text_column="label", label_column="text")
    with pytest.raises(ValueError, match=r"^text_column and label_column are both 'text'"):
        load_classification_splits(path, label_column="text")
