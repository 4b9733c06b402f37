"""Driver: split a plan into shards, run them on ``RolloutWorker`` actors, write the dataset.

Fault tolerance, in two layers:

1. Ray: actors are created with ``max_restarts`` and ``max_task_retries``, so an actor
   process that dies is restarted and its queued and running shards are run again.
2. This driver: a shard whose actor is gone for good (restarts used up) or whose task
   raised is resubmitted, to a replacement actor if needed, up to ``max_attempts`` times.

Shards are deterministic (``plan``), so a rerun gives the same rows; the driver accepts
one result per shard and checks every result's episode ids against the plan before
writing it, so no episode is lost or duplicated.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from diffpol.contracts import batch_from_envelope
from diffpol.contracts.dataset import DatasetManifest
from diffpol.contracts.errors import ContractError
from diffpol.contracts.ray_session import ray_session
from diffpol.envs import get_env_spec, resolve_backend
from diffpol.rollout.plan import decode_params, episode_ids, make_plan, shard_indices, split_shards
from diffpol.rollout.policies import DataPolicy, make_policy
from diffpol.rollout.provenance import dataset_provenance
from diffpol.rollout.runner import ShardRunner
from diffpol.rollout.sink import open_dataset
from diffpol.v1 import rollout_pb2


class CollectError(RuntimeError):
    """Collection could not finish; no dataset was published."""


@dataclass(frozen=True)
class ShardReport:
    """Progress: one shard's rows were checked and written."""

    index: int
    first_episode: int
    num_episodes: int
    transitions: int
    attempt: int
    worker: str
    pid: int
    done: int
    total: int


@dataclass(frozen=True)
class CollectResult:
    path: Path
    manifest: DatasetManifest
    seconds: float
    shards: int
    resubmitted_shards: int
    replaced_actors: int


def resolve_plan(plan: rollout_pb2.RolloutPlan) -> tuple[rollout_pb2.RolloutPlan, DataPolicy]:
    """Validate a plan and make its policy explicit (``expert`` -> ``expert-dp`` with all
    params), so that every actor builds exactly the same policy."""
    policy = make_policy(plan.policy, plan.env_id, **decode_params(plan.policy_params))
    resolved = make_plan(
        plan.env_id,
        policy.name,
        plan.episodes,
        plan.seed,
        policy.params,
        plan.max_episode_steps or None,
    )
    return resolved, policy


def collect(
    plan: rollout_pb2.RolloutPlan,
    out_dir: str | Path,
    num_actors: int = 2,
    envs_per_actor: int = 256,
    *,
    backend: str = "auto",
    shard_episodes: int | None = None,
    overwrite: bool = False,
    progress: Callable[[ShardReport], None] | None = None,
    address: str | None = None,
    cpus_per_actor: float = 1.0,
    max_restarts: int = 2,
    max_task_retries: int = 2,
    max_attempts: int = 3,
    envpool_threads: int = 1,
) -> CollectResult:
    """Collect ``plan`` with ``num_actors`` actors of ``envs_per_actor`` envs into ``out_dir``.

    Shards hold ``shard_episodes`` episodes (default ``envs_per_actor``); each becomes one
    Parquet part. Uses the running Ray if there is one, else starts one (``address`` to
    join a cluster) and stops it at the end.
    """
    import ray

    if num_actors < 1 or envs_per_actor < 1:
        raise ValueError(
            f"num_actors and envs_per_actor must be >= 1, got {num_actors}, {envs_per_actor}"
        )
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    _check_out_dir(out_dir, overwrite)
    start = time.perf_counter()
    job = _Job.prepare(plan, backend, shard_episodes or envs_per_actor)
    with ray_session(address, log_to_driver=False):
        cpus = ray.cluster_resources().get("CPU", 0.0)
        if num_actors * cpus_per_actor > cpus:
            raise ValueError(
                f"{num_actors} actors x {cpus_per_actor} CPU need more than the {cpus:g} CPUs "
                "this Ray cluster has (they would wait forever): use fewer actors or a "
                "smaller cpus_per_actor"
            )
        pool = _ActorPool(
            num_actors,
            dict(
                env_id=job.plan.env_id,
                policy=job.policy.name,
                policy_params=job.policy.params,
                num_envs=envs_per_actor,
                backend=job.backend,
                envpool_threads=envpool_threads,
            ),
            cpus_per_actor=cpus_per_actor,
            max_restarts=max_restarts,
            max_task_retries=max_task_retries,
        )
        try:
            manifest, resubmitted = job.write(
                out_dir,
                overwrite,
                lambda writer: _run_shards(pool, job.shards, writer, max_attempts, progress),
                num_actors=num_actors,
                envs_per_actor=envs_per_actor,
            )
        finally:
            pool.shutdown()
    return CollectResult(
        path=Path(out_dir),
        manifest=manifest,
        seconds=time.perf_counter() - start,
        shards=len(job.shards),
        resubmitted_shards=resubmitted,
        replaced_actors=pool.replaced,
    )


