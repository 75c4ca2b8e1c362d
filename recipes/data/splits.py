"""Carving the splits a source lacks out of ``train``, and subsampling them, seeded and stratified.

Every draw is ``datasets``' ``train_test_split``, stratified by the ``label`` column for
classification (``stratify_by_column``), with a ``np.random.default_rng`` generator: ``test`` is
carved first, then ``validation`` from what is left, from one generator seeded with ``seed``.
Subsampling (``max_train_samples``, ``max_eval_samples``) draws from each split with its own
generator (``[seed, split index]``), so that cutting ``train`` never changes ``validation`` or
``test``.

Carving can instead draw whole groups (``group=``, a column: the prompt of ``--task sft``):
``draw_groups`` takes every row of a value or none, so no value of that column lands in two
splits. It is what keeps a prompt that the corpus answers several ways ("Tell me a joke" has 30
answers in chatterbot) from being trained on and then scored as held out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import datasets
import numpy as np

SPLITS = ("train", "validation", "test")

logger = logging.getLogger("recipes.data.sources")


def check_label_coverage(
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


@dataclass(frozen=True)
class SplitSizes:
    """How a loader carves and subsamples its splits: the ``**split_options`` every loader of
    ``recipes.data.sources`` and ``recipes.launcher.seq2seq`` takes, checked when built (before any
    data is read).

    Args:
        seed: Seed for carving missing splits and for subsampling.
        validation_fraction: Share of the ``train`` pool carved out as ``validation`` when the
            source has no validation split.
        test_fraction: Share of the ``train`` pool carved out as ``test`` when the source has no
            test split.
        max_train_samples: Keep at most this many ``train`` rows.
        max_eval_samples: Keep at most this many rows in ``validation`` and in ``test`` each.
    """

    seed: int = 42
    validation_fraction: float = 0.1
    test_fraction: float = 0.1
    max_train_samples: int | None = None
    max_eval_samples: int | None = None

    def __post_init__(self):
        check_arguments(self.validation_fraction, self.test_fraction, self.max_train_samples,
                        self.max_eval_samples)

    def carve(self, raw: datasets.DatasetDict, *, stratify: bool,
              group: str | None = None) -> datasets.DatasetDict:
        """The missing splits carved from ``train`` (``complete_splits``), then ``subsample``d;
        ``stratify`` by the ``label`` column (classification) or not; ``group``: carve whole
        groups of rows with one value of this column (``draw_groups``)."""
        splits = complete_splits(raw, self.seed, self.validation_fraction, self.test_fraction,
                                 stratify=stratify, group=group)
        return subsample(splits, self.seed, self.max_train_samples, self.max_eval_samples,
                         stratify=stratify)


def check_arguments(
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


def draw(
    split: datasets.Dataset, n_take: int, generator: np.random.Generator, *, stratify: bool
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Draw ``n_take`` rows of ``split`` at random: ``(taken, rest)``.

    ``datasets``' ``train_test_split``, stratified by the ``label`` column (a ``ClassLabel``) when
    ``stratify`` is set and possible: every class needs 2 rows, and both parts at least one row
    per class. Otherwise the draw is a plain random one, with a warning saying why.
    """
    column = "label" if stratify else None
    if stratify:
        counts = np.bincount(np.asarray(split["label"][:]))
        classes = int((counts > 0).sum())
        if counts[counts > 0].min() < 2 or min(n_take, len(split) - n_take) < classes:
            logger.warning(
                "drawing %d of %d rows without stratifying by label: %d classes, the smallest "
                "with %d rows, are too few to put each class on both sides",
                n_take, len(split), classes, counts[counts > 0].min(),
            )
            column = None
    parts = split.train_test_split(test_size=n_take, stratify_by_column=column,
                                   generator=generator)
    return parts["test"], parts["train"]


def draw_groups(
    split: datasets.Dataset, n_take: int, generator: np.random.Generator, column: str
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Draw whole groups of ``split`` (rows with the same value of ``column``) in a random order
    until at least ``n_take`` rows are taken: ``(taken, rest)``. No value is in both parts.

    The groups are shuffled by ``generator`` (in the order their values first occur, so the draw
    depends on the seed and the data only); the taken rows keep the shuffled group order, each
    group's rows in split order. A large last group may take a few rows more than ``n_take``;
    the rest keeps at least one group, else it is a ``ValueError``.
    """
    values = split[column][:]
    groups: dict[str, list[int]] = {}
    for index, value in enumerate(values):
        groups.setdefault(value, []).append(index)
    order = generator.permutation(len(groups))
    members = list(groups.values())
    taken: list[int] = []
    drawn = 0
    for position in order:
        if len(taken) >= n_take:
            break
        taken += members[position]
        drawn += 1
    if drawn >= len(members):
        raise ValueError(
            f"the {len(split)} rows have only {len(members)} distinct values of {column!r}, too "
            f"few to draw {n_take} rows by {column} and keep some for the rest"
        )
    chosen = set(taken)
    rest = [index for index in range(len(split)) if index not in chosen]
    return split.select(taken), split.select(rest)


def complete_splits(
    raw: datasets.DatasetDict,
    seed: int,
    validation_fraction: float,
    test_fraction: float,
    *,
    stratify: bool,
    group: str | None = None,
) -> datasets.DatasetDict:
    """Carve ``test`` and ``validation`` out of ``train`` where the source lacks them.

    Fractions are of the ``train`` pool before carving; empty splits count as missing. With
    ``group``, whole groups of rows are carved (``draw_groups``), so no value of that column
    is in two carved splits.
    """
    present = {name: split for name, split in raw.items() if len(split) > 0}
    if "train" not in present:
        raise ValueError("the 'train' split is empty after dropping rows without text or label")
    total = len(present["train"])
    generator = np.random.default_rng(seed)
    for name, fraction in (("test", test_fraction), ("validation", validation_fraction)):
        if name in present:
            continue
        n_take = max(1, round(fraction * total))
        if n_take >= len(present["train"]):
            raise ValueError(f"train split has only {total} rows, too few to carve a {name} split")
        if group is not None:
            present[name], present["train"] = draw_groups(present["train"], n_take, generator,
                                                          group)
        else:
            present[name], present["train"] = draw(present["train"], n_take, generator,
                                                   stratify=stratify)
    return datasets.DatasetDict({name: present[name] for name in SPLITS})


def subsample(
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
        generator = np.random.default_rng([seed, SPLITS.index(name)])
        result[name], _ = draw(split, limit, generator, stratify=stratify)
    return datasets.DatasetDict(result)
