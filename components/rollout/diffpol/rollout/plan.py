"""Rollout plans and shards, and the deterministic identities of episodes.

Everything about episode ``i`` of a run with seed ``s`` is a function of ``(s, i)``:

- ``episode_id(s, i) = run_tag(s) << 32 | i`` where ``run_tag`` is a 31-bit hash of ``s``:
  unique inside a run, ordered by index, and unlikely to collide across runs;
- ``reset_seed(s, i) = s + i``, the env's reset seed (< 2**31: EnvPool takes int32);
- the policy's random streams (exploration noise, random actions) come from
  ``episode_rng(s, i, stream)``.

So a shard (a contiguous range of episode indices) gives the same rows whichever actor
runs it and however often it is retried.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from diffpol.envs import MAX_RESET_SEED, get_env_spec
from diffpol.v1 import rollout_pb2

_INDEX_BITS = 32
_STREAMS = {"policy": 1, "noise-scale": 2, "call": 3}


def run_tag(run_seed: int) -> int:
    digest = hashlib.sha256(f"diffpol.rollout/{int(run_seed)}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1  # 31 bits: ids stay non-negative int64


def episode_ids(run_seed: int, indices: np.ndarray) -> np.ndarray:
    indices = np.asarray(indices, dtype=np.int64)
    return (np.int64(run_tag(run_seed)) << np.int64(_INDEX_BITS)) | indices


def episode_id(run_seed: int, index: int) -> int:
    return int(episode_ids(run_seed, np.array([index]))[0])


def reset_seeds(run_seed: int, indices: np.ndarray) -> np.ndarray:
    return int(run_seed) + np.asarray(indices, dtype=np.int64)


def episode_rng(run_seed: int, index: int, stream: str) -> np.random.Generator:
    return np.random.default_rng([int(run_seed), int(index), _STREAMS[stream]])


def call_seed(run_seed: int, first_index: int, step: int) -> int:
    """Seed for one policy call on a batch of episodes starting at ``first_index``."""
    state = np.random.SeedSequence([int(run_seed), int(first_index), int(step), _STREAMS["call"]])
    return int(state.generate_state(1, np.uint64)[0] >> np.uint64(1))


def encode_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Policy params as the plan's string map (JSON values, so types survive)."""
    return {str(k): json.dumps(v) for k, v in sorted(params.items())}


def decode_params(raw: Mapping[str, str]) -> dict[str, Any]:
    out = {}
    for key, value in raw.items():
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value  # a plain string written by hand
    return out


def make_plan(
    env_id: str,
    policy: str,
    episodes: int,
    seed: int,
    policy_params: Mapping[str, Any] | None = None,
    max_episode_steps: int | None = None,
) -> rollout_pb2.RolloutPlan:
    spec = get_env_spec(env_id)
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    if seed < 0 or seed + episodes - 1 > MAX_RESET_SEED:
        raise ValueError(
            f"seed must be >= 0 with seed + episodes - 1 <= {MAX_RESET_SEED} (episode i is "
            f"reset with seed + i), got seed {seed} for {episodes} episodes"
        )
    steps = spec.max_episode_steps if max_episode_steps is None else int(max_episode_steps)
    if not 1 <= steps <= spec.max_episode_steps:
        raise ValueError(
            f"max_episode_steps must be in [1, {spec.max_episode_steps}] for {env_id}, got {steps}"
        )
    return rollout_pb2.RolloutPlan(
        env_id=env_id,
        policy=policy,
        policy_params=encode_params(policy_params or {}),
        episodes=episodes,
        seed=seed,
        max_episode_steps=steps,
    )


def split_shards(
    plan: rollout_pb2.RolloutPlan, shard_episodes: int
) -> list[rollout_pb2.RolloutShard]:
    """Contiguous shards of at most ``shard_episodes`` episodes, in index order."""
    if shard_episodes < 1:
        raise ValueError(f"shard_episodes must be >= 1, got {shard_episodes}")
    return [
        rollout_pb2.RolloutShard(
            plan=plan, first_episode=first, num_episodes=min(shard_episodes, plan.episodes - first)
        )
        for first in range(0, plan.episodes, shard_episodes)
    ]


def shard_indices(shard: rollout_pb2.RolloutShard) -> np.ndarray:
    return np.arange(shard.first_episode, shard.first_episode + shard.num_episodes, dtype=np.int64)
