"""One chunk of seeds as one batch of episodes, executed receding-horizon.

The policy is called once per re-plan for the whole batch with the last ``n_obs_steps``
observations (at episode start the history is padded by repeating the first observation),
and the first ``n_action_steps`` actions it returns are executed before it is called again.
The batch keeps its size until every episode has ended, so each call's noise draw has the
same shape whatever finished early; rewards of finished episodes are not counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from diffpol.contracts import ContractError, Policy
from diffpol.evaluator.seeds import SeedChunk, call_seed
from diffpol.evaluator.tasks import TaskView


class BatchEnv(Protocol):
    """A batch of envs, one per seed, reset to those seeds."""

    def reset(self) -> np.ndarray: ...

    def step(
        self, actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """obs, reward, terminated, truncated, and the env's own success flag (or None)."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Trajectory:
    """One recorded episode: ``obs[0]`` is the reset observation, ``obs[t+1]`` follows ``actions[t]``."""

    seed: int
    obs: np.ndarray  # [length + 1, obs_dim]
    actions: np.ndarray  # [length, act_dim]
    rewards: np.ndarray  # [length]

    @property
    def episode_return(self) -> float:
        # Summed in step order (cumsum, not np.sum's pairwise order), as the evaluator does.
        return float(np.cumsum(self.rewards, dtype=np.float64)[-1]) if self.rewards.size else 0.0


@dataclass(frozen=True)
class ChunkResult:
    seeds: tuple[int, ...]
    returns: np.ndarray  # float64 [B]
    lengths: np.ndarray  # int32 [B]
    successes: np.ndarray  # bool [B]
    policy_calls: int
    # Steps until the env first reported success (1 = after the first step); -1 where it
    # never did or reports no flag.
    success_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    trajectories: dict[int, Trajectory] = field(default_factory=dict)


def run_chunk(
    policy: Policy,
    env: BatchEnv,
    chunk: SeedChunk,
    *,
    noise_seed: int,
    view: TaskView,
    max_steps: int,
    record_seeds: Iterable[int] = (),
) -> ChunkResult:
    """Run one episode per seed of ``chunk`` in ``env`` (already made for those seeds)."""
    batch = len(chunk.seeds)
    spec = policy.spec
    to, ta = spec.n_obs_steps, spec.n_action_steps
    record_rows = {chunk.seeds.index(s): s for s in record_seeds if s in chunk.seeds}

    obs = _as_batch(env.reset(), batch, spec.obs_dim, "reset observation")
    history = np.repeat(obs[:, None, :], to, axis=1)
    returns = np.zeros(batch, np.float64)
    lengths = np.zeros(batch, np.int32)
    done = np.zeros(batch, bool)
    success_steps = np.full(batch, -1, np.int32)
    tracker = view.new_tracker(batch)
    recorded_obs = [obs[list(record_rows)]] if record_rows else []
    recorded_act, recorded_rew = [], []

    calls = 0
    step = 0
    while step < max_steps and not done.all():
        seed = call_seed(noise_seed, chunk.first, calls)
        chunk_actions = _checked_actions(policy.act(history.copy(), seed=seed), batch, ta, spec)
        calls += 1
        for k in range(ta):
            if step >= max_steps or done.all():
                break
            actions = chunk_actions[:, k]
            obs, reward, terminated, truncated, reported = env.step(actions)
            obs = _as_batch(obs, batch, spec.obs_dim, "observation")
            reward = np.asarray(reward, np.float64).reshape(batch)
            terminated = np.asarray(terminated, bool).reshape(batch)
            truncated = np.asarray(truncated, bool).reshape(batch)
            active = ~done
            returns[active] += reward[active]
            lengths[active] += 1
            if reported is not None:
                reported = np.asarray(reported, bool).reshape(batch)
                first = active & reported & (success_steps < 0)
                success_steps[first] = lengths[first]
            tracker.update(obs, terminated, active, reported)
            if record_rows:
                rows = list(record_rows)
                recorded_obs.append(obs[rows])
                recorded_act.append(actions[rows])
                recorded_rew.append(np.where(active[rows], reward[rows], 0.0))
            done |= terminated | truncated
            history = np.concatenate([history[:, 1:], obs[:, None, :]], axis=1)
            step += 1

    trajectories = {}
    for i, (row, seed) in enumerate(record_rows.items()):
        n = int(lengths[row])
        trajectories[seed] = Trajectory(
            seed=seed,
            obs=np.stack([o[i] for o in recorded_obs[: n + 1]]),
            actions=np.stack([a[i] for a in recorded_act[:n]]).astype(np.float32),
            rewards=np.array([r[i] for r in recorded_rew[:n]], np.float64),
        )
    return ChunkResult(
        seeds=chunk.seeds,
        returns=returns,
        lengths=lengths,
        successes=tracker.result(),
        policy_calls=calls,
        success_steps=success_steps,
        trajectories=trajectories,
    )


def _as_batch(obs: np.ndarray, batch: int, obs_dim: int, what: str) -> np.ndarray:
    obs = np.asarray(obs, np.float32)
    if obs.shape != (batch, obs_dim):
        raise ContractError(f"env {what} has shape {obs.shape}, expected {(batch, obs_dim)}")
    return obs


def _checked_actions(actions, batch: int, ta: int, spec) -> np.ndarray:
    actions = np.asarray(actions, np.float32)
    expected = (batch, ta, spec.act_dim)
    if actions.shape != expected:
        raise ContractError(
            f"policy returned actions of shape {actions.shape}, expected {expected} "
            "([batch, n_action_steps, act_dim] per its PolicySpec)"
        )
    if not np.isfinite(actions).all():
        raise ContractError("policy returned non-finite actions (NaN or Inf)")
    return actions
