"""DP expert: convergence, the cache, and how well it (and the scripted expert) controls."""

from __future__ import annotations

import numpy as np
import pytest

from diffpol.envs import make_vector_env
from diffpol.rollout.pendulum_dp import (
    PendulumDPConfig,
    PendulumDPController,
    load_or_solve,
    solve_value_table,
)
from diffpol.rollout.policies import make_policy
from diffpol.rollout.scripted import PendulumScriptedController, discrete_lqr_gain

SMALL = PendulumDPConfig(n_theta=120, n_theta_dot=121)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFPOL_CACHE_DIR", str(tmp_path / "cache"))


def _gym_returns(controller, seeds) -> np.ndarray:
    """Episode returns in gymnasium's own Pendulum-v1 (vector env)."""
    env = make_vector_env("Pendulum-v1", len(seeds), seeds, backend="gymnasium")
    obs = env.reset()
    total = np.zeros(len(seeds))
    for _ in range(200):
        obs, reward, *_ = env.step(np.asarray(controller(obs), np.float32).reshape(-1, 1))
        total += reward
    env.close()
    return total


def test_value_iteration_converges_to_a_cost_to_go_that_is_zero_only_upright():
    table = solve_value_table(SMALL)
    values = table.values
    assert values.shape == (120, 121) and np.isfinite(values).all() and (values >= 0).all()
    upright = np.unravel_index(values.argmin(), values.shape)
    theta = -np.pi + upright[0] * 2 * np.pi / 120
    assert abs(theta) < 0.06 and abs(-8 + upright[1] * 16 / 120) < 0.2
    assert values.max() > 50  # hanging down costs a swing-up
    assert set(np.unique(table.actions)) <= set(np.linspace(-2, 2, 41, dtype=np.float32))


def test_cache_returns_the_solved_table_and_survives_a_corrupt_file(tmp_path):
    first, from_cache = load_or_solve(SMALL)
    assert not from_cache
    second, from_cache = load_or_solve(SMALL)
    assert from_cache
    np.testing.assert_array_equal(first.values, second.values)
    np.testing.assert_array_equal(first.actions, second.actions)
    (path,) = (tmp_path / "cache").glob("pendulum-dp-*.npz")
    path.write_bytes(b"not an npz")
    third, from_cache = load_or_solve(SMALL)
    assert not from_cache
    np.testing.assert_array_equal(first.values, third.values)
    other, from_cache = load_or_solve(PendulumDPConfig(n_theta=100, n_theta_dot=101))
    assert not from_cache and other.values.shape == (100, 101)


def test_lqr_gain_is_the_documented_one():
    np.testing.assert_allclose(discrete_lqr_gain(), [12.97, 3.28], atol=0.01)


def test_experts_swing_up_and_balance_in_gymnasium():
    seeds = list(range(1000, 1050))
    table, _ = load_or_solve(PendulumDPConfig(n_theta=200, n_theta_dot=201))
    dp = _gym_returns(PendulumDPController(table), seeds)
    greedy = _gym_returns(PendulumDPController(table, lookup="greedy"), seeds)
    scripted = _gym_returns(PendulumScriptedController(), seeds)
    zero = _gym_returns(lambda obs: np.zeros(len(obs)), seeds)
    # Measured on these seeds: DP (200x201 grid) -146.2, scripted -160.2, zero torque -1284.
    assert dp.mean() > -160 and greedy.mean() > -160
    assert abs(dp.mean() - greedy.mean()) < 2
    assert scripted.mean() > -180
    assert dp.mean() > scripted.mean()
    assert zero.mean() < -900
    assert (dp > -400).all()


def test_expert_is_the_dp_expert():
    # Its speed is measured by benchmarks/rollout_bench_test.py, not asserted here.
    policy = make_policy("expert", "Pendulum-v1", grid=120)
    assert policy.name == "expert-dp" and policy.params["grid"] == 120
    obs = np.random.default_rng(0).uniform(-1, 1, (4096, 1, 3)).astype(np.float32)
    obs[:, 0, 2] *= 8
    actions = policy.act(obs)
    assert actions.shape == (4096, 1, 1) and np.abs(actions).max() <= 2
    np.testing.assert_array_equal(policy.act(obs), actions)  # deterministic
