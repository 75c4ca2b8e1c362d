"""Carving the splits a source lacks out of ``train``, and subsampling them, seeded and stratified.

Splits are carved by hand rather than with ``datasets``' ``train_test_split(stratify_by_column=)``
on purpose: the committed comparison's runs were trained and scored on these exact rows, and
``train_test_split`` (scikit-learn's shuffle split over ``np.random.RandomState``) draws other
rows from the same seed. The method: within each label, a seeded permutation
(``np.random.default_rng(seed)``); the count taken from each label is its share of the total,
rounded by the largest-remainder method so that the counts add up exactly; ``test`` is carved
first, then ``validation`` from what is left. Subsampling (``max_train_samples``,
``max_eval_samples``) takes a stratified sample of each split the same way, with its own seed per
split, so that cutting ``train`` never changes ``validation`` or ``test``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import datasets
import numpy as np

SPLITS = ("train", "validation", "test")

logger = logging.getLogger("recipes.data")


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
    ``recipes.data`` and ``recipes.seq2seq`` takes, checked when built (before any data is read).

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

    def carve(self, raw: datasets.DatasetDict, *, stratify: bool) -> datasets.DatasetDict:
        """The missing splits carved from ``train`` (``complete_splits``), then ``subsample``d;
        ``stratify`` by the ``label`` column (classification) or not."""
        splits = complete_splits(raw, self.seed, self.validation_fraction, self.test_fraction,
                                 stratify=stratify)
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


def proportional_counts(group_sizes: np.ndarray, total: int) -> np.ndarray:
    """Share ``total`` among groups in proportion to their sizes (largest remainder method)."""
    exact = group_sizes * total / group_sizes.sum()
    counts = np.floor(exact).astype(int)
    leftover = total - counts.sum()
    counts[np.argsort(counts - exact, kind="stable")[:leftover]] += 1
    return counts


def take(
    labels: np.ndarray | None, size: int, n_take: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``n_take`` of ``size`` row indices at random, stratified by ``labels`` if given.

    Returns ``(taken, rest)``, each in random order.
    """
    if labels is None:
        order = rng.permutation(size)
        return order[:n_take], order[n_take:]
    classes, group_sizes = np.unique(labels, return_counts=True)
    counts = proportional_counts(group_sizes, n_take)
    taken, rest = [], []
    for label, count in zip(classes, counts):
        members = rng.permutation(np.flatnonzero(labels == label))
        taken.append(members[:count])
        rest.append(members[count:])
    return rng.permutation(np.concatenate(taken)), rng.permutation(np.concatenate(rest))


def complete_splits(
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
        taken, rest = take(None if labels is None else labels[pool], len(pool), n_take, rng)
        present[name] = train.select(pool[taken])
        pool = pool[rest]
    if len(pool) != len(train):
        present["train"] = train.select(pool)
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
        labels = np.asarray(split["label"][:]) if stratify else None
        rng = np.random.default_rng([seed, SPLITS.index(name)])
        taken, _ = take(labels, len(split), limit, rng)
        result[name] = split.select(taken)
    return datasets.DatasetDict(result)
