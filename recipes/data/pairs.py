"""Text pairs: an input text and the text that should follow it, for ``--task seq2seq`` (source ->
target) and ``--task sft`` (prompt -> completion).

``"chatterbot"`` (embedded, offline) gives every consecutive pair of turns of every conversation
of the English corpus (turn i, then turn i + 1), exact duplicate pairs dropped, first kept: 2,377
pairs, 1,243 of them distinct (the corpus repeats whole conversations across its files), with
1,043 distinct first turns. A local file or Hub dataset gives the two columns the run names.

Both tasks read their pairs through :func:`read_pairs`, so a user's file gets one set of rules:
the ``recipes.data.files`` rules for any file (a JSON row without a named key when others have
it, or a column that is a number in one row and a string in another: refused in one line), then
a named column the data lacks is refused in one line naming the flag and the columns there are,
as is one of lists or objects (TRL's conversational format: lists of messages), every value is
read as a string (a column of numbers becomes their text, as pyarrow casts it),
and rows whose text is missing (``null``, empty or blank) are left out, announced and recorded in
``rows_left_out`` (``recipes.data.files.leave_out_rows``). Carving the splits is the caller's:
seq2seq draws rows, sft draws whole prompts (``recipes.data.splits.draw_groups``).
"""

from __future__ import annotations

from dataclasses import dataclass

import datasets

from recipes.data.files import LeftOut, leave_out_rows, load_external, select_columns
from recipes.data.sources import load_chatterbot_conversations


@dataclass(frozen=True)
class PairColumns:
    """How one task names the two texts: in the splits (``first``, ``second``), by the user
    (``first_column``, ``second_column``) and on the command line (``first_flag``,
    ``second_flag``)."""

    first: str
    second: str
    first_column: str
    second_column: str
    first_flag: str
    second_flag: str


def chatterbot_pairs() -> list[tuple[str, str]]:
    """Every consecutive pair of turns of the chatterbot conversations, exact duplicates dropped
    (first kept), in file order."""
    return list(dict.fromkeys(
        (turns[i], turns[i + 1])
        for turns in load_chatterbot_conversations()
        for i in range(len(turns) - 1)
    ))


def read_pairs(
    source: str, dataset_config: str | None, names: PairColumns
) -> tuple[datasets.DatasetDict, LeftOut | None]:
    """The pairs of ``source`` as splits with exactly the string columns ``names.first`` and
    ``names.second`` (the splits the source has; the caller carves the rest), and what was left
    out (None for the embedded corpus, cleaned as the module docstring says).

    Raises:
        ValueError: one line for ``"tweets"`` (no pairs), a missing column (naming the flag and
            the columns there are), the two columns being one, or a split with no usable row.
    """
    first, second = names.first, names.second
    if source == "tweets":
        raise ValueError(
            f"source 'tweets' has no {first}/{second} pairs; use 'chatterbot', or a file or Hub "
            f"dataset with --{names.first_flag} and --{names.second_flag}"
        )
    if source == "chatterbot":
        rows = [{first: a, second: b} for a, b in chatterbot_pairs()]
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}), None
    if names.first_column == names.second_column:
        raise ValueError(
            f"{names.first_flag} and {names.second_flag} are both {names.first_column!r}; name "
            "two different columns"
        )
    raw = load_external(source, dataset_config, (names.first_column, names.second_column))
    available = raw["train"].column_names
    for flag, column in ((names.first_flag, names.first_column),
                         (names.second_flag, names.second_column)):
        if column not in available:
            raise ValueError(
                f"{flag}={column!r} is not a column of {source!r}; its columns: "
                f"{', '.join(available)}"
            )
    raw = select_columns(raw, {names.first_column: first, names.second_column: second})
    given = {first: (names.first_flag, names.first_column),
             second: (names.second_flag, names.second_column)}
    for column in (first, second):
        feature = raw["train"].features[column]
        if not isinstance(feature, datasets.Value):  # lists (chat messages), objects
            flag, name = given[column]
            raise ValueError(
                f"{flag}={name!r} of {source!r} holds {type(feature).__name__} values, not "
                "text; give a column of strings (lists of chat messages are not read)"
            )
        raw = raw.cast_column(column, datasets.Value("string"))

    def reason(row):
        for column in (first, second):
            if not (row[column] and row[column].strip()):
                return f"with no {column} in column {given[column][1]!r}"
        return None

    return leave_out_rows(raw, source, reason)