def collect_local(
    plan: rollout_pb2.RolloutPlan,
    out_dir: str | Path,
    num_envs: int = 256,
    *,
    backend: str = "auto",
    shard_episodes: int | None = None,
    overwrite: bool = False,
    progress: Callable[[ShardReport], None] | None = None,
) -> CollectResult:
    """``collect`` in this process, without Ray: the same dataset, for small runs and tests."""
    _check_out_dir(out_dir, overwrite)
    start = time.perf_counter()
    job = _Job.prepare(plan, backend, shard_episodes or num_envs)
    runner = ShardRunner(job.plan.env_id, job.policy, num_envs, job.backend)

    def run(writer) -> int:
        for index, shard in enumerate(job.shards):
            table = _checked_rows(runner.shard_result(shard).SerializeToString(), shard)
            writer.write_part(index, table)
            if progress is not None:
                progress(
                    ShardReport(
                        index,
                        shard.first_episode,
                        shard.num_episodes,
                        table.num_rows,
                        1,
                        "local",
                        os.getpid(),
                        index + 1,
                        len(job.shards),
                    )
                )
        return 0

    try:
        manifest, _ = job.write(out_dir, overwrite, run, num_actors=0, envs_per_actor=num_envs)
    finally:
        runner.close()
    return CollectResult(
        Path(out_dir), manifest, time.perf_counter() - start, len(job.shards), 0, 0
    )


def _check_out_dir(out_dir: str | Path, overwrite: bool) -> None:
    # atomic_directory checks too, but only after the actors have started.
    if Path(out_dir).exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already exists; pass overwrite to replace it")


@dataclass(frozen=True)
class _Job:
    """A resolved plan, its shards and policy: what both drivers share."""

    plan: rollout_pb2.RolloutPlan
    requested_policy: str
    policy: DataPolicy
    backend: str
    shards: list
    shard_episodes: int

    @classmethod
    def prepare(cls, plan: rollout_pb2.RolloutPlan, backend: str, shard_episodes: int) -> _Job:
        requested = plan.policy
        plan, policy = resolve_plan(plan)
        backend = resolve_backend(plan.env_id, backend)
        return cls(
            plan, requested, policy, backend, split_shards(plan, shard_episodes), shard_episodes
        )

    def write(
        self, out_dir, overwrite: bool, run: Callable, **settings
    ) -> tuple[DatasetManifest, int]:
        env = get_env_spec(self.plan.env_id)
        with open_dataset(out_dir, env, overwrite=overwrite) as writer:
            extra = run(writer)
            provenance = dataset_provenance(
                env_id=self.plan.env_id,
                backend=self.backend,
                requested_policy=self.requested_policy,
                label_column="expert_action" if self.policy.has_label else "action",
                max_episode_steps=self.plan.max_episode_steps,
                shard_episodes=self.shard_episodes,
                **settings,
            )
            if writer.episodes != self.plan.episodes:
                raise CollectError(
                    f"collected {writer.episodes} episodes, the plan has {self.plan.episodes}"
                )
            manifest = writer.write_manifest(
                policy=self.policy.name,
                policy_params=self.policy.params,
                seed=self.plan.seed,
                provenance=provenance,
            )
        return manifest, extra


class _ActorPool:
    """Actor slots; a slot whose actor died for good gets a new actor (new generation)."""

    def __init__(
        self, size: int, worker_args: dict, *, cpus_per_actor, max_restarts, max_task_retries
    ):
        self.worker_args = worker_args
        self.options = dict(
            num_cpus=cpus_per_actor, max_restarts=max_restarts, max_task_retries=max_task_retries
        )
        self.token = uuid.uuid4().hex[:8]
        self.actors: list = [None] * size
        self.names: list[str] = [""] * size
        self.generation = [0] * size
        self.replaced = 0
        for slot in range(size):
            self._start(slot)

    def _start(self, slot: int) -> None:
        from diffpol.rollout.actors import RolloutWorker

        name = f"diffpol-rollout-{self.token}-{slot}-{self.generation[slot]}"
        self.actors[slot] = RolloutWorker.options(name=name, **self.options).remote(
            **self.worker_args
        )
        self.names[slot] = name

    def replace(self, slot: int, generation: int) -> None:
        """Replace the slot's actor if it is still the one of ``generation``."""
        import ray

        if self.generation[slot] != generation:
            return
        ray.kill(self.actors[slot], no_restart=True)
        self.generation[slot] += 1
        self.replaced += 1
        self._start(slot)

    def shutdown(self) -> None:
        import ray

        for actor in self.actors:
            if actor is not None:
                ray.kill(actor, no_restart=True)


