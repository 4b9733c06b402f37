"""Meta-World data plane: collection through Ray rollout actors against raw env stepping.

Goal: collection with ``collect`` (2 Ray actors, the scripted MT10 experts, rows into
validated Arrow and Parquet) runs at >= 80% of the raw env-step rate of 2 plain processes
stepping the same episodes (same seeds, so the same tasks and goal positions, and the same
end-at-success rule) with the same experts and nothing recorded.

Both sides are timed cold, as a user runs them: processes or actors start, import Meta-World,
build their envs, then step. The two alternate (raw, Ray, raw, Ray, ...) in one run and the
ratio of medians is reported. Episodes scale with ``DIFFPOL_BENCH_SCALE`` (default small;
the goal is checked only at ``DIFFPOL_BENCH_SCALE=1``).
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

from diffpol.rollout.collect import collect
from diffpol.rollout.plan import make_plan

SCALE = float(os.environ.get("DIFFPOL_BENCH_SCALE", "1.0"))
GOAL_RATIO = 0.8
PROCESSES = 2
ENV_ID = "metaworld/MT10"
RUN_SEED = 0


def raw_episodes(seeds: list[int]) -> tuple[int, float]:
    """Step the episodes of ``seeds`` with Meta-World's experts, recording nothing.

    Returns (env steps, seconds inside the loop). Runs in a fresh process."""
    import numpy as np
    from metaworld.policies import ENV_POLICY_MAP

    from diffpol.envs import get_env_spec
    from diffpol.envs.metaworld_env import make_task_env, reseed

    spec = get_env_spec(ENV_ID)
    envs, policies, steps = {}, {}, 0
    start = time.perf_counter()
    for seed in seeds:
        task = spec.task_of(seed)
        if task not in envs:
            envs[task], policies[task] = make_task_env(task, seed), ENV_POLICY_MAP[task]()
        env, policy = envs[task], policies[task]
        reseed(env, seed)
        obs, _ = env.reset()
        for _ in range(spec.max_episode_steps):
            # The expert sees float32 observations, as in the recorded data.
            action = policy.get_action(obs.astype(np.float32)).astype(np.float32)
            obs, _, _, truncated, info = env.step(action)
            steps += 1
            if info["success"] or truncated:
                break
    return steps, time.perf_counter() - start


def _raw_rate(episodes: int) -> tuple[float, int]:
    seeds = [RUN_SEED + i for i in range(episodes)]
    # Contiguous halves, as collect's shards are contiguous episode ranges.
    half = (episodes + PROCESSES - 1) // PROCESSES
    parts = [seeds[k * half : (k + 1) * half] for k in range(PROCESSES)]
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(PROCESSES, mp_context=context) as pool:
        results = list(pool.map(raw_episodes, parts))
    seconds = time.perf_counter() - start
    steps = sum(r[0] for r in results)
    return steps / seconds, steps


def _ray_rate(episodes: int, out) -> tuple[float, int]:
    plan = make_plan(ENV_ID, "expert", episodes, RUN_SEED)
    # 10 envs per actor: one slot per MT10 task for shards that start on a multiple of 10.
    result = collect(plan, out, PROCESSES, 10, shard_episodes=50, overwrite=True)
    return result.manifest.transitions / result.seconds, result.manifest.transitions


def test_metaworld_collection_through_ray_actors_vs_raw_processes(ray_local, tmp_path):
    episodes = max(20, round(500 * SCALE) // 10 * 10)
    rounds = 3 if SCALE >= 1.0 else 1
    raw, ray_rates = [], []
    for _ in range(rounds):
        rate, raw_steps = _raw_rate(episodes)
        raw.append(rate)
        rate, ray_steps = _ray_rate(episodes, tmp_path / "ds")
        ray_rates.append(rate)
        # The same episodes on both sides: the same number of env steps.
        assert ray_steps == raw_steps
    ratio = statistics.median(ray_rates) / statistics.median(raw)
    print(
        f"\nMeta-World MT10 expert, {episodes} episodes ({raw_steps} env steps), "
        f"{PROCESSES} processes: raw {', '.join(f'{r:,.0f}' for r in raw)} env steps/s; "
        f"through Ray actors into Parquet {', '.join(f'{r:,.0f}' for r in ray_rates)} "
        f"env steps/s; ratio of medians {ratio:.2f} (goal >= {GOAL_RATIO})"
    )
    if SCALE >= 1.0:
        assert ratio >= GOAL_RATIO, f"ratio {ratio:.2f}"


@pytest.mark.parametrize("task", ["reach-v3", "peg-insert-side-v3"])
def test_raw_single_process_steps_per_second(task):
    """One process, one task, the expert in the loop: the per-process ceiling."""
    from diffpol.envs.metaworld_env import MT10_TASKS

    k = MT10_TASKS.index(task)
    seeds = [k + 10 * i for i in range(max(2, round(40 * SCALE)))]
    steps, seconds = raw_episodes(seeds)
    print(f"\n{task}: {steps / seconds:,.0f} env steps/s in one process ({steps} steps)")
