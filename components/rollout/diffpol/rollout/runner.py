"""The rollout loop: a batch of envs, a data policy, rows into Arrow. In process, no Ray.

Each batch of up to ``num_envs`` episodes starts together (one episode per env, reset with
its own seed) and runs until every episode has ended. An env that terminates early (the
MountainCar flag) is masked from then on: whatever its backend does with it afterwards
(EnvPool and gymnasium auto-reset) never reaches the data. Steps go into preallocated
[T, B] NumPy buffers; Arrow arrays are built from them without per-row Python.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from diffpol.contracts import batch_to_envelope, transition_schema, validate_batch
from diffpol.envs import VectorEnv, get_env_spec, make_vector_env, resolve_backend
from diffpol.rollout.plan import episode_ids, reset_seeds, shard_indices
from diffpol.rollout.policies import DataPolicy
from diffpol.v1 import rollout_pb2


class ShardRunner:
    def __init__(
        self,
        env_id: str,
        policy: DataPolicy,
        num_envs: int,
        backend: str = "auto",
        num_threads: int = 1,
    ):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.spec = get_env_spec(env_id)
        if policy.env.env_id != env_id:
            raise ValueError(f"policy {policy.name!r} is for {policy.env.env_id}, not {env_id}")
        self.policy = policy
        self.num_envs = num_envs
        self.backend = resolve_backend(env_id, backend)
        self.num_threads = num_threads
        self.schema = transition_schema(self.spec.obs_dim, self.spec.act_dim)
        self._envs: dict[int, VectorEnv] = {}

    def run_shard(self, shard: rollout_pb2.RolloutShard) -> list[pa.RecordBatch]:
        """Rows of every episode of the shard, in episode-index order, one batch per env batch."""
        plan = shard.plan
        if plan.env_id != self.spec.env_id:
            raise ValueError(f"shard is for {plan.env_id}, this runner steps {self.spec.env_id}")
        indices = shard_indices(shard)
        return [
            self.run_episodes(
                plan.seed, indices[start : start + self.num_envs], plan.max_episode_steps
            )
            for start in range(0, len(indices), self.num_envs)
        ]

    def shard_result(self, shard: rollout_pb2.RolloutShard) -> rollout_pb2.RolloutShardResult:
        """``run_shard`` as the contract's message: each batch an Arrow IPC TransitionBatch."""
        spec = self.spec
        result = rollout_pb2.RolloutShardResult(shard=shard)
        for batch in self.run_shard(shard):
            result.batches.append(
                batch_to_envelope(
                    batch,
                    env_id=spec.env_id,
                    data_policy=self.policy.name,
                    obs_dim=spec.obs_dim,
                    act_dim=spec.act_dim,
                )
            )
        return result

    def run_episodes(self, run_seed: int, indices: np.ndarray, max_steps: int) -> pa.RecordBatch:
        """Run episodes ``indices`` of run ``run_seed`` together, up to ``max_steps`` each."""
        spec, policy = self.spec, self.policy
        n_obs, n_act = policy.spec.n_obs_steps, policy.spec.n_action_steps
        low = np.asarray(spec.action_low, np.float32)
        high = np.asarray(spec.action_high, np.float32)
        seeds = reset_seeds(run_seed, indices)
        env = self._env(len(indices), seeds)
        obs = env.reset(seeds.tolist())
        stepper = policy.start(run_seed, indices, max_steps)
        buf = _StepBuffers(max_steps, len(indices), spec.obs_dim, spec.act_dim, policy.has_label)
        # The env's per-step success flag; rows stay null where it reports none.
        reports_success = False
        alive = np.ones(len(indices), dtype=bool)
        # Observation history [B, To, obs_dim]; before step 0 it repeats the first obs.
        history = np.repeat(obs[:, None, :], n_obs, axis=1)
        for t in range(max_steps):
            if t % n_act == 0:
                chunk, labels = stepper(history, t)
            k = t % n_act
            # Record what the env applies: it clips to the bounds itself.
            action = np.clip(chunk[:, k], low, high)
            buf.obs[t] = history[:, -1]
            buf.action[t] = action
            if buf.label is not None:
                buf.label[t] = labels[:, k]
            result = env.step(action)
            if result.success is not None:
                reports_success = True
                buf.success[t] = result.success
            buf.reward[t] = result.reward
            buf.terminated[t] = result.terminated
            # The plan's step limit may be below the env's own: truncate here too.
            buf.truncated[t] = result.truncated | (t + 1 == max_steps)
            ended = alive & (buf.terminated[t] | buf.truncated[t])
            if ended.any():
                buf.lengths[ended] = t + 1
                alive &= ~ended
                if not alive.any():
                    break
            if n_obs == 1:
                history = result.obs[:, None, :]
            else:
                history = np.concatenate([history[:, 1:], result.obs[:, None, :]], axis=1)
        columns = buf.columns(self.schema, reports_success)
        columns["task"] = pa.array(np.repeat([spec.task_of(s) for s in seeds], buf.lengths))
        columns["episode_id"] = pa.array(np.repeat(episode_ids(run_seed, indices), buf.lengths))
        columns["seed"] = pa.array(np.repeat(seeds, buf.lengths))
        batch = pa.RecordBatch.from_arrays(
            [columns[f.name] for f in self.schema], schema=self.schema
        )
        return validate_batch(batch, spec.obs_dim, spec.act_dim)

    def _env(self, n: int, seeds: np.ndarray) -> VectorEnv:
        env = self._envs.get(n)
        if env is None:
            env = make_vector_env(
                self.spec.env_id, n, seeds.tolist(), self.backend, num_threads=self.num_threads
            )
            self._envs[n] = env
        return env

    def close(self) -> None:
        for env in self._envs.values():
            env.close()
        self._envs.clear()


