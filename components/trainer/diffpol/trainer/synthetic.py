"""Small preprocess outputs written from arrays, for tests and benchmarks.

``write_samples`` produces exactly the layout ``diffpol.contracts.samples.load_samples`` reads
(``samples.json``, ``normalizer.json``, ``train/`` and ``val/`` Parquet in
``sample_schema``), so the trainer can be exercised without rollouts or the preprocess
pipeline. ``bimodal_samples`` is the classic case where regression fails: one observation,
actions near -1 and +1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from diffpol.contracts.arrow import fixed_list_array
from diffpol.contracts.atomic import atomic_write_json
from diffpol.contracts.normalizer import AffineNormalizer, Normalizer
from diffpol.contracts.samples import (
    NORMALIZER_FILE,
    SAMPLES_FILE,
    SAMPLES_VERSION,
    SamplesInfo,
    SplitInfo,
    sample_schema,
)
from diffpol.contracts.shapes import EnvShape, Window


def write_samples(
    out_dir: str | Path,
    obs: np.ndarray,
    action: np.ndarray,
    *,
    episode_length: int = 50,
    val_fraction: float = 0.1,
    env_id: str = "Pendulum-v1",
    action_low: tuple[float, ...] | None = None,
    action_high: tuple[float, ...] | None = None,
    obs_norm: str = "standard",
) -> Path:
    """Write samples from env-unit arrays ``obs`` [N, To, obs_dim], ``action`` [N, T, act_dim].

    Rows are grouped into pseudo-episodes of ``episode_length``; the last
    ``val_fraction`` of episodes form the val split. Actions are min-max normalised over
    ``[action_low, action_high]`` (default: the data's range); observations by ``obs_norm``.
    """
    out = Path(out_dir)
    obs = np.asarray(obs, np.float32)
    action = np.asarray(action, np.float32)
    if obs.ndim != 3 or action.ndim != 3 or len(obs) != len(action):
        raise ValueError("obs and action must be [N, To, obs_dim] and [N, T, act_dim] arrays")
    n, to, obs_dim = obs.shape
    _, horizon, act_dim = action.shape
    flat_obs, flat_act = obs.reshape(-1, obs_dim), action.reshape(-1, act_dim)
    low = np.asarray(action_low if action_low is not None else flat_act.min(0), np.float64)
    high = np.asarray(action_high if action_high is not None else flat_act.max(0), np.float64)
    if obs_norm == "standard":
        obs_normalizer = AffineNormalizer.from_stats(
            "standard", mean=flat_obs.mean(0), std=flat_obs.std(0)
        )
    else:
        obs_normalizer = AffineNormalizer.from_stats(
            "minmax", min=flat_obs.min(0), max=flat_obs.max(0)
        )
    normalizer = Normalizer(
        obs_normalizer, AffineNormalizer.from_stats("minmax", min=low, max=high)
    )

    episode_id = np.arange(n, dtype=np.int64) // episode_length
    step = (np.arange(n) % episode_length).astype(np.int32)
    episodes = int(episode_id[-1]) + 1 if n else 0
    val_episodes = round(episodes * val_fraction)
    is_val = episode_id >= episodes - val_episodes
    schema = sample_schema(to, horizon, obs_dim, act_dim)
    splits = {}
    for split, mask in (("train", ~is_val), ("val", is_val)):
        table = pa.table(
            {
                "episode_id": pa.array(episode_id[mask]),
                "step": pa.array(step[mask]),
                "obs": fixed_list_array(normalizer.obs.normalize(obs[mask])),
                "action": fixed_list_array(normalizer.action.normalize(action[mask])),
            },
            schema=schema,
        )
        name = f"{split}/part-00000.parquet"
        (out / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out / name)
        splits[split] = SplitInfo(int(mask.sum()), len(set(episode_id[mask].tolist())), (name,))
    normalizer.save(out / NORMALIZER_FILE)
    info = SamplesInfo(
        version=SAMPLES_VERSION,
        env=EnvShape(env_id, obs_dim, act_dim, tuple(low), tuple(high)),
        window=Window(to, horizon, 1),
        label="action",
        label_rows={"expert_action": 0, "action": n},
        normalizer={"obs": normalizer.obs.mode, "action": normalizer.action.mode},
        train=splits["train"],
        val=splits["val"],
        sources=({"path": "synthetic", "fingerprint": "synthetic"},),
        created_by="diffpol.trainer.synthetic",
    )
    atomic_write_json(out / SAMPLES_FILE, info.to_json())
    return out


def bimodal_samples(
    n: int, *, n_obs_steps: int = 1, horizon: int = 1, obs_dim: int = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Observations from N(0, 1); each action chunk is, at random, all +1 or all -1
    (plus N(0, 0.05) noise) whatever the observation: two modes, mean 0."""
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((n, n_obs_steps, obs_dim)).astype(np.float32)
    sign = rng.choice([-1.0, 1.0], size=(n, 1, 1))
    action = sign + 0.05 * rng.standard_normal((n, horizon, 1))
    return obs, action.astype(np.float32)
