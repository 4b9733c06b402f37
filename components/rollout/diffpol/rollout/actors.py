"""The Ray actor that runs rollout shards.

Shards go in and results come out as ``diffpol.v1`` messages (``RolloutShard`` ->
``RolloutShardResult`` whose batches are Arrow IPC streams validated against the
Transition schema), so what crosses the object store is the contract, not pickled objects.
"""

from __future__ import annotations

import os
from typing import Any

import ray

from diffpol.rollout.policies import make_policy
from diffpol.rollout.runner import ShardRunner
from diffpol.v1 import rollout_pb2


class RolloutWorkerImpl:
    """Owns ``num_envs`` envs and one data policy; runs shards one at a time."""

    def __init__(
        self,
        env_id: str,
        policy: str,
        policy_params: dict[str, Any],
        num_envs: int,
        backend: str = "auto",
        envpool_threads: int = 1,
    ):
        self.policy = make_policy(policy, env_id, **policy_params)
        self.runner = ShardRunner(
            env_id, self.policy, num_envs, backend, num_threads=envpool_threads
        )

    def run_shard(self, shard_bytes: bytes) -> tuple[bytes, int]:
        """Run a serialised ``RolloutShard``; returns (serialised ``RolloutShardResult``, pid)."""
        shard = rollout_pb2.RolloutShard.FromString(shard_bytes)
        return self.runner.shard_result(shard).SerializeToString(), os.getpid()


RolloutWorker = ray.remote(RolloutWorkerImpl)
