"""End to end through Ray actors: exact agreement with gymnasium, worker-count independence."""

import sys
import threading

import gymnasium as gym
import numpy as np
import pytest

from diffpol.evaluator import EpisodeWorkers, EvaluationConfigError, evaluate
from diffpol.evaluator.evaluate import cpus_per_actor
from diffpol.evaluator.testing import PendulumPD, PidRecordingPD, TorchPD


def reference_returns(policy_factory, env_id, seeds):
    """Independent single-process loop: one gymnasium env per seed, chunks executed by hand."""
    returns = []
    for seed in seeds:
        policy = policy_factory()
        env = gym.make(env_id)
        obs, _ = env.reset(seed=seed)
        history, total, done = [obs] * policy.spec.n_obs_steps, 0.0, False
        while not done:
            chunk = policy.act(np.array(history[-policy.spec.n_obs_steps :])[None])[0]
            for action in chunk:
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(np.float32(reward))  # rollout's envs report float32 rewards
                history.append(obs)
                done = terminated or truncated
                if done:
                    break
        returns.append(total)
    return np.array(returns)


def test_mean_equals_independent_gymnasium_loop(ray_local):
    def factory():
        return PendulumPD(n_obs_steps=2, n_action_steps=4)

    result = evaluate(
        {"pd": factory()}, "Pendulum-v1", "0:30", workers=2, chunk_size=8, backend="gymnasium"
    )
    expected = reference_returns(factory, "Pendulum-v1", range(30))
    pd = result["pd"]
    assert pd.ran_in == "ray"
    assert pd.seeds.tolist() == list(range(30))
    np.testing.assert_array_equal(pd.returns, expected)
    assert pd.summary.mean == pytest.approx(expected.mean(), rel=1e-15)
    assert pd.summary.std == pytest.approx(expected.std(ddof=1))
    assert pd.policy_calls == 4 * 50  # 4 chunks (0-7, 8-15, 16-23, 24-29), ceil(200 / 4) each
    assert pd.replay_matches is True
    assert set(pd.examples) == {"best", "median", "worst"}
    assert pd.examples["best"].episode_return == expected.max()
    assert pd.examples["worst"].episode_return == expected.min()
    assert result.backend == "gymnasium"


def test_results_do_not_depend_on_worker_count(ray_local):
    def noisy():
        return PendulumPD(n_obs_steps=2, n_action_steps=3, noise_std=0.7)

    kwargs = dict(env_id="Pendulum-v1", seeds="3:15", chunk_size=4, backend="gymnasium")
    by_workers = {
        workers: evaluate([noisy()], workers=workers, record_examples=False, **kwargs)
        for workers in (0, 1, 3)  # 3 actors on 2 CPUs share them
    }
    returns = {w: r.policies[0].returns for w, r in by_workers.items()}
    assert by_workers[0].policies[0].ran_in == "driver"
    assert by_workers[3].policies[0].ran_in == "ray"
    np.testing.assert_array_equal(returns[0], returns[1])
    np.testing.assert_array_equal(returns[0], returns[3])
    # The noise matters: another noise seed, or no noise, changes the returns.
    other = evaluate([noisy()], workers=0, noise_seed=1, record_examples=False, **kwargs)
    assert not np.array_equal(other.policies[0].returns, returns[0])
    clean = evaluate([PendulumPD(n_obs_steps=2, n_action_steps=3)], workers=0, **kwargs)
    assert not np.array_equal(clean.policies[0].returns, returns[0])


