import numpy as np
import pytest

from diffpol.contracts import PolicySpec
from diffpol.envs import get_env_spec
from diffpol.evaluator import comparison_of, paired_t_test, summarize
from diffpol.evaluator.evaluate import EvalConfig, EvaluationResult, PolicyResult
from diffpol.evaluator.seeds import SeedRange
from diffpol.evaluator.tasks import task_view


def constructed_result(returns_by_label):
    n = len(next(iter(returns_by_label.values())))
    seeds = np.arange(100, 100 + n)
    policies = []
    for label, returns in returns_by_label.items():
        returns = np.asarray(returns, np.float64)
        successes = returns > -150
        policies.append(
            PolicyResult(
                label=label,
                source={"kind": "object"},
                spec=PolicySpec(3, 1),
                seeds=seeds,
                returns=returns,
                lengths=np.full(n, 200, np.int32),
                successes=successes,
                summary=summarize(returns, successes),
                wall_time_s=1.0,
                policy_calls=200,
                ran_in="driver",
            )
        )
    env = get_env_spec("Pendulum-v1")
    config = EvalConfig("Pendulum-v1", SeedRange(100, 100 + n))
    return EvaluationResult(config, env, task_view("Pendulum-v1"), "gymnasium", policies)


def test_paired_differences_to_the_best_on_a_constructed_case():
    good = [-120.0, -200.0, -140.0, -130.0]
    worse = [-130.0, -212.0, -148.0, -140.0]  # 10, 12, 8, 10 worse on every seed
    noisy = [-100.0, -260.0, -120.0, -180.0]  # mean -165, sometimes better, sometimes worse
    comparison = comparison_of(constructed_result({"worse": worse, "good": good, "noisy": noisy}))
    assert comparison.best == "good"
    assert comparison.row("good").difference is None
    d = comparison.row("worse").difference
    assert d.mean == pytest.approx(-10.0)
    assert d.stderr == pytest.approx(np.std([10, 12, 8, 10], ddof=1) / 2)
    assert d.p_value == pytest.approx(0.0011722, abs=1e-6)  # t = -12.25, df = 3
    assert d.ci95_high < 0
    n = comparison.row("noisy").difference
    assert n.mean == pytest.approx(np.mean(noisy) - np.mean(good)) == pytest.approx(-17.5)
    assert n.p_value > 0.3  # a bigger mean gap, but not consistent across seeds
    assert n.ci95_low < 0 < n.ci95_high

    markdown = comparison.to_markdown().splitlines()
    header = markdown.index(next(line for line in markdown if line.startswith("| policy")))
    rows = {line.split("|")[1].strip(): line for line in markdown[header + 2 : header + 5]}
    assert list(rows) == ["worse", "good", "noisy"]  # order as given
    assert "| -147.50 ± 17.97 | 4 | 75.0% | best |" in rows["good"]
    assert f"| -10.00 ± {d.stderr:.2f} | [{d.ci95_low:.2f}, {d.ci95_high:.2f}] |" in rows["worse"]
    assert rows["worse"].endswith(f"| {d.p_value:.3g} |")
    assert "paired t-test" in comparison.to_markdown()
    summary_part = comparison.to_json()
    assert summary_part["best"] == "good"
    assert summary_part["differences_to_best"]["worse"]["mean"] == pytest.approx(-10.0)


def test_identical_policies_differ_by_exactly_zero():
    returns = [-150.0, -170.0, -120.0]
    comparison = comparison_of(constructed_result({"a": returns, "b": returns}))
    assert comparison.best == "a"
    d = comparison.row("b").difference
    assert (d.mean, d.stderr, d.p_value) == (0.0, 0.0, 1.0)
    assert d == paired_t_test(np.array(returns), np.array(returns))
