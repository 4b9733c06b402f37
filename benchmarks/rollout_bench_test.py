"""Rollout throughput: env stepping per backend, and transitions into Arrow with an expert.

Goal: at least 300k transitions/s into validated Arrow batches with the Pendulum-v1 DP
expert in the loop, in one process on a 2-core machine. Sizes scale with
``DIFFPOL_BENCH_SCALE`` (default 1.0; CI uses a small value and skips the goal check).
"""

from __future__ import annotations

import os
import statistics
import time
import warnings

import numpy as np
import pytest

from diffpol.envs import make_vector_env
from diffpol.rollout.collect import collect
from diffpol.rollout.plan import make_plan
from diffpol.rollout.policies import make_policy
from diffpol.rollout.runner import ShardRunner

SCALE = float(os.environ.get("DIFFPOL_BENCH_SCALE", "1.0"))
GOAL_TRANSITIONS_PER_S = 300_000
# The DP expert's grid: the default (400) for measurements, a quick solve for CI's small runs.
DP_PARAMS = {} if SCALE >= 1.0 else {"grid": 100}


# A private DP cache for every test, set before ``ray_local`` starts Ray (actors inherit it).
pytestmark = pytest.mark.usefixtures("dp_cache_dir")


@pytest.mark.parametrize(
    ("env_id", "backend", "num_envs"),
    [
        ("Pendulum-v1", "gymnasium", 64),
        ("Pendulum-v1", "envpool", 256),
        ("Pendulum-v1", "numpy", 256),
        ("MountainCarContinuous-v0", "gymnasium", 64),
        ("MountainCarContinuous-v0", "envpool", 256),
    ],
)
def test_env_steps_per_second(benchmark, env_id, backend, num_envs):
    steps = max(5, round((50 if backend == "gymnasium" else 400) * SCALE))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # EnvPool's Pendulum-v1 caveat
        env = make_vector_env(env_id, num_envs, list(range(num_envs)), backend)
    env.reset()
    actions = np.zeros((num_envs, 1), np.float32)

    seconds = []

    results = []

    def run():
        start = time.perf_counter()
        for _ in range(steps):
            results.append(env.step(actions))
        seconds.append(time.perf_counter() - start)

    benchmark.pedantic(run, rounds=3, iterations=1)
    # What was timed really stepped every env: finite observations of the env's shape.
    last = results[-1]
    assert last.obs.shape == (num_envs, env.spec.obs_dim) and np.isfinite(last.obs).all()
    assert last.reward.shape == (num_envs,) and np.isfinite(last.reward).all()
    rate = steps * num_envs / statistics.median(seconds)
    benchmark.extra_info.update(env_steps_per_s=round(rate), num_envs=num_envs)
    print(f"\n{env_id} {backend} x{num_envs}: {rate:,.0f} env steps/s")
    env.close()


@pytest.mark.parametrize(
    ("env_id", "policy", "backend", "num_envs"),
    [
        ("Pendulum-v1", "expert", "numpy", 1024),
        ("Pendulum-v1", "noisy-expert", "numpy", 1024),
        ("Pendulum-v1", "expert", "envpool", 1024),
        ("MountainCarContinuous-v0", "expert", "envpool", 1024),
    ],
)
def test_transitions_into_arrow_with_the_expert(benchmark, env_id, policy, backend, num_envs):
    params = DP_PARAMS if env_id == "Pendulum-v1" else {}
    data_policy = make_policy(policy, env_id, **params)  # DP solve/load outside the timing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runner = ShardRunner(env_id, data_policy, num_envs, backend)
        episodes = max(8, round(num_envs * 2 * SCALE))
        runner.run_episodes(0, np.arange(min(8, num_envs)), 20)  # warm the env pool and caches

        seconds = []

        def run():
            start, rows = time.perf_counter(), 0
            for first in range(0, episodes, num_envs):
                indices = np.arange(first, min(first + num_envs, episodes))
                rows += runner.run_episodes(1, indices, runner.spec.max_episode_steps).num_rows
            seconds.append(time.perf_counter() - start)
            return rows

        rows = benchmark.pedantic(run, rounds=3, iterations=1)
    rate = rows / statistics.median(seconds)
    benchmark.extra_info.update(transitions_per_s=round(rate), transitions=rows, backend=backend)
    print(f"\n{env_id} {policy} on {backend} x{num_envs}: {rate:,.0f} transitions/s into Arrow")
    runner.close()
    if SCALE >= 1.0 and (env_id, policy, backend) == ("Pendulum-v1", "expert", "numpy"):
        assert rate >= GOAL_TRANSITIONS_PER_S, f"{rate:,.0f} transitions/s"


def test_collect_with_actors(benchmark, ray_local, tmp_path):
    """End to end through Ray (2 actors): includes actor start-up and Parquet writing."""
    episodes = max(8, round(4096 * SCALE))
    plan = make_plan("Pendulum-v1", "noisy-expert", episodes, 0, DP_PARAMS)
    make_policy("noisy-expert", "Pendulum-v1", **DP_PARAMS)  # DP table cached before actors start
    result = benchmark.pedantic(
        lambda: collect(plan, tmp_path / "ds", 2, 512, overwrite=True), rounds=1, iterations=1
    )
    rate = result.manifest.transitions / result.seconds
    benchmark.extra_info.update(transitions_per_s=round(rate), seconds=round(result.seconds, 2))
    print(
        f"\ncollect: {result.manifest.transitions} transitions with 2 actors in "
        f"{result.seconds:.1f} s ({rate:,.0f} transitions/s including actor start-up)"
    )
    assert result.manifest.episodes == episodes
