"""Write a transition dataset directory (``diffpol.contracts.dataset`` layout), atomically.

Parts are written into a hidden staging directory as they arrive; ``manifest.json`` is
written last, and only then does the staging directory become ``out_dir``
(``atomic_directory``). A run that dies part-way leaves no directory that looks complete.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from diffpol.contracts import SCHEMA_VERSION, validate_batch
from diffpol.contracts.atomic import atomic_directory, atomic_write_json
from diffpol.contracts.dataset import (
    DATA_DIR,
    MANIFEST,
    DatasetManifest,
    ReturnStats,
    data_files,
    digest_files,
)
from diffpol.contracts.errors import ContractError
from diffpol.envs import EnvSpec


class DatasetWriter:
    """Collects parts in a staging directory; see ``open_dataset``."""

    def __init__(self, staging: Path, env: EnvSpec):
        self.staging = staging
        self.env = env
        (staging / DATA_DIR).mkdir()
        self._returns: list[np.ndarray] = []
        self._episode_ids: list[np.ndarray] = []
        self._transitions = 0
        self._parts: set[int] = set()
        self._lock = threading.Lock()

    def write_part(self, index: int, table: pa.Table | pa.RecordBatch) -> Path:
        """Write rows as ``data/part-{index:05d}.parquet``; each index once. Parts may be
        written from several threads at once (the Parquet encoding releases the GIL)."""
        with self._lock:
            if index in self._parts:
                raise ValueError(f"part {index} was already written")
            self._parts.add(index)
        validate_batch(table, self.env.obs_dim, self.env.act_dim)
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        path = self.staging / DATA_DIR / f"part-{index:05d}.parquet"
        # Dictionary pages only where values repeat (ids, steps, flags): on float columns
        # they are tried, overflow and are dropped, which doubles the write time.
        dictionary = [f.name for f in table.schema if not _is_float(f.type)]
        pq.write_table(table, path, use_dictionary=dictionary)
        ids, returns = _episode_returns(table)
        with self._lock:
            self._episode_ids.append(ids)
            self._returns.append(returns)
            self._transitions += table.num_rows
        return path

    @property
    def episodes(self) -> int:
        return int(sum(len(ids) for ids in self._episode_ids))

    @property
    def transitions(self) -> int:
        return self._transitions

    def returns(self) -> np.ndarray:
        return np.concatenate(self._returns) if self._returns else np.zeros(0)

    def write_manifest(
        self,
        *,
        policy: str,
        policy_params: Mapping[str, Any],
        seed: int,
        provenance: Mapping[str, Any],
    ) -> DatasetManifest:
        """Check the parts, then write the manifest (last). Counts come from the data."""
        ids = np.concatenate(self._episode_ids) if self._episode_ids else np.zeros(0, np.int64)
        if len(ids) == 0:
            raise ContractError("refusing to write a dataset with no episodes")
        unique, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise ContractError(
                f"{int((counts > 1).sum())} episode id(s) appear in more than one part, "
                f"e.g. {int(unique[counts > 1][0])}"
            )
        returns = self.returns()
        fingerprint, digests = digest_files(data_files(self.staging))
        manifest = DatasetManifest(
            schema_version=SCHEMA_VERSION,
            env=self.env.shape,
            policy=policy,
            policy_params=dict(policy_params),
            seed=int(seed),
            episodes=len(ids),
            transitions=self._transitions,
            returns=ReturnStats(
                mean=float(returns.mean()),
                std=float(returns.std()),
                min=float(returns.min()),
                max=float(returns.max()),
            ),
            fingerprint=fingerprint,
            file_digests=digests,
            provenance=dict(provenance),
        )
        atomic_write_json(self.staging / MANIFEST, manifest.to_json())
        return manifest


def _is_float(t: pa.DataType) -> bool:
    return pa.types.is_floating(t) or (pa.types.is_fixed_size_list(t) and _is_float(t.value_type))


def _episode_returns(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Episode ids in the part and the float64 sum of each one's rewards."""
    ids = table["episode_id"].to_numpy()
    rewards = table["reward"].to_numpy().astype(np.float64)
    unique, inverse = np.unique(ids, return_inverse=True)
    return unique, np.bincount(inverse, weights=rewards, minlength=len(unique))


@contextlib.contextmanager
def open_dataset(
    out_dir: str | Path, env: EnvSpec, *, overwrite: bool = False
) -> Iterator[DatasetWriter]:
    """``with open_dataset(dir, env) as writer: writer.write_part(...); writer.write_manifest(...)``

    The directory appears (replacing an old one only with ``overwrite``) when the block
    ends without an exception and the manifest was written."""
    with atomic_directory(out_dir, overwrite=overwrite) as staging:
        writer = DatasetWriter(staging, env)
        yield writer
        if not (staging / MANIFEST).is_file():
            raise ContractError(
                "dataset block ended without write_manifest(): nothing was published"
            )