def test_evaluations_share_started_episode_workers(ray_local, tmp_path):
    kwargs = dict(
        env_id="Pendulum-v1", seeds="0:8", chunk_size=4, record_examples=False, backend="gymnasium"
    )
    shared, own = tmp_path / "shared", tmp_path / "own"

    def loaded_in(path):
        pids = set(path.read_text().split())
        path.unlink()
        return pids

    with EpisodeWorkers("Pendulum-v1", workers=2, backend="gymnasium") as pool:
        first = evaluate([PidRecordingPD(shared)], pool=pool, **kwargs)
        first_pids = loaded_in(shared)
        second = evaluate({"again": PidRecordingPD(shared)}, pool=pool, **kwargs)
        assert loaded_in(shared) == first_pids and len(first_pids) == 2
        with pytest.raises(EvaluationConfigError, match="noise seed"):
            evaluate([PendulumPD()], pool=pool, **{**kwargs, "noise_seed": 1})
    alone = evaluate([PidRecordingPD(own)], workers=2, **kwargs)
    assert not loaded_in(own) & first_pids  # an evaluation of its own starts its own actors
    assert first.policies[0].ran_in == "ray"
    np.testing.assert_array_equal(first.policies[0].returns, second["again"].returns)
    np.testing.assert_array_equal(first.policies[0].returns, alone.policies[0].returns)
    with pytest.raises(EvaluationConfigError, match="not started"):
        evaluate([PendulumPD()], pool=pool, **kwargs)


def test_actors_reserve_a_whole_cpu_each_or_none():
    assert cpus_per_actor(free=2.0, count=2) == 1.0
    assert cpus_per_actor(free=3.5, count=2) == 1.0
    assert cpus_per_actor(free=2.0, count=3) == 0.0  # no fractions: they may not fit a node
    assert cpus_per_actor(free=0.0, count=1) == 0.0


def test_episode_actors_the_cluster_cannot_place_are_a_clear_error_not_a_hang(
    ray_local, monkeypatch
):
    module = sys.modules[EpisodeWorkers.__module__]
    monkeypatch.setattr(module, "cpus_per_actor", lambda free, count: 1000.0)
    pool = EpisodeWorkers("Pendulum-v1", workers=1, start_timeout_s=3)
    with pytest.raises(EvaluationConfigError, match="none of 1 episode actors started"):
        pool.__enter__()


class UnpicklablePD(PendulumPD):
    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()  # cannot be pickled: must stay in this process


def test_policy_objects_travel_by_value_unless_unpicklable(ray_local):
    kwargs = dict(env_id="Pendulum-v1", seeds="0:4", chunk_size=2, record_examples=False)
    result = evaluate(
        {"local": UnpicklablePD(), "remote": PendulumPD(), "torch": TorchPD()},
        workers=2,
        **kwargs,
    )
    assert [p.ran_in for p in result.policies] == ["driver", "ray", "ray"]
    np.testing.assert_array_equal(result["local"].returns, result["remote"].returns)
    torch_here = evaluate({"torch": TorchPD()}, workers=0, **kwargs)
    np.testing.assert_array_equal(result["torch"].returns, torch_here["torch"].returns)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(env_id="CartPole-v9"), "CartPole-v9"),
        (dict(seeds="5:3"), "empty"),
        (dict(seeds="a:b"), "START:STOP"),
        (dict(seeds=range(0, 10, 2)), "step 1"),
        (dict(policies=["/nonexistent/model.onnx"]), "does not exist"),
        (dict(policies=["bogus"]), "unknown policy 'bogus'"),
        (dict(policies=["grpc://localhost"]), "grpc://HOST:PORT"),
        (dict(policies=[]), "no policy"),
        (dict(policies=["zero", "zero"]), "more than once"),
        (dict(policies=[object()]), "neither a spec string"),
        (dict(env_id="MountainCarContinuous-v0"), "obs_dim 3 != 2"),
        (dict(workers=-1), "workers"),
        (dict(backend="mujoco"), "backend"),
        (dict(noise_seed=-5), "noise seed"),
        (dict(chunk_size=0), "chunk_size"),
    ],
)
def test_invalid_arguments_fail_before_any_episode(kwargs, message):
    policy = PendulumPD()
    args = dict(policies=[policy], env_id="Pendulum-v1", seeds="0:2", workers=0)
    args.update(kwargs)
    with pytest.raises(EvaluationConfigError, match=message):
        evaluate(args.pop("policies"), args.pop("env_id"), args.pop("seeds"), **args)
    assert policy.calls == 0
