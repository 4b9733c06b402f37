"""Small synthetic rollout datasets in the Transition schema, for tests and benchmarks.

They follow the dataset contract exactly (parts + fingerprinted manifest), so the
preprocess pipeline can be exercised without running an env or the rollout component.
Values are recognisable on purpose: ``obs[0]`` is the episode index and ``obs[1]`` the
step, so a test can check a window by reading the numbers back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from diffpol.contracts import SCHEMA_VERSION, EnvShape, transition_schema
from diffpol.contracts.arrow import fixed_list_array
from diffpol.contracts.atomic import atomic_write_json
from diffpol.contracts.dataset import (
    DATA_DIR,
    MANIFEST,
    DatasetManifest,
    ReturnStats,
    data_files,
    digest_files,
)


def synthetic_episodes(
    lengths: Sequence[int],
    *,
    obs_dim: int = 3,
    act_dim: int = 1,
    first_episode_id: int = 0,
    expert_label: bool | Sequence[bool] = True,
    seed: int = 0,
) -> pa.Table:
    """Rows for ``len(lengths)`` episodes in step order, episode after episode.

    ``obs = [episode index, step, noise...]`` (dims beyond obs_dim are dropped), ``action``
    is uniform in [-2, 2], and ``expert_action`` (where ``expert_label`` is true for that
    episode) is ``action`` plus 0.5, else null.
    """
    if obs_dim < 2:
        raise ValueError("synthetic episodes need obs_dim >= 2 (episode index and step)")
    flags = [expert_label] * len(lengths) if isinstance(expert_label, bool) else list(expert_label)
    if len(flags) != len(lengths):
        raise ValueError("expert_label needs one flag per episode")
    rng = np.random.default_rng(seed)
    n = int(sum(lengths))
    episode_index = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    step = np.concatenate([np.arange(k) for k in lengths]) if n else np.zeros(0, np.int64)
    obs = np.empty((n, obs_dim), np.float32)
    obs[:, 0] = episode_index
    obs[:, 1] = step
    obs[:, 2:] = rng.normal(0.0, 3.0, (n, obs_dim - 2))
    action = rng.uniform(-2.0, 2.0, (n, act_dim)).astype(np.float32)
    ends = np.cumsum(np.asarray(lengths, np.int64)) - 1
    terminated = np.zeros(n, bool)
    truncated = np.zeros(n, bool)
    truncated[ends] = True
    expert_rows = np.repeat(np.asarray(flags, bool), lengths)
    expert = pa.FixedSizeListArray.from_arrays(
        pa.array((action + 0.5).ravel(), pa.float32()),
        act_dim,
        mask=pa.array(~expert_rows),
    )
    schema = transition_schema(obs_dim, act_dim)
    return pa.table(
        {
            "episode_id": pa.array(episode_index + first_episode_id, pa.int64()),
            "seed": pa.array(episode_index + 1000 * first_episode_id, pa.int64()),
            "step": pa.array(step, pa.int32()),
            "obs": fixed_list_array(obs),
            "action": fixed_list_array(action),
            "reward": pa.array(rng.normal(size=n), pa.float32()),
            "terminated": pa.array(terminated),
            "truncated": pa.array(truncated),
            "expert_action": expert,
            "task": pa.array([""] * n, pa.string()),
            "success": pa.nulls(n, pa.bool_()),
        },
        schema=schema,
    )


def write_dataset(
    root: str | Path,
    parts: Sequence[pa.Table],
    *,
    env_id: str = "Pendulum-v1",
    obs_dim: int = 3,
    act_dim: int = 1,
    action_low: Sequence[float] | None = None,
    action_high: Sequence[float] | None = None,
    policy: str = "synthetic",
    seed: int = 0,
) -> DatasetManifest:
    """Write ``parts`` as ``root/data/part-NNNNN.parquet`` and then the manifest."""
    root = Path(root)
    (root / DATA_DIR).mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(parts):
        pq.write_table(part, root / DATA_DIR / f"part-{i:05d}.parquet")
    tables = pa.concat_tables(parts) if parts else None
    episodes = len(set(tables.column("episode_id").to_pylist())) if tables is not None else 0
    fingerprint, digests = digest_files(data_files(root))
    manifest = DatasetManifest(
        schema_version=SCHEMA_VERSION,
        env=EnvShape(
            env_id,
            obs_dim,
            act_dim,
            tuple(action_low or [-2.0] * act_dim),
            tuple(action_high or [2.0] * act_dim),
        ),
        policy=policy,
        policy_params={},
        seed=seed,
        episodes=episodes,
        transitions=tables.num_rows if tables is not None else 0,
        returns=ReturnStats(0.0, 0.0, 0.0, 0.0),
        fingerprint=fingerprint,
        file_digests=digests,
        provenance={"writer": "diffpol.preprocess.synthetic"},
    )
    atomic_write_json(root / MANIFEST, manifest.to_json())
    return manifest


def write_synthetic_dataset(
    root: str | Path,
    lengths: Sequence[int],
    *,
    episodes_per_file: int = 4,
    obs_dim: int = 3,
    act_dim: int = 1,
    first_episode_id: int = 0,
    expert_label: bool | Sequence[bool] = True,
    env_id: str = "Pendulum-v1",
    seed: int = 0,
) -> DatasetManifest:
    """A complete dataset of synthetic episodes, ``episodes_per_file`` whole episodes a part."""
    table = synthetic_episodes(
        lengths,
        obs_dim=obs_dim,
        act_dim=act_dim,
        first_episode_id=first_episode_id,
        expert_label=expert_label,
        seed=seed,
    )
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    parts = [
        table.slice(bounds[i], bounds[min(i + episodes_per_file, len(lengths))] - bounds[i])
        for i in range(0, len(lengths), episodes_per_file)
    ]
    return write_dataset(root, parts, env_id=env_id, obs_dim=obs_dim, act_dim=act_dim, seed=seed)
