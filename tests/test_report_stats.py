"""The report's statistics against published values and hand-computed cases."""

import math

import pytest

from recipes.report.stats import (
    Stat,
    incomplete_beta,
    paired_difference,
    pareto_front,
    plateau,
    t_cdf,
    t_quantile,
)


@pytest.mark.parametrize(
    ("df", "expected"),  # two-sided 95% critical values, from any t table
    [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764), (9, 2.2622), (29, 2.0452),
     (120, 1.9799)],
)
def test_t_quantile_matches_the_t_table(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-4)


def test_t_distribution_edge_cases():
    assert t_cdf(0.0, 5) == pytest.approx(0.5)
    assert t_cdf(1.0, 1) == pytest.approx(0.75)  # Cauchy: 1/2 + atan(1)/pi
    assert t_quantile(0.975, 1e6) == pytest.approx(1.959964, abs=1e-5)
    assert incomplete_beta(1.0, 1.0, 0.3) == pytest.approx(0.3)  # uniform
    assert incomplete_beta(2.0, 3.0, 0.4) == pytest.approx(0.5248)  # 1 - sum, by hand
    with pytest.raises(ValueError, match="0 < p < 1, got 1.0"):
        t_quantile(1.0, 3)


def test_paired_difference_by_hand():
    """Differences 0.05, 0.06, 0.07: mean 0.06, s = 0.01, s/sqrt(3) = 0.0057735,
    t(0.975, 2) = 4.302653: half-width 0.0248414."""
    diff = paired_difference({0: 0.80, 1: 0.81, 2: 0.84, 7: 0.9}, {0: 0.75, 1: 0.75, 2: 0.77})
    assert diff.seeds == (0, 1, 2)  # seed 7 has no partner
    assert diff.mean == pytest.approx(0.06) and diff.std == pytest.approx(0.01)
    assert diff.low == pytest.approx(0.0351586, abs=1e-6)
    assert diff.high == pytest.approx(0.0848414, abs=1e-6)
    assert diff.excludes_zero
    single = paired_difference({0: 0.8}, {0: 0.7})
    assert single.low is None and not single.excludes_zero and single.n == 1
    with pytest.raises(ValueError, match="no seed in common"):
        paired_difference({0: 0.8}, {1: 0.7})


def test_stat_is_mean_and_sample_std():
    stat = Stat.of([0.70, 0.72, 0.74])
    assert (stat.mean, stat.std, stat.n) == (pytest.approx(0.72), pytest.approx(0.02), 3)
    assert Stat.of([0.5]).std is None


def test_pareto_front_keeps_only_undominated_points():
    points = [("a", 1.0, 0.70), ("b", 2.0, 0.80), ("c", 3.0, 0.75), ("d", 0.5, 0.60),
              ("e", 2.0, 0.79), ("f", 4.0, 0.81)]
    front = pareto_front(points, cost=lambda p: p[1], value=lambda p: p[2])
    assert [p[0] for p in front] == ["d", "a", "b", "f"]  # c and e are dominated by b


def test_plateau_compares_the_last_third_with_the_middle_third():
    flat = [(s, 0.80 + (0.002 if s % 2 else 0.0)) for s in range(1, 10)]
    result = plateau(flat, 0.01)
    assert result.reached and abs(result.gain) < 0.01
    rising = [(s, 0.5 + 0.03 * s) for s in range(1, 10)]
    result = plateau(rising, 0.01)
    assert not result.reached and result.gain == pytest.approx(0.09)
    assert (result.best_step, result.best) == (9, pytest.approx(0.77))
    losses = [(s, 2.0 - 0.1 * s) for s in range(1, 7)]  # falling loss: improving
    assert not plateau(losses, 0.01, higher_is_better=False).reached
    assert plateau(losses[:2], 0.01) is None
    assert math.isclose(plateau(losses, 0.01, False).gain, 0.2)
    assert plateau(losses, 0.01, False).state == "is still improving"
    assert plateau(flat, 0.01).state == "has plateaued"
    # a loss that rises again at the end (overfitting) is past its best, not a plateau
    overfit = [(31, 2.150), (62, 2.019), (93, 2.000), (124, 1.981), (155, 2.102), (186, 2.106)]
    result = plateau(overfit, 0.01, higher_is_better=False)
    assert result.gain == pytest.approx(-0.114, abs=1e-3) and result.best_step == 124
    assert result.state.startswith("is past its best")


@pytest.mark.parametrize("count", [0, 1000, 1536, 3.3 * 2**20, 1.6 * 2**30, 2 * 2**40])
def test_the_report_formats_bytes_as_the_library_does(count):
    from freeze_policies.costs.flops import format_bytes as library
    from recipes.report.benches import format_bytes

    assert format_bytes(count) == library(count)
    assert format_bytes(None) == "—"


def test_bonferroni_interval_against_a_hand_computed_case():
    from recipes.report.stats import bonferroni, paired_difference

    diff = paired_difference({0: 3.0, 1: 4.0, 2: 5.0}, {0: 2.0, 1: 2.0, 2: 2.0})  # 1, 2, 3
    wide = bonferroni(diff, 2)
    # mean 2, sd 1, n 3; level 1 - 0.05/2 = 0.975: t(0.9875, df 2) = 0.975 * sqrt(2 / 0.049375)
    half = 0.975 * (2 / 0.049375) ** 0.5 / 3 ** 0.5
    assert abs(wide.confidence - 0.975) < 1e-12
    assert abs(wide.low - (2 - half)) < 1e-6 and abs(wide.high - (2 + half)) < 1e-6
    assert bonferroni(diff, 1) == diff
