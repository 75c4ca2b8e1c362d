"""Statistics of the report: sample summaries, paired differences with t-intervals, Pareto fronts.

No SciPy: the Student t quantile is computed here from the regularized incomplete beta function
(a continued fraction, evaluated with the modified Lentz method) and inverted by bisection, which
is exact to far more digits than a report prints. ``t_quantile(0.975, df)`` gives the familiar
12.706 (df 1), 4.303 (df 2), 2.776 (df 4) and tends to 1.960.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (``None`` for a single value) of ``n`` values."""

    mean: float
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        if not values:
            raise ValueError("Stat.of needs at least one value")
        std = statistics.stdev(values) if len(values) > 1 else None
        return cls(statistics.fmean(values), std, len(values))


# -- the t distribution -------------------------------------------------------------------------


def _beta_fraction(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 500):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return result


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"incomplete_beta needs 0 <= x <= 1, got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
        + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _beta_fraction(a, b, x) / a
    return 1.0 - front * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection on t_cdf)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"a quantile needs 0 < p < 1, got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2.0
        if t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2.0


# -- paired differences ------------------------------------------------------------------------


@dataclass(frozen=True)
class PairedDifference:
    """``method - reference`` over the seeds both ran: mean, sample std and a t-interval.

    ``low``/``high`` are ``None`` with fewer than 2 pairs (no interval exists)."""

    seeds: tuple
    differences: tuple[float, ...]
    mean: float
    std: float | None
    low: float | None
    high: float | None
    confidence: float

    @property
    def n(self) -> int:
        return len(self.differences)

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def paired_difference(method: dict, reference: dict, confidence: float = 0.95
                      ) -> PairedDifference:
    """``method`` and ``reference`` map seed -> score; pairs are the seeds both have.

    Mean difference ± t_{(1+confidence)/2, n-1} x s / sqrt(n), where s is the sample standard
    deviation of the per-seed differences: a seed fixes the data order, the head's
    initialisation and the splits, so the two runs of one seed are a pair."""
    seeds = tuple(sorted(set(method) & set(reference)))
    if not seeds:
        raise ValueError("no seed in common: a paired difference needs the same seeds")
    differences = tuple(method[s] - reference[s] for s in seeds)
    mean = statistics.fmean(differences)
    if len(differences) < 2:
        return PairedDifference(seeds, differences, mean, None, None, None, confidence)
    std = statistics.stdev(differences)
    half = t_quantile((1.0 + confidence) / 2.0, len(differences) - 1) * std / math.sqrt(
        len(differences))
    return PairedDifference(seeds, differences, mean, std, mean - half, mean + half, confidence)


def bonferroni(diff: PairedDifference, comparisons: int) -> PairedDifference:
    """The same paired difference with its interval widened for ``comparisons`` tests at once.

    Each method is compared with the same reference, so with m methods about m x (1 -
    confidence) intervals exclude zero by chance alone; Bonferroni's interval is the t-interval
    at confidence 1 - (1 - confidence) / m, which holds for all m together."""
    if comparisons < 1:
        raise ValueError(f"comparisons={comparisons} must be >= 1")
    level = 1.0 - (1.0 - diff.confidence) / comparisons
    if diff.std is None:
        return PairedDifference(diff.seeds, diff.differences, diff.mean, None, None, None, level)
    half = t_quantile((1.0 + level) / 2.0, diff.n - 1) * diff.std / math.sqrt(diff.n)
    return PairedDifference(diff.seeds, diff.differences, diff.mean, diff.std, diff.mean - half,
                            diff.mean + half, level)


# -- Pareto fronts -----------------------------------------------------------------------------


def pareto_front(points: Sequence, cost: Callable, value: Callable) -> list:
    """The points no other point beats: none has cost <= and value >= with one strictly.

    Lower cost and higher value are better (negate a loss before). Returned by rising cost."""
    front = []
    for point in points:
        c, v = cost(point), value(point)
        dominated = any(
            cost(other) <= c and value(other) >= v and (cost(other) < c or value(other) > v)
            for other in points
            if other is not point
        )
        if not dominated:
            front.append(point)
    return sorted(front, key=lambda p: (cost(p), -value(p)))


# -- plateau ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plateau:
    """The last third of a validation curve against its middle third."""

    middle: float  # mean of the middle third of the evaluations
    last: float  # mean of the last third
    best_step: int
    best: float
    threshold: float
    higher_is_better: bool = True

    @property
    def gain(self) -> float:
        """Improvement of the last third over the middle third, in the metric's direction."""
        return (self.last - self.middle) * (1.0 if self.higher_is_better else -1.0)

    @property
    def reached(self) -> bool:
        return self.gain < self.threshold

    @property
    def state(self) -> str:
        """What the curve does at its end: a loss back by a threshold or more is past its best
        (overfitting, or a rate too high for the length), not a plateau."""
        if self.gain <= -self.threshold:
            return "is past its best (worse in its last third than in its middle third)"
        return "has plateaued" if self.reached else "is still improving"


def plateau(curve: Sequence[tuple[int, float]], threshold: float, higher_is_better: bool = True
            ) -> Plateau | None:
    """``None`` with fewer than 3 evaluations. ``gain`` is the improvement of the last third's
    mean over the middle third's (in the metric's direction); the curve has plateaued when it
    is below ``threshold``."""
    if len(curve) < 3:
        return None
    sign = 1.0 if higher_is_better else -1.0
    third = len(curve) // 3
    middle = [v for _, v in curve[third: len(curve) - third]]
    last = [v for _, v in curve[len(curve) - third:]]
    best_step, best = max(curve, key=lambda point: sign * point[1])
    return Plateau(statistics.fmean(middle), statistics.fmean(last), best_step, best, threshold,
                   higher_is_better)
