"""Reading a classification or text dataset that is not embedded: a local file or a Hub dataset.

A local ``.csv`` / ``.json`` / ``.jsonl`` / ``.parquet`` file is read with the ``datasets``
builder of its suffix; a CSV or JSON file that is not valid UTF-8 is read through pandas with each
invalid byte sequence replaced (and a warning); anything else that does not look like a path is
a Hub dataset id. Split names ``valid`` and ``dev`` mean ``validation``. Then the text and label
columns are selected and renamed to ``text`` and ``label``, and the labels are encoded as a
``ClassLabel`` (``encode_labels``: labels as the file writes them, ``class_names``). Rows with
nothing to train on are left out by ``leave_out_rows``, which warns and records them in a
``LeftOut`` that the splits carry to ``results.json`` (``set_left_out`` / ``left_out_of``); JSON
rows that disagree are refused by ``check_json_rows``. Warnings go to the
``recipes.data.sources`` logger.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
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




def _looks_like_local_path(source: str) -> bool:
    """Whether ``source`` is meant as a local file rather than a Hub dataset id."""
    return Path(source).suffix.lower() in LOCAL_FORMATS or source.startswith((".", "/", "~"))


def load_external(
    source: str, dataset_config: str | None, columns: tuple[str, ...] = ()
) -> datasets.DatasetDict:
    """Load a local data file or a Hub dataset and normalise split names.

    ``columns``: the columns the run reads; in a JSON / JSON Lines file each row must have them
    (``check_json_rows``)."""
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
            loaded = _load_local_file(source, path, columns)
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


def _load_local_file(
    source: str, path: Path, columns: tuple[str, ...] = ()
) -> datasets.DatasetDict:
    """One local data file as a ``DatasetDict`` with a ``train`` split; one-line errors for
    files that are empty, unreadable, or have no rows, and for JSON rows that disagree
    (``check_json_rows``); text that is not UTF-8 is repaired with a warning (see the module
    docstring)."""
    builder = LOCAL_FORMATS[path.suffix.lower()]
    if path.stat().st_size == 0:
        raise ValueError(f"data file {source!r} is empty (0 bytes)")
    invalid = _invalid_utf8(source, path) if builder in TEXT_FORMATS else None
    if builder == "json":
        check_json_rows(source, path, columns)
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


def _json_records(path: Path):
    """``(row number, record)`` of a JSON Lines file or a JSON array, rows counted from 1; stops
    quietly at anything it cannot parse (the ``datasets`` reader then names the problem)."""
    lines = path.suffix.lower() == ".jsonl" or _looks_like_json_lines(path)
    try:
        if lines:
            with path.open(encoding="utf-8", errors="replace") as handle:
                row = 0
                for line in handle:
                    if line.strip():
                        row += 1
                        yield row, json.loads(line)
        else:
            records = json.loads(path.read_text(encoding="utf-8", errors="replace"))
            if isinstance(records, list):
                yield from enumerate(records, start=1)
    except json.JSONDecodeError:
        return


def _json_kind(value) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "list", dict: "object"}.get(type(value), type(value).__name__)


def check_json_rows(source: str, path: Path, columns: tuple[str, ...] = ()) -> None:
    """Refuse, in one line naming the file, the row and the column, a JSON / JSON Lines file whose
    rows cannot be read as one table: a column that is a number in one row and a string in
    another (``1`` and ``"1"``: pyarrow would fail on it, or a label would become two classes),
    or a key of ``columns`` that some rows have and others lack (``text`` in half the rows and
    ``sentence`` in the rest would silently lose half the rows). ``null`` is a missing value,
    not a kind."""
    first_kind: dict[str, tuple[str, int, object]] = {}
    first_with: dict[str, int] = {}
    first_without: dict[str, tuple[int, list]] = {}
    for row, record in _json_records(path):
        if not isinstance(record, dict):
            return  # not a table of records: the reader names it
        for key, value in record.items():
            kind = _json_kind(value)
            if kind is None:
                continue
            seen = first_kind.setdefault(key, (kind, row, value))
            if seen[0] != kind:
                raise ValueError(
                    f"data file {source!r}: column {key!r} is a {seen[0]} in row {seen[1]} "
                    f"({seen[2]!r}) but a {kind} in row {row} ({value!r}); write every value of "
                    "a column the same way (all numbers or all strings)"
                )
        for column in columns:
            if column in record:
                first_with.setdefault(column, row)
            else:
                first_without.setdefault(column, (row, list(record)))
    for column in columns:
        if column in first_with and column in first_without:
            row, keys = first_without[column]
            raise ValueError(
                f"data file {source!r}: row {row} has no {column!r} key (row "
                f"{first_with[column]} has it; row {row} has {', '.join(map(repr, keys))}); "
                f"name the column {column!r} in every row"
            )


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


@dataclass
class LeftOut:
    """The rows a loader left out of a source, per split, and why (row numbers from 1, as the
    rows stand in the file: the first data row, after a CSV's header, is row 1)."""

    source: str
    entries: list[dict] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(len(rows) for entry in self.entries for rows in entry["reasons"].values())

    def as_dict(self) -> dict:
        """What ``results.json`` records as ``rows_left_out``: the count and, per split and
        reason, how many rows."""
        return {
            "count": self.count,
            "reasons": {
                f"{entry['split']}: {reason}": len(rows)
                for entry in self.entries for reason, rows in entry["reasons"].items()
            },
        }


def _where(source: str, split: str, raw: datasets.DatasetDict) -> str:
    path = Path(source).expanduser()
    if path.is_file() and len(raw) == 1:
        return f"data file {source!r}"
    return f"dataset {source!r} (split {split!r})"


def leave_out_rows(
    raw: datasets.DatasetDict, source: str, reason_of, *, left_out: LeftOut | None = None
) -> tuple[datasets.DatasetDict, LeftOut]:
    """Drop the rows for which ``reason_of(row)`` (a dict of the selected columns) names a
    reason, warn once per split (how many rows of how many, why, the first row numbers) and
    record them in ``left_out``. A split left with no row is an error naming the reason."""
    left_out = left_out or LeftOut(source)
    kept = {}
    for name, split in raw.items():
        columns = {column: split[column][:] for column in split.column_names}
        reasons: dict[str, list[int]] = {}
        keep = []
        for index in range(len(split)):
            reason = reason_of({column: values[index] for column, values in columns.items()})
            if reason is None:
                keep.append(index)
            else:
                reasons.setdefault(reason, []).append(index + 1)
        if not reasons:
            kept[name] = split
            continue
        where = _where(source, name, raw)
        dropped = len(split) - len(keep)
        if not keep:
            raise ValueError(
                f"{where}: every one of its {len(split)} rows is left out ("
                + ", ".join(f"{len(rows)} {reason}" for reason, rows in reasons.items())
                + "); check the column names and the file"
            )
        logger.warning(
            "%s: %d of %d rows left out before training: %s", where, dropped, len(split),
            "; ".join(f"{len(rows)} {reason} (row{'s' if len(rows) > 1 else ''} "
                      f"{', '.join(map(str, rows[:5]))}{', ...' if len(rows) > 5 else ''})"
                      for reason, rows in reasons.items()),
        )
        left_out.entries.append({"split": name, "rows": len(split), "reasons": reasons})
        kept[name] = split.select(keep)
    return datasets.DatasetDict(kept), left_out


def _missing(value) -> bool:
    """None, NaN, or a string of nothing but spaces."""
    if value is None:
        return True
    if isinstance(value, float):
        return value != value
    return isinstance(value, str) and not value.strip()


def class_names(values, where: str, label_column: str) -> tuple[list, list[str]]:
    """The label values in id order and their names, as the file writes them: numbers that are
    whole keep integer names (``1.0`` is ``"1"``); fractional numbers, and labels that differ
    only in case or surrounding spaces, are a one-line error naming the values."""
    values = sorted(set(values), key=lambda v: (isinstance(v, str), v))
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    fractional = [v for v in numbers if isinstance(v, float) and not v.is_integer()]
    if fractional:
        shown = ", ".join(f"{v:g}" for v in fractional[:5]) + (", ..." if len(fractional) > 5
                                                                  else "")
        raise ValueError(
            f"{where}: label column {label_column!r} holds fractional numbers ({shown}), which are "
            "not classes; write each class as a whole number or a name in the file"
        )
    groups: dict[str, list[str]] = {}
    for value in values:
        if isinstance(value, str):
            groups.setdefault(value.strip().casefold(), []).append(value)
    clashes = [group for group in groups.values() if len(group) > 1]
    if clashes:
        shown = "; ".join(" / ".join(map(repr, group)) for group in clashes[:3])
        raise ValueError(
            f"{where}: label column {label_column!r} has labels that differ only in case or "
            f"surrounding spaces ({shown}); write each class the same way in every row of the file"
        )
    names = [str(int(v)) if v in numbers else str(v) for v in values]
    return values, names


def encode_labels(
    raw: datasets.DatasetDict,
    source: str = "data",
    text_column: str = "text",
    label_column: str = "label",
) -> tuple[datasets.DatasetDict, list[str], LeftOut]:
    """Turn the ``label`` column into ``ClassLabel`` ids, leaving out rows without text or label.

    A ``ClassLabel`` feature keeps its names (rows labelled -1, i.e. unlabelled, are left out);
    any other label values are numbered 0..K-1 in sorted order and named as ``class_names`` says.
    Rows left out are warned about and recorded (``leave_out_rows``); ``source``,
    ``text_column`` and ``label_column`` are the names the user gave, for the messages.
    """
    feature = raw["train"].features["label"]
    is_class_label = isinstance(feature, datasets.ClassLabel)
    no_text = f"with no text in column {text_column!r}"
    no_label = f"with no label in column {label_column!r}"

    def reason(row):
        if row["text"] is None:
            return no_text
        if _missing(row["label"]):
            return no_label
        if is_class_label and row["label"] < 0:
            return f"unlabelled (-1) in column {label_column!r}"
        return None

    cleaned, left_out = leave_out_rows(raw, source, reason)
    if is_class_label:
        label_names = list(feature.names)
    else:
        found = {value for split in cleaned.values() for value in split.unique("label")}
        values, label_names = class_names(found, _where(source, "train", raw), label_column)
        ids = {value: index for index, value in enumerate(values)}
        cleaned = cleaned.map(
            lambda batch: {"label": [ids[value] for value in batch["label"]]}, batched=True
        )
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=label_names)}
    )
    return cleaned.cast(features), label_names, left_out


def set_left_out(splits: datasets.DatasetDict, left_out: LeftOut | None) -> datasets.DatasetDict:
    """Attach what a loader left out to its splits (``left_out_of`` reads it back)."""
    splits.rows_left_out = left_out
    return splits


def left_out_of(splits) -> dict:
    """``rows_left_out`` of ``results.json``: what the loader of ``splits`` left out (a count of
    0 for a loader that left out nothing, or for embedded corpora, cleaned as documented)."""
    left_out = getattr(splits, "rows_left_out", None)
    return left_out.as_dict() if left_out is not None else {"count": 0, "reasons": {}}
