"""The preprocessed-samples artifact, what preprocess writes and the trainer reads:
``samples.json``, its validation, the Arrow schema of a sample row, and readers.

Layout of a preprocess output OUT::

    OUT/samples.json      SamplesInfo: shapes, env, counts, sources, config (written last)
    OUT/normalizer.json   diffpol.contracts.Normalizer
    OUT/train/*.parquet   rows in sample_schema(...)
    OUT/val/*.parquet     same; one empty file when the split has no episodes
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from diffpol.contracts.arrow import fixed_list_values
from diffpol.contracts.errors import ContractError
from diffpol.contracts.normalizer import Normalizer
from diffpol.contracts.shapes import ENV_SHAPE_KEYS, WINDOW_KEYS, EnvShape, Window

SAMPLES_VERSION = 2
SAMPLES_FILE = "samples.json"
NORMALIZER_FILE = "normalizer.json"
SPLITS = ("train", "val")
SAMPLE_COLUMNS = ("episode_id", "step", "obs", "action")


def sample_schema(n_obs_steps: int, horizon: int, obs_dim: int, act_dim: int) -> pa.Schema:
    """Arrow schema of one training sample (what train/ and val/ Parquet files hold)."""
    return pa.schema(
        [
            pa.field("episode_id", pa.int64(), nullable=False),
            pa.field("step", pa.int32(), nullable=False),
            pa.field("obs", pa.list_(pa.float32(), n_obs_steps * obs_dim), nullable=False),
            pa.field("action", pa.list_(pa.float32(), horizon * act_dim), nullable=False),
        ],
        metadata={
            b"diffpol.n_obs_steps": str(n_obs_steps).encode(),
            b"diffpol.horizon": str(horizon).encode(),
            b"diffpol.obs_dim": str(obs_dim).encode(),
            b"diffpol.act_dim": str(act_dim).encode(),
        },
    )


@dataclass(frozen=True)
class SplitInfo:
    rows: int
    episodes: int
    files: tuple[str, ...]  # relative to OUT


@dataclass(frozen=True)
class SamplesInfo:
    version: int
    env: EnvShape  # flat keys in samples.json, like window
    window: Window
    # "expert_action", "action", or "expert_action, else action" (per row) when mixed.
    label: str
    # Rows whose label came from each column.
    label_rows: dict[str, int]
    # Normaliser mode per part, e.g. {"obs": "standard", "action": "minmax"}.
    normalizer: dict[str, str]
    train: SplitInfo
    val: SplitInfo
    # One entry per input dataset: path, fingerprint, policy, seed, episodes, transitions.
    sources: tuple[dict[str, Any], ...]
    config: dict[str, Any] = field(default_factory=dict)
    shuffle: str = ""
    created_by: str = ""

    def split(self, name: str) -> SplitInfo:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}: use one of {', '.join(SPLITS)}")
        return getattr(self, name)

    @property
    def obs_width(self) -> int:
        return self.window.n_obs_steps * self.env.obs_dim

    @property
    def action_width(self) -> int:
        return self.window.horizon * self.env.act_dim

    def schema(self) -> pa.Schema:
        return sample_schema(
            self.window.n_obs_steps, self.window.horizon, self.env.obs_dim, self.env.act_dim
        )

    def to_json(self) -> dict[str, Any]:
        raw = asdict(self)
        del raw["env"], raw["window"]
        return {"version": self.version, **self.env.to_json(), **self.window.to_json(), **raw}

    @classmethod
    def from_json(cls, raw: Any) -> SamplesInfo:
        if not isinstance(raw, dict):
            raise ContractError("samples.json must hold a JSON object")
        version = raw.get("version")
        if version not in (1, SAMPLES_VERSION):
            raise ContractError(
                f"samples.json has version {version!r}; this reader supports 1 and "
                f"{SAMPLES_VERSION} (re-run preprocess, or upgrade diffpol-preprocess)"
            )
        if version == 1:  # v1 had no n_action_steps: its policies executed one action
            raw = {"n_action_steps": 1, **raw, "version": SAMPLES_VERSION}
        nested = {"env": ENV_SHAPE_KEYS, "window": WINDOW_KEYS}
        required = [
            n
            for n, f in cls.__dataclass_fields__.items()
            if f.default is MISSING and f.default_factory is MISSING and n not in nested
        ] + [key for keys in nested.values() for key in keys]
        missing = [n for n in required if n not in raw]
        if missing:
            raise ContractError(f"samples.json is missing field(s): {', '.join(missing)}")
        try:
            values = {n: raw[n] for n in cls.__dataclass_fields__ if n in raw}
            for name in SPLITS:
                split = raw[name]
                values[name] = SplitInfo(
                    int(split["rows"]), int(split["episodes"]), tuple(split["files"])
                )
            values["env"] = EnvShape.from_json(raw)
            values["window"] = Window.from_json(raw)
            values["sources"] = tuple(raw["sources"])
            info = cls(**values)
        except (KeyError, TypeError, ValueError) as exc:
            raise ContractError(f"samples.json is malformed: {exc!r}") from exc
        info._check()
        return info

    def _check(self) -> None:
        problems = []
        if self.train.rows < 1:
            problems.append("the train split is empty")
        for name in SPLITS:
            split = self.split(name)
            if split.rows < 0 or split.episodes < 0 or not split.files:
                problems.append(f"{name}: counts must be >= 0 and at least one file listed")
        if problems:
            raise ContractError("samples.json is inconsistent: " + "; ".join(problems))


@dataclass(frozen=True)
class Samples:
    """A loaded, validated preprocess output."""

    root: Path
    info: SamplesInfo
    normalizer: Normalizer

    def files(self, split: str) -> list[Path]:
        return [self.root / name for name in self.info.split(split).files]


def load_samples(out_dir: str | Path) -> Samples:
    """Read ``samples.json`` and ``normalizer.json`` of a preprocess output and check that
    they agree with each other and with the Parquet files they list (footers only)."""
    root = Path(out_dir)
    path = root / SAMPLES_FILE
    if not path.is_file():
        raise ContractError(
            f"{root} is not a complete preprocess output: {SAMPLES_FILE} is missing"
        )
    try:
        info = SamplesInfo.from_json(json.loads(path.read_text()))
    except json.JSONDecodeError as exc:
        raise ContractError(f"{path} is not valid JSON: {exc}") from exc
    normalizer = (
        Normalizer.load(root / NORMALIZER_FILE) if (root / NORMALIZER_FILE).is_file() else None
    )
    if normalizer is None:
        raise ContractError(f"{root}: {NORMALIZER_FILE} is missing")
    if normalizer.obs.dim != info.env.obs_dim or normalizer.action.dim != info.env.act_dim:
        raise ContractError(
            f"{root}: normalizer dims (obs {normalizer.obs.dim}, action {normalizer.action.dim}) "
            f"do not match samples.json (obs_dim {info.env.obs_dim}, act_dim {info.env.act_dim})"
        )
    if {"obs": normalizer.obs.mode, "action": normalizer.action.mode} != info.normalizer:
        raise ContractError(f"{root}: normalizer modes do not match samples.json")
    samples = Samples(root, info, normalizer)
    expected = info.schema()
    for split in SPLITS:
        rows = 0
        for file in samples.files(split):
            try:
                meta = pq.ParquetFile(file)
                schema, n = meta.schema_arrow, meta.metadata.num_rows
            except (OSError, pa.ArrowException) as exc:
                raise ContractError(
                    f"{file} (listed in {SAMPLES_FILE}) is unreadable: {exc}"
                ) from exc
            if not schema.remove_metadata().equals(expected.remove_metadata()):
                raise ContractError(
                    f"{file} has schema {schema.remove_metadata()}, expected {expected.remove_metadata()}"
                )
            rows += n
        if rows != info.split(split).rows:
            raise ContractError(
                f"{root}/{split}: files hold {rows} rows, samples.json says {info.split(split).rows}"
            )
    return samples


def sample_datasets(samples: Samples | str | Path):
    """``(train, val)`` Ray datasets of a preprocess output (``ray.data.read_parquet``).

    Rows keep the flattened layout: ``obs`` [B, To*obs_dim] and ``action`` [B, T*act_dim]
    (``sample_arrays`` for Arrow batches, ``unflatten`` for numpy ones).
    """
    import ray

    from diffpol.contracts.ray_data import data_context

    if not isinstance(samples, Samples):
        samples = load_samples(samples)
    # The V1 Parquet reader: V2 starts footer-reader actors, many times slower per read
    # on small inputs (benchmarks/RESULTS.md, "Preprocess").
    with data_context({"use_datasource_v2": False}):
        return tuple(
            ray.data.read_parquet([str(p) for p in samples.files(split)]) for split in SPLITS
        )


def sample_arrays(table: pa.Table) -> dict[str, np.ndarray]:
    """``obs`` [B, To*obs_dim] and ``action`` [B, T*act_dim] float32 arrays of an Arrow
    batch of samples, each column converted in one pass over its values (Ray's default
    tensor conversion of fixed-size list columns took 3-5x longer than this whole read of
    an epoch's 100k rows)."""
    return {
        name: fixed_list_values(table.column(name), table.schema.field(name).type.list_size)
        for name in ("obs", "action")
    }


def unflatten(batch: dict[str, Any], info: SamplesInfo) -> tuple[np.ndarray, np.ndarray]:
    """``obs`` [B, To, obs_dim] and ``action`` [B, T, act_dim] float32 from a batch of rows.

    Accepts 2-D arrays (torch-style batches), lists of rows (``Table.to_pydict()``) and the
    object arrays of per-row vectors that Ray's numpy batch format gives for fixed-size
    list columns.
    """

    def dense(values: Any, width: int) -> np.ndarray:
        array = np.asarray(values)
        if len(array) == 0:
            return np.zeros((0, width), np.float32)
        if array.dtype == object:
            array = np.stack(array)
        array = array.astype(np.float32, copy=False)
        if array.ndim != 2 or array.shape[1] != width:
            raise ContractError(f"expected a [B, {width}] batch column, got shape {array.shape}")
        return array

    obs = dense(batch["obs"], info.obs_width).reshape(-1, info.window.n_obs_steps, info.env.obs_dim)
    action = dense(batch["action"], info.action_width).reshape(
        -1, info.window.horizon, info.env.act_dim
    )
    return obs, action
