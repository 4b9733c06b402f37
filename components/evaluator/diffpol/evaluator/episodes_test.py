"""The receding-horizon loop against an independent single-env gymnasium loop."""

import math

import gymnasium as gym
import numpy as np
import pytest

from diffpol.contracts import ContractError, PolicySpec
from diffpol.evaluator.envs import VectorEnvAdapter
from diffpol.evaluator.episodes import run_chunk
from diffpol.evaluator.seeds import SeedChunk, call_seed
from diffpol.evaluator.tasks import task_view
from diffpol.evaluator.testing import MountainCarPump, PendulumPD


def reference_episode(policy, env_id, seed):
    """One episode in one gymnasium env, executing action chunks by hand."""
    env = gym.make(env_id)
    obs, _ = env.reset(seed=seed)
    spec = policy.spec
    history = [obs] * spec.n_obs_steps
    total, observations, calls = 0.0, [obs], 0
    while True:
        chunk = policy.act(np.array(history[-spec.n_obs_steps :], np.float32)[None])[0]
        calls += 1
        for action in chunk:
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(np.float32(reward))  # rollout's envs report float32 rewards
            history.append(obs)
            observations.append(obs)
            if terminated or truncated:
                env.close()
                return total, len(observations) - 1, calls, np.array(observations), terminated


def run(policy, env_id, seeds, record=(), backend="gymnasium"):
    view = task_view(env_id)
    max_steps = gym.spec(env_id).max_episode_steps
    env = VectorEnvAdapter(env_id, seeds, backend)
    try:
        return run_chunk(
            policy,
            env,
            SeedChunk(tuple(seeds)),
            noise_seed=0,
            view=view,
            max_steps=max_steps,
            record_seeds=record,
        )
    finally:
        env.close()


@pytest.mark.parametrize("n_obs_steps, n_action_steps", [(1, 1), (2, 4), (3, 3)])
@pytest.mark.parametrize("backend", ["gymnasium", "numpy"])
def test_pendulum_matches_independent_loop(n_obs_steps, n_action_steps, backend):
    seeds = [0, 1, 2, 3, 4, 5]
    batched = PendulumPD(n_obs_steps=n_obs_steps, n_action_steps=n_action_steps)
    result = run(batched, "Pendulum-v1", seeds, backend=backend)
    expected_calls = math.ceil(200 / n_action_steps)
    assert result.policy_calls == batched.calls == expected_calls
    for i, seed in enumerate(seeds):
        single = PendulumPD(n_obs_steps=n_obs_steps, n_action_steps=n_action_steps)
        total, length, calls, observations, _ = reference_episode(single, "Pendulum-v1", seed)
        assert result.returns[i] == total  # same additions in the same order: exact
        assert result.lengths[i] == length == 200
        assert calls == expected_calls
        theta = np.arctan2(observations[1:, 1], observations[1:, 0])
        upright = (np.abs(theta) < 0.5) & (np.abs(observations[1:, 2]) < 1.0)
        assert result.successes[i] == bool(upright[-50:].all())


def test_executing_the_wrong_chunk_action_would_change_returns():
    # Guards the test above: with these gains, chunk position and history both matter.
    seeds = [0, 1]
    base = run(PendulumPD(n_obs_steps=2, n_action_steps=4), "Pendulum-v1", seeds).returns
    no_decay = run(PendulumPD(n_obs_steps=2, n_action_steps=4, decay=1.0), "Pendulum-v1", seeds)
    no_history = run(PendulumPD(n_obs_steps=1, n_action_steps=4), "Pendulum-v1", seeds)
    assert not np.allclose(base, no_decay.returns)
    assert not np.allclose(base, no_history.returns)


class RecordingPD(PendulumPD):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.inputs = []

    def act(self, obs, seed=None):
        self.inputs.append(obs.copy())
        return super().act(obs, seed)


def test_history_is_padded_then_slides_and_seeds_follow_the_rule():
    policy = RecordingPD(n_obs_steps=3, n_action_steps=2)
    result = run(policy, "Pendulum-v1", [10, 11], record=(11,))
    first = policy.inputs[0]
    np.testing.assert_array_equal(first[:, 0], first[:, 1])
    np.testing.assert_array_equal(first[:, 0], first[:, 2])
    trajectory = result.trajectories[11]
    np.testing.assert_array_equal(first[1, -1], trajectory.obs[0])
    # Re-plan j sees observations after steps 2j-2, 2j-1, 2j (row 1 is seed 11).
    for j in (1, 2, 50, 99):
        expected = trajectory.obs[[max(0, 2 * j - 2), 2 * j - 1, 2 * j]]
        np.testing.assert_array_equal(policy.inputs[j][1], expected)
    assert policy.seeds == [call_seed(0, 10, j) for j in range(100)]


