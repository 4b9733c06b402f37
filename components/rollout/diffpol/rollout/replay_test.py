"""Recorded episodes replay in plain gymnasium."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from diffpol.contracts.dataset import data_files
from diffpol.envs import initial_state
from diffpol.rollout.collect import collect_local
from diffpol.rollout.plan import episode_id, make_plan
from diffpol.rollout.replay import replay_episode, replay_recorded


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFPOL_CACHE_DIR", str(tmp_path / "cache"))


def _episode(dataset, index, seed):
    table = pq.read_table(
        [str(p) for p in data_files(dataset)],
        filters=[("episode_id", "=", episode_id(seed, index))],
    )
    obs = np.asarray(table["obs"].combine_chunks().flatten()).reshape(table.num_rows, -1)
    actions = np.asarray(table["action"].combine_chunks().flatten()).reshape(table.num_rows, -1)
    return table, obs, actions


@pytest.mark.parametrize("backend", ["numpy", "gymnasium"])
def test_pendulum_expert_episodes_replay_exactly(tmp_path, backend):
    plan = make_plan("Pendulum-v1", "noisy-expert", 4, 40, {"grid": 100})
    collect_local(plan, tmp_path / "ds", num_envs=4, backend=backend)
    for index in range(4):
        check = replay_recorded(tmp_path / "ds", episode_id(40, index))
        assert check.steps == 200
        assert check.max_obs_error < 1e-4 and check.max_reward_error < 1e-4
        assert check.max_obs_error == 0.0  # same equations, same float32 actions


def test_envpool_mountain_car_episodes_replay_within_tolerance(tmp_path):
    plan = make_plan("MountainCarContinuous-v0", "noisy-expert", 4, 7, {"noise_max": 0.3})
    collect_local(plan, tmp_path / "ds", num_envs=4, backend="envpool")
    for index in range(4):
        check = replay_recorded(tmp_path / "ds", episode_id(7, index))
        assert 50 < check.steps < 999  # reached the flag: replay ended on the same step
        assert check.max_obs_error < 1e-4 and check.max_reward_error < 1e-4


def test_replay_from_the_first_observation_alone_drifts_on_a_balancing_pendulum(tmp_path):
    """Why datasets record the exact initial state (via backend + seed): the float32 first
    observation is off by ~1e-7 and balancing upright amplifies that ~1.2x per step."""
    plan = make_plan("Pendulum-v1", "expert", 3, 40, {"grid": 100})
    collect_local(plan, tmp_path / "ds", num_envs=3)
    drifts = []
    for index in range(3):
        _, obs, actions = _episode(tmp_path / "ds", index, 40)
        exact_obs, _ = replay_episode(
            "Pendulum-v1",
            obs[0],
            actions,
            initial_state=initial_state("Pendulum-v1", "numpy", 40 + index),
        )
        np.testing.assert_array_equal(exact_obs, obs)
        approx_obs, _ = replay_episode("Pendulum-v1", obs[0], actions)
        assert np.abs(approx_obs[:20] - obs[:20]).max() < 1e-4  # fine early on
        drifts.append(np.abs(approx_obs - obs).max())
    assert max(drifts) > 1e-3


def test_replay_rejects_a_state_that_does_not_give_the_first_observation():
    state = initial_state("Pendulum-v1", "numpy", 1)
    other = initial_state("Pendulum-v1", "numpy", 2)
    first = np.array([np.cos(state[0]), np.sin(state[0]), state[1]], np.float32)
    with pytest.raises(ValueError, match="not the recorded first observation"):
        replay_episode("Pendulum-v1", first, np.zeros((5, 1)), initial_state=other)
    with pytest.raises(ValueError, match="actions must have shape"):
        replay_episode("Pendulum-v1", first, np.zeros((5, 2)))
    with pytest.raises(ValueError, match="ended the episode after 200 steps"):
        replay_episode("Pendulum-v1", first, np.zeros((201, 1)), initial_state=state)