def _run_shards(pool: _ActorPool, shards, writer, max_attempts: int, progress) -> int:
    """Dispatch shards (two in flight per actor), check and write results. Returns the
    number of explicit resubmissions."""
    import ray
    from ray.exceptions import RayActorError, RayError, RayTaskError

    payloads = [s.SerializeToString() for s in shards]
    pending = deque(range(len(shards)))
    attempts = [0] * len(shards)
    done: set[int] = set()
    inflight: dict = {}  # ref -> (shard index, slot, generation)
    per_slot = [0] * len(pool.actors)
    resubmitted = 0
    in_flight_per_actor = 2  # one running, one queued: no idle gap between shards

    def fill() -> None:
        for slot in range(len(pool.actors)):
            while per_slot[slot] < in_flight_per_actor and pending:
                index = pending.popleft()
                attempts[index] += 1
                ref = pool.actors[slot].run_shard.remote(payloads[index])
                inflight[ref] = (index, slot, pool.generation[slot])
                per_slot[slot] += 1

    fill()
    while inflight:
        (ref,), _ = ray.wait(list(inflight), num_returns=1)
        index, slot, generation = inflight.pop(ref)
        per_slot[slot] -= 1
        try:
            payload, pid = ray.get(ref)
        except RayError as exc:
            if index in done:
                continue
            if isinstance(exc, RayActorError) and not isinstance(exc, RayTaskError):
                pool.replace(slot, generation)  # its restarts are used up
            if attempts[index] >= max_attempts:
                raise CollectError(
                    f"shard {index} (episodes {shards[index].first_episode}.."
                    f"{shards[index].first_episode + shards[index].num_episodes - 1}) failed "
                    f"{attempts[index]} times; last error: {exc}"
                ) from exc
            pending.appendleft(index)
            resubmitted += 1
        else:
            if index not in done:  # a resubmitted shard may finish twice: keep one
                table = _checked_rows(payload, shards[index])
                writer.write_part(index, table)
                done.add(index)
                if progress is not None:
                    progress(
                        ShardReport(
                            index=index,
                            first_episode=shards[index].first_episode,
                            num_episodes=shards[index].num_episodes,
                            transitions=table.num_rows,
                            attempt=attempts[index],
                            worker=pool.names[slot],
                            pid=pid,
                            done=len(done),
                            total=len(shards),
                        )
                    )
        fill()
    missing = sorted(set(range(len(shards))) - done)
    if missing:
        raise CollectError(f"shard(s) {missing[:10]} never completed")
    return resubmitted


def _checked_rows(payload: bytes, shard: rollout_pb2.RolloutShard) -> pa.Table:
    """Decode a shard result and check that it holds exactly the shard's episodes, each
    with steps 0..n-1 in order."""
    result = rollout_pb2.RolloutShardResult.FromString(payload)
    if (result.shard.first_episode, result.shard.num_episodes) != (
        shard.first_episode,
        shard.num_episodes,
    ):
        raise ContractError(
            f"result is for episodes from {result.shard.first_episode}, expected {shard.first_episode}"
        )
    table = pa.concat_tables([batch_from_envelope(b) for b in result.batches])
    ids = table["episode_id"].to_numpy()
    steps = table["step"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    expected = episode_ids(shard.plan.seed, shard_indices(shard))
    if not np.array_equal(ids[starts], expected):
        raise ContractError(
            f"shard from episode {shard.first_episode}: episode ids do not match the plan "
            f"(got {len(starts)} runs of ids for {len(expected)} episodes)"
        )
    lengths = np.diff(np.r_[starts, len(ids)])
    expected_steps = np.arange(len(ids)) - np.repeat(starts, lengths)
    if not np.array_equal(steps, expected_steps):
        raise ContractError(
            f"shard from episode {shard.first_episode}: steps are not 0..n-1 per episode"
        )
    return table