def test_mountain_car_stops_counting_finished_episodes():
    seeds = [0, 1, 2, 3]
    result = run(MountainCarPump(), "MountainCarContinuous-v0", seeds, record=(2,))
    for i, seed in enumerate(seeds):
        total, length, _, _, terminated = reference_episode(
            MountainCarPump(), "MountainCarContinuous-v0", seed
        )
        assert terminated and length < 999
        assert result.returns[i] == total
        assert result.lengths[i] == length
    assert result.successes.all()
    assert len(set(result.lengths.tolist())) > 1  # episodes ended at different steps
    trajectory = result.trajectories[2]
    assert len(trajectory.actions) == result.lengths[2] == len(trajectory.obs) - 1
    assert trajectory.episode_return == result.returns[2]
    # A policy that never reaches the goal: full-length episodes, no success.
    idle = run(MountainCarPump(gain=0.0), "MountainCarContinuous-v0", [0])
    assert idle.lengths[0] == 999 and not idle.successes[0] and idle.returns[0] == 0.0


class BadPolicy:
    def __init__(self, output):
        self.spec = PolicySpec(3, 1, 1, 2)
        self.output = output

    def act(self, obs, seed=None):
        return self.output(obs.shape[0])


@pytest.mark.parametrize(
    "output, message",
    [
        (lambda b: np.zeros((b, 1, 1), np.float32), r"shape \(2, 1, 1\), expected \(2, 2, 1\)"),
        (lambda b: np.zeros((b, 2), np.float32), "expected"),
        (lambda b: np.full((b, 2, 1), np.nan, np.float32), "non-finite"),
    ],
)
def test_bad_policy_output_is_named(output, message):
    with pytest.raises(ContractError, match=message):
        run(BadPolicy(output), "Pendulum-v1", [0, 1])


class ChunkLogger:
    """A To=2, T=16, Ta=8 policy (Chi et al.'s window) that remembers what it was given and
    what it returned; action k of call c is ``0.1 * k + 0.01 * c``, so every executed action
    names its call and its position in the chunk."""

    def __init__(self):
        self.spec = PolicySpec(3, 1, n_obs_steps=2, n_action_steps=8)
        self.histories, self.chunks = [], []

    def act(self, obs, seed=None):
        self.histories.append(obs.copy())
        call = len(self.chunks)
        # The policy's whole horizon of 16; the evaluator is given (and may run) only Ta.
        chunk = 0.1 * np.arange(16, dtype=np.float32) + 0.01 * call
        chunk = np.broadcast_to(chunk[None, :8, None], (obs.shape[0], 8, 1)).copy()
        self.chunks.append(chunk)
        return chunk


class StepLogger(VectorEnvAdapter):
    def __init__(self, *args):
        super().__init__(*args)
        self.actions, self.observations = [], []

    def reset(self):
        obs = super().reset()
        self.observations.append(obs)
        return obs

    def step(self, actions):
        self.actions.append(np.array(actions))
        result = super().step(actions)
        self.observations.append(result[0])
        return result


def test_a_chunked_policy_executes_exactly_ta_actions_per_call():
    policy, seeds = ChunkLogger(), [0, 1]
    env = StepLogger("Pendulum-v1", seeds, "numpy")
    try:
        result = run_chunk(
            policy,
            env,
            SeedChunk(tuple(seeds)),
            noise_seed=0,
            view=task_view("Pendulum-v1"),
            max_steps=200,
        )
    finally:
        env.close()
    assert result.lengths.tolist() == [200, 200]
    assert result.policy_calls == len(policy.chunks) == 200 // 8
    executed = np.stack(env.actions)  # [steps, B, 1]
    for step, actions in enumerate(executed):
        call, k = divmod(step, 8)
        np.testing.assert_array_equal(actions, policy.chunks[call][:, k])
    # Each call sees the last To observations, the first call its reset observation twice.
    for call, history in enumerate(policy.histories):
        latest = env.observations[8 * call]
        previous = env.observations[max(8 * call - 1, 0)]
        np.testing.assert_array_equal(history, np.stack([previous, latest], axis=1))
