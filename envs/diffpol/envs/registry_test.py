"""Env registry, backends, and parity of every backend with gymnasium."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest

from diffpol.envs import dynamics
from diffpol.envs.registry import (
    MAX_RESET_SEED,
    get_env_spec,
    initial_state,
    known_env_ids,
    make_vector_env,
    obs_from_state,
)


def test_registry_knows_both_envs_and_names_them_for_an_unknown_id():
    assert known_env_ids()[:2] == ["MountainCarContinuous-v0", "Pendulum-v1"]
    spec = get_env_spec("Pendulum-v1")
    assert (spec.obs_dim, spec.act_dim, spec.max_episode_steps) == (3, 1, 200)
    assert spec.action_low == (-2.0,) and spec.action_high == (2.0,)
    assert get_env_spec("MountainCarContinuous-v0").max_episode_steps == 999
    with pytest.raises(ValueError, match="MountainCarContinuous-v0, Pendulum-v1, metaworld/"):
        get_env_spec("CartPole-v1")


def test_backend_choice_is_checked():
    assert make_vector_env("Pendulum-v1", 2, [0, 1]).backend == "numpy"
    assert make_vector_env("MountainCarContinuous-v0", 2, [0, 1]).backend == "envpool"
    with pytest.raises(ValueError, match="not available for MountainCarContinuous-v0"):
        make_vector_env("MountainCarContinuous-v0", 2, [0, 1], backend="numpy")
    with pytest.raises(ValueError, match="unknown backend"):
        make_vector_env("Pendulum-v1", 2, [0, 1], backend="jax")
    with pytest.raises(ValueError, match="one per env"):
        make_vector_env("Pendulum-v1", 3, [0, 1])
    with pytest.raises(ValueError, match="reset seeds must be in"):
        make_vector_env("Pendulum-v1", 1, [MAX_RESET_SEED + 1])


def _gym_episode(env_id, seed, actions, state=None):
    """Observations before each action and rewards, from plain gymnasium."""
    env = gym.make(env_id)
    obs, _ = env.reset(seed=seed)
    if state is not None:
        env.unwrapped.state = np.array(state, dtype=np.float64)
        obs = obs_from_state(env_id, state)
    observations, rewards = [], []
    for action in actions:
        observations.append(obs)
        obs, reward, terminated, _, _ = env.step(action)
        rewards.append(reward)
        if terminated:
            break
    env.close()
    return np.array(observations, np.float32), np.array(rewards)


def _vector_episodes(env, seeds, policy, steps):
    obs = env.reset(seeds)
    observations, actions, rewards, done = [], [], [], []
    for t in range(steps):
        action = policy(obs, t)
        observations.append(obs)
        actions.append(action)
        obs, reward, terminated, truncated, _ = env.step(action)
        rewards.append(reward)
        done.append(terminated | truncated)
    return (
        np.stack(observations, 1),
        np.stack(actions, 1),
        np.stack(rewards, 1),
        np.stack(done, 1),
    )


def test_numpy_pendulum_is_gymnasium_bit_for_bit_in_obs():
    seeds = list(range(40, 56))
    rng = np.random.default_rng(0)
    random_torque = lambda obs, t: rng.uniform(-2, 2, (len(obs), 1)).astype(np.float32)  # noqa: E731
    obs, actions, rewards, done = _vector_episodes(
        make_vector_env("Pendulum-v1", 16, seeds), seeds, random_torque, 200
    )
    assert done[:, -1].all() and not done[:, :-1].any()
    for i, seed in enumerate(seeds):
        gym_obs, gym_rewards = _gym_episode("Pendulum-v1", seed, actions[i])
        np.testing.assert_array_equal(obs[i], gym_obs)
        # gymnasium squares a float32 scalar with powf: u^2 can differ by one float32 ulp.
        np.testing.assert_allclose(rewards[i], gym_rewards, rtol=0, atol=1e-6)


def test_initial_states_reproduce_each_backends_reset():
    for backend in ("numpy", "gymnasium", "envpool"):
        env_id = "Pendulum-v1"
        seeds = [0, 7, 123456, MAX_RESET_SEED]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            env = make_vector_env(env_id, len(seeds), seeds, backend)
        first = env.reset()
        states = np.stack([initial_state(env_id, backend, s) for s in seeds])
        np.testing.assert_array_equal(obs_from_state(env_id, states), first, err_msg=backend)
        np.testing.assert_array_equal(env.initial_states(), states)
    env = make_vector_env("MountainCarContinuous-v0", 3, [1, 2, 3], "envpool")
    first = env.reset()
    states = np.stack([initial_state("MountainCarContinuous-v0", "envpool", s) for s in [1, 2, 3]])
    np.testing.assert_array_equal(states[:, 0].astype(np.float32), first[:, 0])


def test_envpool_mountain_car_matches_gymnasium_including_termination():
    seeds = list(range(100, 132))
    pump = lambda obs, t: np.where(obs[:, 1:] > 0, 1.0, -1.0).astype(np.float32)  # noqa: E731
    obs, actions, rewards, done = _vector_episodes(
        make_vector_env("MountainCarContinuous-v0", 32, seeds, "envpool"), seeds, pump, 200
    )
    lengths = done.argmax(axis=1) + 1
    assert done.any(axis=1).all()  # every episode reached the flag
    for i, seed in enumerate(seeds):
        state = initial_state("MountainCarContinuous-v0", "envpool", seed)
        gym_obs, gym_rewards = _gym_episode("MountainCarContinuous-v0", seed, actions[i], state)
        assert len(gym_rewards) == lengths[i]  # terminated on the same step
        # gymnasium keeps this state in float32, EnvPool in float64.
        np.testing.assert_allclose(obs[i, : lengths[i]], gym_obs, rtol=0, atol=1e-5)
        np.testing.assert_allclose(rewards[i, : lengths[i]], gym_rewards, rtol=0, atol=1e-5)


def _envpool_pendulum(seeds, policy, steps=200):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = make_vector_env("Pendulum-v1", len(seeds), seeds, "envpool")
    return _vector_episodes(env, seeds, policy, steps)


def test_envpool_pendulum_matches_gymnasium_below_the_speed_limit():
    seeds = list(range(16))
    rng = np.random.default_rng(1)
    gentle = lambda obs, t: rng.uniform(-1, 1, (len(obs), 1)).astype(np.float32)  # noqa: E731
    obs, actions, rewards, _ = _envpool_pendulum(seeds, gentle, steps=100)
    checked = 0
    for i, seed in enumerate(seeds):
        if np.abs(obs[i, :, 2]).max() > 7.0:
            continue  # near the speed limit EnvPool's Pendulum-v1 is not gymnasium's (below)
        gym_obs, gym_rewards = _gym_episode(
            "Pendulum-v1", seed, actions[i], initial_state("Pendulum-v1", "envpool", seed)
        )
        np.testing.assert_allclose(obs[i], gym_obs, rtol=0, atol=1e-5)
        np.testing.assert_allclose(rewards[i], gym_rewards, rtol=0, atol=1e-4)
        checked += 1
    assert checked >= 12


def test_envpool_pendulum_deviates_from_gymnasium_at_the_speed_limit():
    """Known EnvPool 1.2.5 defect: at |theta_dot| = 8 it advances theta with the unclipped
    velocity, gymnasium's Pendulum-v1 with the clipped one. When this test fails, EnvPool
    was fixed: make it the default Pendulum-v1 backend again (envs._SPECS)."""
    seeds = [100]
    pump = lambda obs, t: np.where(obs[:, 2:] >= 0, 2.0, -2.0).astype(np.float32)  # noqa: E731
    obs, actions, _, _ = _envpool_pendulum(seeds, pump, steps=40)
    assert np.abs(obs[0, :, 2]).max() == 8.0  # reached the speed limit
    gym_obs, _ = _gym_episode(
        "Pendulum-v1", 100, actions[0], initial_state("Pendulum-v1", "envpool", 100)
    )
    assert np.abs(obs[0] - gym_obs).max() > 1e-2
    assert not get_env_spec("Pendulum-v1").envpool_matches_gymnasium


def test_numpy_dynamics_returns_match_gymnasium_episodes():
    seeds = [5, 6, 7]
    state = np.stack([initial_state("Pendulum-v1", "gymnasium", s) for s in seeds])
    torque = lambda obs: -2.0 * obs[:, 1]  # noqa: E731
    returns = dynamics.pendulum_returns(torque, state[:, 0], state[:, 1])
    for seed, expected in zip(seeds, returns, strict=True):
        env = gym.make("Pendulum-v1")
        obs, _ = env.reset(seed=seed)
        total = 0.0
        for _ in range(200):
            obs, reward, *_ = env.step(np.array([-2.0 * obs[1]], np.float32))
            total += reward
        assert abs(total - expected) < 1e-6
