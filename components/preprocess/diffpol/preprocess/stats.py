"""One distributed pass over the inputs: validation, normaliser statistics, episode index.

Each Ray Data block is reduced, where it lives, to one small row: count, mean, M2, min
and max per dimension of observations and labels (Chan et al.'s pairwise form, so merging
partials is exact and numerically stable), plus, per episode seen in the block, its row
count and step range. The driver receives one row per block, never the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray

from diffpol.contracts import validate_batch
from diffpol.contracts.arrow import fixed_list_values
from diffpol.contracts.errors import ContractError
from diffpol.contracts.normalizer import AffineNormalizer, Normalizer
from diffpol.preprocess.config import PreprocessConfig
from diffpol.preprocess.sources import Sources
from diffpol.preprocess.windows import label_values, lookup_lengths


@dataclass(frozen=True)
class Moments:
    """Per-dimension count, mean, sum of squared deviations (M2), min and max."""

    count: int
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation (ddof=0), as numpy's default."""
        return np.sqrt(self.m2 / max(self.count, 1))

    @classmethod
    def of(cls, values: np.ndarray) -> Moments:
        x = np.asarray(values, np.float64)
        if len(x) == 0:
            d = x.shape[1]
            return cls(0, np.zeros(d), np.zeros(d), np.full(d, np.inf), np.full(d, -np.inf))
        mean = x.mean(axis=0)
        return cls(len(x), mean, ((x - mean) ** 2).sum(axis=0), x.min(axis=0), x.max(axis=0))

    @classmethod
    def merge(cls, parts: Sequence[Moments]) -> Moments:
        parts = [p for p in parts if p.count]
        if not parts:
            raise ContractError("no values to compute statistics from")
        counts = np.array([p.count for p in parts], np.float64)[:, None]
        means = np.stack([p.mean for p in parts])
        total = counts.sum()
        mean = (counts * means).sum(axis=0) / total
        m2 = np.stack([p.m2 for p in parts]).sum(axis=0) + (counts * (means - mean) ** 2).sum(
            axis=0
        )
        return cls(
            int(total),
            mean,
            m2,
            np.stack([p.min for p in parts]).min(axis=0),
            np.stack([p.max for p in parts]).max(axis=0),
        )

    def normalizer(self, mode: str) -> AffineNormalizer:
        if mode == "minmax":
            return AffineNormalizer.from_stats("minmax", min=self.min, max=self.max)
        return AffineNormalizer.from_stats(mode, mean=self.mean, std=self.std)


@dataclass(frozen=True)
class EpisodeIndex:
    """Every episode of the inputs: ids (sorted, unique), lengths and source dataset."""

    ids: np.ndarray  # int64
    lengths: np.ndarray  # int64
    sources: np.ndarray  # int64 index into Sources.items

    def __len__(self) -> int:
        return len(self.ids)

    def lengths_of(self, ids: np.ndarray) -> np.ndarray:
        """Lengths of the given episode ids, -1 for an id not in the index."""
        return lookup_lengths(self.ids, self.lengths, ids)


@dataclass(frozen=True)
class DataStats:
    obs: Moments
    label: Moments
    expert_label_rows: int
    episodes: EpisodeIndex

    @property
    def rows(self) -> int:
        return self.obs.count

    def fit_normalizer(self, config: PreprocessConfig) -> Normalizer:
        return Normalizer(
            obs=self.obs.normalizer(config.obs_norm),
            action=self.label.normalizer(config.action_norm),
        )


def block_stats(
    table: pa.Table, *, obs_dim: int, act_dim: int, source: int, source_path: str
) -> pa.Table:
    """Reduce one block of Transition rows to a one-row table of partial statistics."""
    try:
        validate_batch(table, obs_dim, act_dim)
    except ContractError as exc:
        raise ContractError(f"{source_path}: {exc}") from exc
    obs = Moments.of(fixed_list_values(table.column("obs"), obs_dim))
    labels, from_expert = label_values(table, act_dim)
    label = Moments.of(labels)
    episode_id = table.column("episode_id").to_numpy()
    step = table.column("step").to_numpy().astype(np.int64)
    ids, inverse, counts = np.unique(episode_id, return_inverse=True, return_counts=True)
    step_min = np.full(len(ids), np.iinfo(np.int64).max)
    step_max = np.full(len(ids), -1)
    step_sum = np.zeros(len(ids), np.int64)
    np.minimum.at(step_min, inverse, step)
    np.maximum.at(step_max, inverse, step)
    np.add.at(step_sum, inverse, step)
    row = {"source": source, "expert_rows": int(from_expert.sum())}
    for name, m in (("obs", obs), ("label", label)):
        row |= {
            f"{name}_count": m.count,
            f"{name}_mean": m.mean.tolist(),
            f"{name}_m2": m.m2.tolist(),
            f"{name}_min": m.min.tolist(),
            f"{name}_max": m.max.tolist(),
        }
    row |= {
        "episode_ids": ids.tolist(),
        "episode_rows": counts.tolist(),
        "episode_step_min": step_min.tolist(),
        "episode_step_max": step_max.tolist(),
        "episode_step_sum": step_sum.tolist(),
    }
    return pa.Table.from_pylist([row])


