"""Write a transition dataset directory (``diffpol.contracts.dataset`` layout), atomically.

Parts are written into a hidden staging directory as they arrive; ``manifest.json`` is
written last, and only then does the staging directory become ``out_dir``
(``atomic_directory``). A run that dies part-way leaves no directory that looks complete.
"""

from __future__ import annotations

import contextlib
import hashlib
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
    FingerprintStream,
    ReturnStats,
    data_files,
    digest_files,
)
from diffpol.contracts.errors import ContractError
from diffpol.envs import EnvSpec

# Parts written ahead of an earlier one wait in memory for the fingerprint, up to this many
# bytes; past it the manifest reads the files back instead.
PENDING_BYTES = 256 << 20


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
        # The manifest's fingerprint, computed from the bytes as parts are written, in name
        # (= index) order; None once that is not possible (see _fingerprint_part).
        self._stream: FingerprintStream | None = FingerprintStream()
        self._next = 0
        self._pending: dict[int, tuple[str, pa.Buffer, str]] = {}
        self._pending_bytes = 0

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
        # they are tried, overflow and are dropped, which doubles the write time. Min/max
        # statistics likewise only there (row groups are found by id, not by float value):
        # float ones cost a tenth of the encoding and speed up no read.
        discrete = [f.name for f in table.schema if not _is_float(f.type)]
        # Encoded in memory, so the bytes are hashed here instead of read back for the manifest.
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, use_dictionary=discrete, write_statistics=discrete)
        data = sink.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        with open(path, "wb") as f:
            f.write(data)
        ids, returns = _episode_returns(table)
        with self._lock:
            self._episode_ids.append(ids)
            self._returns.append(returns)
            self._transitions += table.num_rows
            self._fingerprint_part(index, path.name, data, digest)
        return path

    def _fingerprint_part(self, index: int, name: str, data: pa.Buffer, digest: str) -> None:
        """Feed the fingerprint every part whose predecessors are all in (under the lock)."""
        if self._stream is None:
            return
        self._pending[index] = (name, data, digest)
        self._pending_bytes += data.size
        try:
            while self._next in self._pending:
                name, data, digest = self._pending.pop(self._next)
                self._pending_bytes -= data.size
                self._stream.add(name, [data], digest)
                self._next += 1
        except ValueError:  # names out of index order (index >= 100000): read back instead
            self._stream = None
        if self._stream is None or self._pending_bytes > PENDING_BYTES:
            self._stream, self._pending, self._pending_bytes = None, {}, 0

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
        names = [p.name for p in data_files(self.staging)]
        if self._stream is not None and not self._pending and list(self._stream.digests) == names:
            fingerprint, digests = self._stream.hexdigest(), dict(self._stream.digests)
        else:  # parts from index 0 up did not all arrive while they could be held
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
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else ids[:0]
    if (np.diff(ids[starts]) > 0).all():
        # Episode-major rows, ids ascending (collection and import write them so): no sort.
        unique = ids[starts]
        inverse = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(ids)]))
    else:
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
