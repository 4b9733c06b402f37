"""Summary statistics and the paired t-test, in plain numpy (scipy is not a dependency).

Student's t distribution is computed through the regularized incomplete beta function,
``P(|T| > t) = I_{df / (df + t^2)}(df / 2, 1 / 2)``, evaluated with the Lentz continued
fraction (Numerical Recipes, section 6.4); accurate to about 1e-12 here.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

PAIRED_TEST = "paired t-test (two-sided) on per-seed return differences, same seeds and noise"


@dataclass(frozen=True)
class ReturnSummary:
    """Episode returns of one policy. ``std`` is the sample std (ddof=1); ``stderr`` = std/sqrt(n)."""

    n: int
    mean: float
    std: float | None
    stderr: float | None
    min: float
    max: float
    success_rate: float

    def to_json(self) -> dict:
        return asdict(self)


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval of a success rate (sound at 0/n and n/n, unlike Wald's)."""
    if n <= 0:
        raise ValueError("an interval needs at least one episode")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # At 0/n and n/n the bound is exactly 0 or 1; the formula leaves rounding error.
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


@dataclass(frozen=True)
class TaskSuccess:
    """One task's success over its episodes: rate, 95% Wilson interval, and the mean number
    of steps to the first success over the successful episodes (None if none succeeded)."""

    task: str
    n: int
    successes: int
    success_rate: float
    ci95_low: float
    ci95_high: float
    mean_steps_to_success: float | None

    def to_json(self) -> dict:
        return asdict(self)


def task_success(
    tasks: list[str], successes: np.ndarray, success_steps: np.ndarray
) -> list[TaskSuccess]:
    """Per-task success table, tasks in first-seen order."""
    successes = np.asarray(successes, bool)
    steps = np.asarray(success_steps)
    names = np.asarray(tasks)
    table = []
    for task in dict.fromkeys(tasks):
        rows = names == task
        n, k = int(rows.sum()), int(successes[rows].sum())
        low, high = wilson_interval(k, n)
        reached = steps[rows & (steps > 0)]
        table.append(
            TaskSuccess(
                task=task,
                n=n,
                successes=k,
                success_rate=k / n,
                ci95_low=low,
                ci95_high=high,
                mean_steps_to_success=float(reached.mean()) if reached.size else None,
            )
        )
    return table


def summarize(returns: np.ndarray, successes: np.ndarray) -> ReturnSummary:
    returns = np.asarray(returns, np.float64)
    n = returns.size
    if n == 0:
        raise ValueError("cannot summarise zero episodes")
    std = float(np.std(returns, ddof=1)) if n > 1 else None
    return ReturnSummary(
        n=n,
        mean=float(np.mean(returns)),
        std=std,
        stderr=std / math.sqrt(n) if std is not None else None,
        min=float(np.min(returns)),
        max=float(np.max(returns)),
        success_rate=float(np.mean(np.asarray(successes, bool))),
    )


@dataclass(frozen=True)
class PairedDifference:
    """``mean`` of per-seed ``a - b``, its standard error, 95% CI, t statistic and p-value."""

    n: int
    mean: float
    stderr: float | None
    ci95_low: float | None
    ci95_high: float | None
    t: float | None
    df: int
    p_value: float | None
    method: str = PAIRED_TEST

    def to_json(self) -> dict:
        return asdict(self)


def paired_t_test(a: np.ndarray, b: np.ndarray) -> PairedDifference:
    """Paired two-sided t-test of ``mean(a - b) == 0``; ``a[i]`` and ``b[i]`` share a seed."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples need equal 1-d shapes, got {a.shape} and {b.shape}")
    diff = a - b
    n = diff.size
    mean = float(np.mean(diff))
    if n < 2:
        return PairedDifference(n, mean, None, None, None, None, max(n - 1, 0), None)
    df = n - 1
    stderr = float(np.std(diff, ddof=1)) / math.sqrt(n)
    if stderr == 0.0:
        # Every seed differs by the same amount: no spread to test against.
        t, p = (0.0, 1.0) if mean == 0.0 else (math.copysign(math.inf, mean), 0.0)
        return PairedDifference(n, mean, 0.0, mean, mean, t, df, p)
    t = mean / stderr
    half_width = t_quantile(0.975, df) * stderr
    return PairedDifference(
        n, mean, stderr, mean - half_width, mean + half_width, t, df, t_two_sided_p(t, df)
    )


def t_two_sided_p(t: float, df: float) -> float:
    """``P(|T| >= |t|)`` for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(t):
        return 0.0
    return regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t))


def t_cdf(t: float, df: float) -> float:
    tail = 0.5 * t_two_sided_p(t, df)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(q: float, df: float) -> float:
    """Inverse of ``t_cdf`` by bisection (monotone, so 200 halvings reach float precision)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {q}")
    lo, hi = -1.0, 1.0
    while t_cdf(lo, df) > q:
        lo *= 2.0
    while t_cdf(hi, df) < q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-13 * max(1.0, abs(mid)):
            break
    return 0.5 * (lo + hi)


def regularized_incomplete_beta(a: float, b: float, x: float) -> float:
    """``I_x(a, b)`` for ``a, b > 0`` and ``0 <= x <= 1``."""
    if a <= 0 or b <= 0:
        raise ValueError(f"a and b must be > 0, got {a} and {b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must be in [0, 1], got {x}")
    if x == 0.0 or x == 1.0:
        return x
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    # The continued fraction converges fast only on this side; use the symmetry otherwise.
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for coef in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + coef * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + coef / c
            c = c if abs(c) > tiny else tiny
            delta = d * c
            h *= delta
        if abs(delta - 1.0) < eps:
            return h
    raise ArithmeticError(f"incomplete beta did not converge for a={a}, b={b}, x={x}")
