"""Opening the input datasets: manifests verified, files readable, all inputs compatible.

Everything checked here is cheap (manifests, Parquet footers, optionally one hash pass)
and happens on the driver before any Ray work, so bad input fails fast with a message
that names the dataset and file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from diffpol.contracts import validate_batch
from diffpol.contracts.dataset import DatasetManifest, data_files, read_manifest
from diffpol.contracts.errors import ContractError
from diffpol.contracts.shapes import ENV_SHAPE_KEYS, EnvShape

# Columns the pipeline reads; the rest of a Transition (reward, flags, seed) is not needed.
INPUT_COLUMNS = ["episode_id", "step", "obs", "action", "expert_action"]


@dataclass(frozen=True)
class Source:
    """One verified input dataset."""

    root: Path
    manifest: DatasetManifest
    files: tuple[Path, ...]
    rows: int  # from the Parquet footers

    def describe(self) -> dict:
        m = self.manifest
        return {
            "path": str(self.root),
            "fingerprint": m.fingerprint,
            "policy": m.policy,
            "seed": m.seed,
            "episodes": m.episodes,
            "transitions": m.transitions,
        }


@dataclass(frozen=True)
class Sources:
    """The verified inputs of one run; they share the env and its dimensions."""

    items: tuple[Source, ...]

    @property
    def first(self) -> DatasetManifest:
        return self.items[0].manifest

    @property
    def env(self) -> EnvShape:
        return self.first.env

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.items)


def open_sources(data_dirs: Sequence[str | Path], *, verify_fingerprints: bool = True) -> Sources:
    """Read and check every dataset; raise ContractError naming the first problem found."""
    if not data_dirs:
        raise ContractError("no input dataset given: pass at least one dataset directory")
    roots = [Path(d) for d in data_dirs]
    seen: dict[Path, Path] = {}
    for root in roots:
        if not root.is_dir():
            raise ContractError(f"input dataset {root} does not exist or is not a directory")
        resolved = root.resolve()
        if resolved in seen:
            raise ContractError(f"input dataset {root} is given twice (also as {seen[resolved]})")
        seen[resolved] = root
    items = tuple(_open_one(root, verify_fingerprints) for root in roots)
    _check_compatible(items)
    by_fingerprint: dict[str, Path] = {}
    for item in items:
        other = by_fingerprint.setdefault(item.manifest.fingerprint, item.root)
        if other != item.root and item.files:
            raise ContractError(
                f"datasets {other} and {item.root} hold identical data (same fingerprint): "
                "passing both would count every episode twice"
            )
    if sum(s.rows for s in items) == 0:
        raise ContractError("the input datasets hold no transitions")
    return Sources(items)


def _open_one(root: Path, verify_fingerprints: bool) -> Source:
    manifest = read_manifest(root, verify=verify_fingerprints)
    files = tuple(data_files(root))
    rows = 0
    for path in files:
        rows += _check_file(path, manifest)
    if rows != manifest.transitions:
        raise ContractError(
            f"{root}: manifest says {manifest.transitions} transitions but the data files "
            f"hold {rows} rows"
        )
    return Source(root=root, manifest=manifest, files=files, rows=rows)


def _check_file(path: Path, manifest: DatasetManifest) -> int:
    """Check one Parquet file's footer and schema; return its row count."""
    try:
        parquet = pq.ParquetFile(path)
        schema, rows = parquet.schema_arrow, parquet.metadata.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise ContractError(
            f"{path} is not a readable Parquet file (truncated or corrupted?): {exc}"
        ) from exc
    try:
        validate_batch(schema.empty_table(), manifest.env.obs_dim, manifest.env.act_dim)
    except ContractError as exc:
        raise ContractError(f"{path}: {exc}") from exc
    return rows


def _check_compatible(items: Sequence[Source]) -> None:
    first = items[0]
    for item in items[1:]:
        a, b = first.manifest, item.manifest
        diffs = [
            f"{name} {getattr(a.env, name)!r} != {getattr(b.env, name)!r}"
            for name in ENV_SHAPE_KEYS
            if getattr(a.env, name) != getattr(b.env, name)
        ]
        if diffs:
            raise ContractError(
                f"datasets {first.root} and {item.root} cannot be combined: " + "; ".join(diffs)
            )
