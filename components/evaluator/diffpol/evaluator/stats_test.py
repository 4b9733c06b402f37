import math

import numpy as np
import pytest

from diffpol.evaluator.stats import (
    paired_t_test,
    regularized_incomplete_beta,
    summarize,
    t_cdf,
    t_quantile,
    t_two_sided_p,
)


@pytest.mark.parametrize("x", [0.0, 0.01, 0.3, 0.5, 0.77, 0.999, 1.0])
def test_incomplete_beta_closed_forms(x):
    assert regularized_incomplete_beta(1, 1, x) == pytest.approx(x, abs=1e-13)
    assert regularized_incomplete_beta(3.5, 1, x) == pytest.approx(x**3.5, abs=1e-13)
    assert regularized_incomplete_beta(1, 2.5, x) == pytest.approx(1 - (1 - x) ** 2.5, abs=1e-13)
    # Symmetry I_x(a, b) = 1 - I_{1-x}(b, a).
    assert regularized_incomplete_beta(2.3, 7.1, x) == pytest.approx(
        1 - regularized_incomplete_beta(7.1, 2.3, 1 - x), abs=1e-13
    )


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0, 2.5, 12.7, 100.0])
def test_t_tails_match_closed_forms(t):
    # df = 1 is the Cauchy distribution; df = 2 has a closed form too.
    assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), abs=1e-12)
    assert t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-12)
    assert t_cdf(-t, 7) == pytest.approx(1 - t_cdf(t, 7), abs=1e-13)


def test_t_critical_values():
    # Textbook two-sided 5% critical values.
    for df, critical in [(1, 12.706204736), (10, 2.228138852), (999, 1.962341461)]:
        assert t_quantile(0.975, df) == pytest.approx(critical, abs=1e-8)
        assert t_two_sided_p(critical, df) == pytest.approx(0.05, abs=1e-9)
    # Large df approaches the normal distribution.
    assert t_two_sided_p(1.959963985, 10**8) == pytest.approx(0.05, abs=1e-6)


def test_paired_t_test_on_a_constructed_case():
    a = np.array([1.0, 2.0, 3.0, 4.0])
    b = np.array([0.5, 2.5, 2.0, 3.0])
    d = paired_t_test(a, b)  # differences 0.5, -0.5, 1, 1
    assert d.mean == pytest.approx(0.5)
    sd = np.std([0.5, -0.5, 1, 1], ddof=1)
    assert d.stderr == pytest.approx(sd / 2)
    assert d.t == pytest.approx(0.5 / (sd / 2))
    assert d.df == 3
    # P(|T_3| > t) from the closed form for odd df = 3.
    t = d.t
    theta = math.atan(t / math.sqrt(3))
    p = 1 - 2 / math.pi * (theta + math.sin(theta) * math.cos(theta))
    assert d.p_value == pytest.approx(p, abs=1e-12)
    assert d.ci95_low < d.mean < d.ci95_high
    assert d.ci95_high - d.mean == pytest.approx(t_quantile(0.975, 3) * d.stderr)
    # Swapping the sides flips the sign and keeps the p-value.
    r = paired_t_test(b, a)
    assert (r.mean, r.p_value) == (pytest.approx(-0.5), pytest.approx(d.p_value))


def test_paired_t_test_degenerate_cases():
    same = paired_t_test(np.ones(5), np.ones(5))
    assert (same.mean, same.stderr, same.p_value) == (0.0, 0.0, 1.0)
    shifted = paired_t_test(np.arange(5.0) + 2, np.arange(5.0))
    assert (shifted.mean, shifted.p_value, shifted.t) == (2.0, 0.0, math.inf)
    single = paired_t_test(np.array([3.0]), np.array([1.0]))
    assert single.mean == 2.0 and single.p_value is None
    with pytest.raises(ValueError, match="equal"):
        paired_t_test(np.ones(3), np.ones(4))


def test_summarize():
    s = summarize(np.array([-1.0, -3.0, -2.0, -6.0]), np.array([True, False, True, True]))
    assert (s.n, s.mean, s.min, s.max, s.success_rate) == (4, -3.0, -6.0, -1.0, 0.75)
    assert s.std == pytest.approx(np.std([-1, -3, -2, -6], ddof=1))
    assert s.stderr == pytest.approx(s.std / 2)
    one = summarize(np.array([5.0]), np.array([False]))
    assert one.std is None and one.stderr is None