def collect_stats(sources: Sources) -> DataStats:
    """Run the statistics pass over all inputs (one Ray Data execution)."""
    parts = None
    for index, source in enumerate(sources.items):
        if not source.files:
            continue
        # All columns: the whole Transition is validated (e.g. no NaN rewards), not just
        # the columns the samples use.
        ds = ray.data.read_parquet([str(p) for p in source.files])
        ds = ds.map_batches(
            block_stats,
            batch_format="pyarrow",
            batch_size=None,
            fn_kwargs={
                "obs_dim": sources.env.obs_dim,
                "act_dim": sources.env.act_dim,
                "source": index,
                "source_path": str(source.root),
            },
        )
        parts = ds if parts is None else parts.union(ds)
    rows = parts.take_all() if parts is not None else []
    return combine_block_stats(rows, sources)


def combine_block_stats(rows: Sequence[dict], sources: Sources) -> DataStats:
    """Merge the per-block rows and check the episodes against the manifests."""

    def moments(name: str) -> Moments:
        return Moments.merge(
            [
                Moments(
                    int(r[f"{name}_count"]),
                    np.asarray(r[f"{name}_mean"], np.float64),
                    np.asarray(r[f"{name}_m2"], np.float64),
                    np.asarray(r[f"{name}_min"], np.float64),
                    np.asarray(r[f"{name}_max"], np.float64),
                )
                for r in rows
            ]
        )

    def column(name: str) -> np.ndarray:
        arrays = [np.asarray(r[name], np.int64) for r in rows]
        return np.concatenate(arrays) if arrays else np.zeros(0, np.int64)

    ids = column("episode_ids")
    block_source = (
        np.concatenate([np.full(len(r["episode_ids"]), r["source"], np.int64) for r in rows])
        if rows
        else np.zeros(0, np.int64)
    )
    unique, inverse = np.unique(ids, return_inverse=True)
    n = len(unique)
    length = np.bincount(inverse, weights=column("episode_rows"), minlength=n).astype(np.int64)
    step_sum = np.bincount(inverse, weights=column("episode_step_sum"), minlength=n)
    step_min = np.full(n, np.iinfo(np.int64).max)
    step_max = np.full(n, -1)
    np.minimum.at(step_min, inverse, column("episode_step_min"))
    np.maximum.at(step_max, inverse, column("episode_step_max"))
    source_min = np.full(n, np.iinfo(np.int64).max)
    source_max = np.full(n, -1)
    np.minimum.at(source_min, inverse, block_source)
    np.maximum.at(source_max, inverse, block_source)

    clash = np.flatnonzero(source_min != source_max)
    if len(clash):
        i = clash[0]
        a, b = sources.items[source_min[i]].root, sources.items[source_max[i]].root
        raise ContractError(
            f"episode id {unique[i]} occurs in both {a} and {b} ({len(clash)} shared id(s)): "
            "episode ids must be unique across the inputs (collect them with different seeds)"
        )
    expected_sum = length * (length - 1) / 2
    broken = np.flatnonzero((step_min != 0) | (step_max != length - 1) | (step_sum != expected_sum))
    if len(broken):
        i = broken[0]
        raise ContractError(
            f"{sources.items[source_min[i]].root}: episode {unique[i]} does not have each step "
            f"0..{length[i] - 1} exactly once (steps {step_min[i]}..{step_max[i]} over "
            f"{length[i]} rows; {len(broken)} such episode(s))"
        )
    for index, source in enumerate(sources.items):
        episodes = int((source_min == index).sum())
        if episodes != source.manifest.episodes:
            raise ContractError(
                f"{source.root}: manifest says {source.manifest.episodes} episodes but the data "
                f"holds {episodes}"
            )
    return DataStats(
        obs=moments("obs"),
        label=moments("label"),
        expert_label_rows=int(sum(r["expert_rows"] for r in rows)),
        episodes=EpisodeIndex(unique.astype(np.int64), length, source_min.astype(np.int64)),
    )
