"""The Meta-World backend against Meta-World's own envs made with gymnasium.make."""

from __future__ import annotations

import warnings

import gymnasium as gym
import metaworld
import numpy as np
import pytest
from metaworld.policies import ENV_POLICY_MAP

from diffpol.envs import get_env_spec, make_vector_env
from diffpol.envs.metaworld_env import MT10_TASKS


def _reference(task, seed, actions):
    """Observations before each action and info['success'] after it, from gymnasium.make."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = gym.make("Meta-World/goal_observable", env_name=task, seed=seed)
        obs, _ = env.reset()
        observations, success = [], []
        for action in actions:
            observations.append(obs)
            obs, _, _, _, info = env.step(action)
            success.append(bool(info["success"]))
        env.close()
    return np.array(observations, np.float32), np.array(success)


def _adapter(env_id, seeds, actions):
    """Observations [T, B] before each action and success flags [T, B] from the backend."""
    with make_vector_env(env_id, len(seeds), seeds) as env:
        obs = env.reset()
        observations, success = [], []
        for action in actions:
            observations.append(obs)
            result = env.step(action)
            obs = result.obs
            success.append(result.success)
    return np.array(observations), np.array(success)


def test_mt10_order_and_spec_match_metaworld():
    # The dict metaworld.MT10 takes its train_classes from (building MT10 itself samples
    # 500 goals: tens of seconds).
    assert tuple(metaworld.env_dict.MT10_V3) == MT10_TASKS
    spec = get_env_spec("metaworld/MT10")
    assert (spec.obs_dim, spec.act_dim, spec.max_episode_steps) == (49, 4, 500)
    assert spec.task_of(12) == "pick-place-v3" and len(spec.obs_names) == 49
    single = get_env_spec("metaworld/pick-place-v3")
    assert (single.obs_dim, single.tasks) == (39, ("pick-place-v3",))


@pytest.mark.parametrize("task", ["pick-place-v3", "window-open-v3"])
def test_single_task_matches_gymnasium_make_for_the_same_seeds_and_actions(task):
    seeds, steps = [3, 11], 40
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, 2, 4)).astype(np.float32)
    obs, success = _adapter(f"metaworld/{task}", seeds, actions)
    for b, seed in enumerate(seeds):
        ref_obs, ref_success = _reference(task, seed, actions[:, b])
        np.testing.assert_array_equal(obs[:, b], ref_obs)
        np.testing.assert_array_equal(success[:, b], ref_success)
    # Different seeds: different object/goal positions.
    assert not np.array_equal(obs[0, 0], obs[0, 1])


def test_mt10_runs_the_seeds_task_with_its_one_hot_and_reports_success():
    # Seeds 20 and 30 run reach-v3 (seed % 10 == 0); 27 runs peg-insert-side-v3.
    seeds = [20, 27, 30]
    policies = {t: ENV_POLICY_MAP[t]() for t in ("reach-v3", "peg-insert-side-v3")}
    tasks = ["reach-v3", "peg-insert-side-v3", "reach-v3"]
    with make_vector_env("metaworld/MT10", 3, seeds) as env:
        obs = env.reset()
        assert obs.shape == (3, 49)
        np.testing.assert_array_equal(obs[:, 39:].argmax(1), [0, 7, 0])
        assert obs[:, 39:].sum() == 3
        recorded, flags, ended = [obs[:, :39]], [], np.zeros(3, bool)
        steps = 0
        while not ended[[0, 2]].all() and steps < 200:
            action = np.stack(
                [policies[t].get_action(o[:39]) for t, o in zip(tasks, obs, strict=True)]
            )
            result = env.step(action)
            ended |= result.terminated | result.truncated
            obs = result.obs
            flags.append(result.success)
            recorded.append(obs[:, :39])
            steps += 1
    flags = np.array(flags)
    # The expert reaches: success ends the episode (terminated) at its first success step.
    assert ended[0] and ended[2] and flags[:, 0].any() and flags[:, 2].any()
    first = int(np.argmax(flags[:, 0]))
    assert flags[first + 1 :, 0].sum() == 0  # not stepped after its end
    # The 39-D part is Meta-World's own episode for the same actions.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = gym.make("Meta-World/goal_observable", env_name="reach-v3", seed=20)
        ref_obs, _ = ref.reset()
        for t in range(first + 1):
            np.testing.assert_array_equal(recorded[t][0], ref_obs.astype(np.float32))
            # The adapter's expert saw float32 observations.
            action = policies["reach-v3"].get_action(ref_obs.astype(np.float32))
            ref_obs, _, _, _, info = ref.step(action)
        assert info["success"] == 1.0


def test_a_batch_builds_one_env_per_concurrent_episode_of_a_task():
    with make_vector_env("metaworld/MT10", 4, [0, 10, 20, 1]) as env:
        env.reset()
        assert {t: len(e) for t, e in env._pool.items()} == {"reach-v3": 3, "push-v3": 1}
        built = env._pool["reach-v3"][0]
        env.reset([30, 2, 3, 4])  # reach, pick-place, door-open, drawer-open
        assert env._pool["reach-v3"][0] is built and len(env._pool) == 5
        assert sum(len(e) for e in env._pool.values()) == 7


def test_unknown_task_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown Meta-World task 'pick-plce-v3'.*pick-place"):
        get_env_spec("metaworld/pick-plce-v3")
    with pytest.raises(ValueError, match="not available"):
        make_vector_env("metaworld/reach-v3", 1, [0], backend="gymnasium")


def test_a_task_set_is_a_multi_task_env_with_its_own_one_hot():
    spec = get_env_spec("metaworld/drawer-close-v3+reach-v3")
    assert spec.tasks == ("drawer-close-v3", "reach-v3") and spec.shape.obs_dim == 41
    actions = np.zeros((3, 2, 4), np.float32)
    obs, _ = _adapter("metaworld/drawer-close-v3+reach-v3", [4, 7], actions)
    # Seed 4 runs drawer-close (4 % 2 == 0), seed 7 reach: each matches Meta-World's own env.
    for column, task, seed in ((0, "drawer-close-v3", 4), (1, "reach-v3", 7)):
        reference, _ = _reference(task, seed, actions[:, column])
        np.testing.assert_array_equal(obs[:, column, :39], reference)
    np.testing.assert_array_equal(obs[0, :, 39:], [[1, 0], [0, 1]])
    for bad in ("metaworld/reach-v3+reach-v3", "metaworld/reach-v3+pick-plce-v3"):
        with pytest.raises(ValueError, match="distinct MT10 tasks"):
            get_env_spec(bad)
