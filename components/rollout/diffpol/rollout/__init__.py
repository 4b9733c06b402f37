"""diffpol rollout: collect control data with Ray actors stepping batched envs.

Data policies (``make_policy``) act in batched envs (``make_vector_env``); ``collect``
runs a ``RolloutPlan`` on ``RolloutWorker`` actors and writes a dataset directory in the
v1 Transition schema (``diffpol.contracts.dataset``). ``import_parquet`` turns external
logs into the same format.
"""

__version__ = "0.1.0"

from diffpol.envs import (
    EnvSpec,
    VectorEnv,
    get_env_spec,
    initial_state,
    known_env_ids,
    make_vector_env,
)
from diffpol.rollout.collect import (
    CollectError,
    CollectResult,
    ShardReport,
    collect,
    collect_local,
    resolve_plan,
)
from diffpol.rollout.importer import ColumnMapping, ImportSchemaError, import_parquet, parse_mapping
from diffpol.rollout.plan import episode_id, make_plan, reset_seeds, split_shards
from diffpol.rollout.policies import DataPolicy, known_policies, make_policy
from diffpol.rollout.replay import ReplayCheck, replay_episode, replay_recorded
from diffpol.rollout.runner import ShardRunner
from diffpol.rollout.sink import open_dataset

__all__ = [
    "CollectError",
    "CollectResult",
    "ColumnMapping",
    "DataPolicy",
    "EnvSpec",
    "ImportSchemaError",
    "ReplayCheck",
    "ShardReport",
    "ShardRunner",
    "VectorEnv",
    "__version__",
    "collect",
    "collect_local",
    "episode_id",
    "get_env_spec",
    "import_parquet",
    "initial_state",
    "known_env_ids",
    "known_policies",
    "make_plan",
    "make_policy",
    "make_vector_env",
    "open_dataset",
    "parse_mapping",
    "replay_episode",
    "replay_recorded",
    "reset_seeds",
    "resolve_plan",
    "split_shards",
]
