"""Success rates on Meta-World: the evaluator's per-task table against an independent loop."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from metaworld.policies import ENV_POLICY_MAP

from diffpol.envs.metaworld_env import MT10_TASKS
from diffpol.evaluator import EvaluationConfigError, evaluate
from diffpol.evaluator.stats import wilson_interval


def _steps_to_success(task: str, seed: int) -> int:
    """Meta-World's own env and expert: steps until info['success'] (-1 if never in 500)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = gym.make("Meta-World/goal_observable", env_name=task, seed=seed)
        obs, _ = env.reset()
        policy = ENV_POLICY_MAP[task]()
        for t in range(500):
            obs, _, _, _, info = env.step(policy.get_action(obs))
            if info["success"]:
                return t + 1
    return -1


@pytest.fixture(scope="module")
def mt10():
    # Seeds 100000..100009: one held-out episode per MT10 task (task = seed % 10).
    return evaluate(
        {"expert": "expert"},
        "metaworld/MT10",
        "100000:100010",
        workers=0,
        chunk_size=10,
        record_examples=False,
    )


def test_mt10_expert_success_table_matches_metaworld_itself(mt10):
    expert = mt10["expert"]
    assert [t.task for t in expert.tasks] == list(MT10_TASKS)
    expected = [_steps_to_success(task, 100000 + k) for k, task in enumerate(MT10_TASKS)]
    assert expert.success_steps.tolist() == expected
    assert expert.successes.tolist() == [s > 0 for s in expected]
    # A successful episode ends at its first success (Meta-World's terminate_on_success).
    for length, steps in zip(expert.lengths.tolist(), expected, strict=True):
        assert length == (steps if steps > 0 else 500)
    for row, steps in zip(expert.tasks, expected, strict=True):
        assert (row.n, row.successes) == (1, int(steps > 0))
        assert row.mean_steps_to_success == (float(steps) if steps > 0 else None)
    assert sum(s > 0 for s in expected) >= 8  # Meta-World's experts: 98-100% measured


def test_chunks_reuse_their_envs_and_score_as_fresh_ones():
    # Chunks of seeds [6, 8), [8, 10), [10, 12): seeds 7 and 10 run one after the other in
    # the same single-env batch, re-seeded; an episode (including one that ran to the
    # limit) must leave nothing behind for the next.
    result = evaluate(
        {"expert": "expert", "zero": "zero"},
        "metaworld/reach-v3",
        "7:11",
        workers=0,
        chunk_size=2,
        record_examples=False,
    )
    expected = [_steps_to_success("reach-v3", s) for s in range(7, 11)]
    assert result["expert"].success_steps.tolist() == expected
    assert result["zero"].lengths.tolist() == [500] * 4


def test_wilson_interval_bounds():
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    low, high = wilson_interval(45, 50)
    assert low == pytest.approx(0.7864, abs=1e-3) and high == pytest.approx(0.9565, abs=1e-3)


def test_unknown_metaworld_task_is_a_config_error():
    with pytest.raises(EvaluationConfigError, match="unknown Meta-World task 'reach-v9'"):
        evaluate({"expert": "expert"}, "metaworld/reach-v9", "0:2", workers=0)


def test_expert_success_rate_is_per_seed_task():
    result = evaluate(
        {"expert": "expert"}, "metaworld/reach-v3", "7:9", workers=0, record_examples=False
    )
    (row,) = result["expert"].tasks
    assert row.task == "reach-v3" and row.n == 2
    assert np.all(result["expert"].success_steps > 0)


def test_mt10_outputs_carry_the_per_task_table(mt10, tmp_path):
    import json

    import pyarrow.parquet as pq

    from diffpol.evaluator.outputs import write_outputs

    write_outputs(mt10, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    policy = summary["policies"]["expert"]
    rows = policy["tasks"]
    assert [r["task"] for r in rows] == list(MT10_TASKS)
    rates = [r["success_rate"] for r in rows]
    assert policy["mean_task_success_rate"] == pytest.approx(float(np.mean(rates)))
    assert all(r["ci95_low"] <= r["success_rate"] <= r["ci95_high"] for r in rows)
    episodes = pq.read_table(tmp_path / "episodes.parquet").to_pandas()
    assert episodes.task.tolist() == list(MT10_TASKS)
    assert episodes.success_steps.tolist() == mt10["expert"].success_steps.tolist()
    # The side-by-side success table: a row per task in MT10's order, the cell of each
    # task its rate and steps, then the mean over tasks; and the plot beside it.
    table = (tmp_path / "success.md").read_text().split("\n")
    rows = [line for line in table if line.startswith("| ") and "---" not in line]
    assert rows[0] == "| task | expert |"
    expert = mt10["expert"]
    for line, task_row in zip(rows[1:-1], expert.tasks, strict=True):
        steps = task_row.mean_steps_to_success
        expected = f"{100 * task_row.success_rate:.0f}% [" if steps else "0% ["
        assert line.startswith(f"| {task_row.task} | {expected}")
        assert line.endswith(f"· {steps:.0f} |" if steps else "· - |")
    assert rows[-1] == f"| mean over tasks | **{100 * np.mean(rates):.1f}%** |"
    assert (tmp_path / "success.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_env_without_tasks_has_no_success_table(tmp_path):
    from diffpol.evaluator import success_table

    result = evaluate({"zero": "zero"}, "Pendulum-v1", "0:2", workers=0, record_examples=False)
    with pytest.raises(ValueError, match="no named tasks"):
        success_table(result)
