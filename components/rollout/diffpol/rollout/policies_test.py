"""Data policies: specs, params, the Policy protocol, per-episode determinism."""

from __future__ import annotations

import numpy as np
import pytest

from diffpol.contracts import Policy
from diffpol.rollout.policies import make_policy


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFPOL_CACHE_DIR", str(tmp_path / "cache"))


def _obs(n=64, seed=0):
    obs = np.random.default_rng(seed).uniform(-1, 1, (n, 1, 3)).astype(np.float32)
    obs[..., 2] *= 8
    return obs


@pytest.mark.parametrize("spec", ["random", "zero", "expert-scripted", "noisy-expert"])
def test_every_builtin_policy_implements_the_protocol_within_bounds(spec):
    policy = make_policy(spec, "Pendulum-v1", **({"grid": 60} if spec == "noisy-expert" else {}))
    assert isinstance(policy, Policy)
    actions = policy.act(_obs(), seed=3)
    assert actions.shape == (64, 1, 1) and actions.dtype == np.float32
    assert np.abs(actions).max() <= 2.0
    np.testing.assert_array_equal(actions, policy.act(_obs(), seed=3))


def test_unknown_specs_and_params_are_named():
    with pytest.raises(ValueError, match=r"unknown policy 'greedy'.*one of random, zero, expert"):
        make_policy("greedy", "Pendulum-v1")
    with pytest.raises(
        ValueError, match=r"unknown parameter.*sigma.*accepted: grid, lookup, torques"
    ):
        make_policy("expert", "Pendulum-v1", sigma=1.0)
    with pytest.raises(ValueError, match="no 'expert-dp' for MountainCarContinuous-v0"):
        make_policy("expert-dp", "MountainCarContinuous-v0")
    with pytest.raises(ValueError, match="takes no parameters"):
        make_policy("random", "Pendulum-v1", noise_max=1.0)
    with pytest.raises(ValueError, match="noise_max must be >= 0"):
        make_policy("noisy-expert", "Pendulum-v1", noise_max=-1.0, grid=60)
    with pytest.raises(ValueError, match="does not exist"):
        make_policy("onnx:/nonexistent/policy.onnx", "Pendulum-v1")


def test_noisy_expert_labels_with_the_clean_action_and_fixes_noise_per_episode():
    policy = make_policy("noisy-expert", "Pendulum-v1", noise_max=1.0, expert="expert-scripted")
    assert policy.has_label and policy.params == {"noise_max": 1.0, "expert": "expert-scripted"}
    obs = _obs(3)
    executed, labels = policy.start(run_seed=9, indices=np.array([4, 5, 6]), max_steps=10)(obs, 2)
    np.testing.assert_array_equal(labels, make_policy("expert-scripted", "Pendulum-v1").act(obs))
    # Episode 5 alone, in another batch: the same noise at the same step.
    alone, _ = policy.start(run_seed=9, indices=np.array([5]), max_steps=10)(obs[1:2], 2)
    np.testing.assert_array_equal(alone, executed[1:2])
    other_run, _ = policy.start(run_seed=10, indices=np.array([5]), max_steps=10)(obs[1:2], 2)
    assert not np.array_equal(other_run, alone)


def test_noise_scale_is_drawn_per_episode_up_to_noise_max():
    policy = make_policy("noisy-expert", "Pendulum-v1", noise_max=0.5, expert="expert-scripted")
    steps, episodes = 400, 200
    obs = np.zeros((episodes, 1, 3), np.float32)
    obs[:, 0, 0] = -1.0  # hanging down at rest: the clean action is 0
    stepper = policy.start(0, np.arange(episodes), steps)
    clean = policy.expert.act(obs)
    noise = np.stack([stepper(obs, t)[0] - clean for t in range(steps)], axis=1)[..., 0, 0]
    inside = np.abs(clean[:, 0, 0]) < 1.0  # unclipped rows only
    per_episode_std = noise[inside].std(axis=1)
    assert per_episode_std.max() < 0.5 * 1.15 and per_episode_std.min() < 0.05
    assert 0.2 < per_episode_std.mean() < 0.3  # U[0, 0.5] has mean 0.25


def test_random_policy_draws_per_episode_streams_in_bounds():
    policy = make_policy("random", "MountainCarContinuous-v0")
    obs = np.zeros((2, 1, 2), np.float32)
    a = np.stack([policy.start(1, np.array([0, 1]), 50)(obs, t)[0] for t in range(50)])
    b = np.stack([policy.start(1, np.array([1]), 50)(obs[:1], t)[0] for t in range(50)])
    np.testing.assert_array_equal(a[:, 1], b[:, 0])
    assert np.abs(a).max() <= 1.0 and a.std() > 0.4


def test_mountain_car_expert_pumps_with_the_velocity():
    policy = make_policy("expert", "MountainCarContinuous-v0")
    assert policy.name == "expert-scripted" and policy.params == {"force": 0.4}
    obs = np.array([[[-0.5, 0.01]], [[-0.5, -0.01]], [[-0.5, 0.0]]], np.float32)
    np.testing.assert_array_equal(policy.act(obs)[:, 0, 0], np.float32([0.4, -0.4, -0.4]))


def test_onnx_policy_loads_through_the_sampler_component(tmp_path):
    sampler = pytest.importorskip("diffpol.sampler", reason="sampler component not on the path")
    assert hasattr(sampler, "OnnxPolicy")
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(sampler.ArtifactError, match="not a loadable ONNX model"):
        make_policy(f"onnx:{bad}", "Pendulum-v1")