class _StepBuffers:
    """Preallocated [T, B, ...] step arrays of a batch of episodes, and their Arrow columns."""

    def __init__(self, max_steps: int, n: int, obs_dim: int, act_dim: int, labels: bool):
        self.obs = np.empty((max_steps, n, obs_dim), dtype=np.float32)
        self.action = np.empty((max_steps, n, act_dim), dtype=np.float32)
        self.label = np.empty((max_steps, n, act_dim), dtype=np.float32) if labels else None
        self.reward = np.empty((max_steps, n), dtype=np.float32)
        self.terminated = np.zeros((max_steps, n), dtype=bool)
        self.truncated = np.zeros((max_steps, n), dtype=bool)
        self.success = np.zeros((max_steps, n), dtype=bool)
        self.lengths = np.full(n, max_steps, dtype=np.int64)

    def columns(self, schema: pa.Schema, success: bool) -> dict[str, pa.Array]:
        """Step columns, episode-major, each episode's steps 0..length-1 only."""
        steps, n = int(self.lengths.max()), len(self.lengths)
        # Every episode as long as the longest (Pendulum): a plain transpose, no mask.
        mask = None
        if (self.lengths != steps).any():
            mask = np.arange(steps)[None, :] < self.lengths[:, None]

        def rows(buffer: np.ndarray) -> np.ndarray:
            episode_major = np.swapaxes(buffer[:steps], 0, 1)
            if mask is None:
                return np.ascontiguousarray(episode_major).reshape(n * steps, *buffer.shape[2:])
            return episode_major[mask]

        def vectors(buffer: np.ndarray) -> pa.Array:
            return pa.FixedSizeListArray.from_arrays(
                pa.array(rows(buffer).reshape(-1)), buffer.shape[2]
            )

        step = np.tile(np.arange(steps, dtype=np.int32), n)
        total = int(self.lengths.sum())
        return {
            "step": pa.array(step if mask is None else step[mask.reshape(-1)]),
            "obs": vectors(self.obs),
            "action": vectors(self.action),
            "reward": pa.array(rows(self.reward)),
            "terminated": pa.array(rows(self.terminated)),
            "truncated": pa.array(rows(self.truncated)),
            "expert_action": (
                vectors(self.label)
                if self.label is not None
                else pa.nulls(total, schema.field("expert_action").type)
            ),
            "success": pa.array(rows(self.success)) if success else pa.nulls(total, pa.bool_()),
        }
