"""Replay recorded episodes in plain gymnasium.

A replay is open loop: it feeds the recorded actions from the recorded initial state. On
Pendulum-v1 the upright equilibrium is unstable (an error grows about 1.2x per step while
balancing), so a replay reproduces a balancing episode only from the *exact* float64
initial state; the float32 first observation alone is off by ~1e-7, which grows to order 1
within ~100 steps. Datasets therefore record each episode's backend and reset seed, from
which ``envs.initial_state`` recomputes the exact state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from diffpol.contracts.dataset import data_files, read_manifest
from diffpol.envs import dynamics, get_env_spec, initial_state, obs_from_state


def state_from_obs(env_id: str, obs: np.ndarray) -> np.ndarray:
    """Best float64 state estimate from a float32 observation (exact only up to float32)."""
    obs = np.asarray(obs, dtype=np.float64)
    if env_id == "Pendulum-v1":
        theta, theta_dot = dynamics.pendulum_state_from_obs(obs)
        return np.array([theta, theta_dot])
    get_env_spec(env_id)
    return obs.copy()


def replay_episode(
    env_id: str,
    first_obs: np.ndarray,
    actions: np.ndarray,
    *,
    initial_state: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Step gymnasium's ``env_id`` from a recorded start through ``actions`` [T, act_dim].

    Returns ``(obs [T, obs_dim] float32, rewards [T] float64)`` aligned with dataset rows:
    ``obs[t]`` is the observation action ``t`` was taken in, so ``obs[0]`` is the start.
    The start is ``initial_state`` when given (exact, see ``envs.initial_state``), else a
    state estimated from ``first_obs``; a given state must produce ``first_obs``.
    """
    import gymnasium as gym

    spec = get_env_spec(env_id)
    first_obs = np.asarray(first_obs, dtype=np.float32).reshape(spec.obs_dim)
    actions = np.asarray(actions, dtype=np.float32)
    if actions.ndim != 2 or actions.shape[1] != spec.act_dim or len(actions) == 0:
        raise ValueError(f"actions must have shape [T >= 1, {spec.act_dim}], got {actions.shape}")
    if initial_state is None:
        state = state_from_obs(env_id, first_obs)
    else:
        state = np.asarray(initial_state, dtype=np.float64).reshape(spec.state_dim)
        start_obs = obs_from_state(env_id, state)
        if np.max(np.abs(start_obs - first_obs)) > 1e-6:
            raise ValueError(
                f"initial_state {state.tolist()} gives observation {start_obs.tolist()}, "
                f"not the recorded first observation {first_obs.tolist()}"
            )
    env = gym.make(env_id)
    try:
        env.reset(seed=0)
        env.unwrapped.state = state.copy()
        obs = obs_from_state(env_id, state)
        observations = np.empty((len(actions), spec.obs_dim), dtype=np.float32)
        rewards = np.empty(len(actions), dtype=np.float64)
        for t, action in enumerate(actions):
            observations[t] = obs
            obs, reward, terminated, truncated, _ = env.step(action)
            rewards[t] = reward
            if (terminated or truncated) and t + 1 < len(actions):
                raise ValueError(
                    f"gymnasium ended the episode after {t + 1} steps but {len(actions)} "
                    "actions were recorded: the recording does not follow this env"
                )
        return observations, rewards
    finally:
        env.close()


@dataclass(frozen=True)
class ReplayCheck:
    episode_id: int
    steps: int
    max_obs_error: float
    max_reward_error: float


def replay_recorded(dataset_dir: str | Path, episode_id: int) -> ReplayCheck:
    """Replay one episode of a dataset in gymnasium from its exact initial state and
    compare it with the recording."""
    manifest = read_manifest(dataset_dir)
    backend = manifest.provenance.get("backend")
    if backend is None:
        raise ValueError(f"{dataset_dir}: manifest has no provenance.backend, cannot replay")
    rows = []
    for path in data_files(dataset_dir):
        table = pq.read_table(path, filters=[("episode_id", "=", int(episode_id))])
        if table.num_rows:
            rows.append(table)
    if not rows:
        raise ValueError(f"{dataset_dir}: no rows with episode_id {episode_id}")
    import pyarrow as pa

    table = pa.concat_tables(rows)
    table = table.take(pc.sort_indices(table, [("step", "ascending")]))
    obs = np.asarray(table["obs"].combine_chunks().flatten(), np.float32).reshape(
        table.num_rows, -1
    )
    actions = np.asarray(table["action"].combine_chunks().flatten(), np.float32).reshape(
        table.num_rows, -1
    )
    rewards = np.asarray(table["reward"], np.float32)
    seed = int(table["seed"][0].as_py())
    state = initial_state(manifest.env.env_id, backend, seed)
    replay_obs, replay_rewards = replay_episode(
        manifest.env.env_id, obs[0], actions, initial_state=state
    )
    return ReplayCheck(
        episode_id=int(episode_id),
        steps=table.num_rows,
        max_obs_error=float(np.max(np.abs(replay_obs - obs))),
        max_reward_error=float(np.max(np.abs(replay_rewards - rewards))),
    )
