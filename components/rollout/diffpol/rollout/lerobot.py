"""LeRobotDataset v3.0, the field's dataset format, in and out of diffpol datasets.

A LeRobotDataset v3.0 directory::

    meta/info.json                          codebase_version "v3.0", fps, features, totals, splits
    meta/stats.json                         per feature: min, max, mean, std, count, q01..q99
    meta/tasks.parquet                      task strings (the pandas index) -> task_index
    meta/episodes/chunk-NNN/file-NNN.parquet  one row per episode: length, tasks, the
                                            [dataset_from_index, dataset_to_index) frame range,
                                            the data file holding it, per-episode stats
    data/chunk-NNN/file-NNN.parquet         one row per frame: the features, timestamp,
                                            frame_index, episode_index, index, task_index
    videos/...                              camera streams (not read: diffpol learns from state)

Import maps ``observation.state`` (then ``observation.environment_state`` when the env's
observation needs it) -> obs, ``action`` -> action, ``next.reward`` -> reward,
``next.done``/``next.truncated`` -> terminated/truncated; episodes come from
``episode_index``/``frame_index``; fps, feature names, tasks, the count of successful
episodes (``next.success``) and what was left out (images, videos) go into the manifest's
``provenance["lerobot"]``. Export writes the reverse, plus ``diffpol.episode_id``,
``diffpol.seed`` and ``diffpol.expert_action`` (LeRobot has no column for them), so a
diffpol -> LeRobot -> diffpol round trip is exact. Only pyarrow, numpy and json are used:
LeRobot's own library is not a dependency (its tests check both directions against it).
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from diffpol.contracts import transition_schema
from diffpol.contracts.arrow import fixed_list_values
from diffpol.contracts.atomic import atomic_directory, atomic_write_bytes
from diffpol.contracts.dataset import DatasetManifest, data_files, read_manifest
from diffpol.contracts.errors import ContractError
from diffpol.envs import EnvSpec, get_env_spec, known_env_ids
from diffpol.rollout.importer import episode_starts, episode_step_problems
from diffpol.rollout.provenance import package_versions
from diffpol.rollout.sink import open_dataset

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
# LeRobot's defaults: files per chunk directory and the size a data file is kept under.
CHUNKS_SIZE = 1000
DATA_FILE_SIZE_MB = 100
VIDEO_FILE_SIZE_MB = 200
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)

STATE = "observation.state"
ENV_STATE = "observation.environment_state"
ACTION = "action"
REWARD = "next.reward"
DONE = "next.done"
TRUNCATED = "next.truncated"
SUCCESS = "next.success"
# diffpol columns LeRobot has no name for.
EPISODE_ID = "diffpol.episode_id"
SEED = "diffpol.seed"
EXPERT_ACTION = "diffpol.expert_action"
FRAME_FEATURES = ("timestamp", "frame_index", "episode_index", "index", "task_index")
_VISUAL = ("image", "video")


class LeRobotFormatError(ContractError):
    """A directory is not a LeRobotDataset diffpol can read; ``problems`` lists every issue."""

    def __init__(self, source: str | Path, problems: Sequence[str]):
        self.problems = list(problems)
        listing = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(
            f"{source} is not a readable LeRobotDataset {CODEBASE_VERSION} "
            f"({len(self.problems)} problem(s)):\n{listing}"
        )


# --- reading ----------------------------------------------------------------------------


def read_info(root: str | Path) -> dict[str, Any]:
    """``meta/info.json`` of a v3.0 dataset; older or unknown layouts get an error that says
    which version was found and how to convert it."""
    root = Path(root)
    path = root / INFO_PATH
    if not root.is_dir():
        raise LeRobotFormatError(root, ["the directory does not exist"])
    if not path.is_file():
        legacy = (root / "meta" / "episodes.jsonl").is_file() or any(
            (root / "data").glob("chunk-*/episode_*.parquet")
        )
        hint = (
            "it has the v2.x layout (meta/episodes.jsonl, data/chunk-*/episode_*.parquet) "
            f"without meta/info.json; {_CONVERT}"
            if legacy
            else "meta/info.json is missing (is this the dataset's root directory?)"
        )
        raise LeRobotFormatError(root, [hint])
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LeRobotFormatError(root, [f"meta/info.json is not valid JSON: {exc}"]) from exc
    if not isinstance(info, dict):
        raise LeRobotFormatError(root, ["meta/info.json does not hold a JSON object"])
    version = info.get("codebase_version")
    if version != CODEBASE_VERSION:
        if isinstance(version, str) and version.startswith("v2."):
            message = f"codebase_version is {version!r} (the v2.x layout); {_CONVERT}"
        else:
            message = (
                f"unknown codebase_version {version!r}: diffpol reads {CODEBASE_VERSION!r} "
                "(a newer LeRobot format needs a newer diffpol)"
            )
        raise LeRobotFormatError(root, [message])
    problems = []
    if not isinstance(info.get("features"), dict) or not info["features"]:
        problems.append("meta/info.json has no 'features' object")
    fps = info.get("fps")
    if not isinstance(fps, int | float) or isinstance(fps, bool) or fps <= 0:
        problems.append(f"meta/info.json has fps {fps!r}, expected a positive number")
    if problems:
        raise LeRobotFormatError(root, problems)
    return info


_CONVERT = (
    "diffpol reads v3.0 only: convert it with LeRobot's "
    "`python -m lerobot.datasets.v30.convert_dataset_v21_to_v30 --repo-id=REPO_ID` "
    "(a v2.0 dataset first with lerobot.datasets.v21.convert_dataset_v20_to_v21)"
)


def _shape(feature: Mapping[str, Any]) -> tuple[int, ...] | None:
    shape = feature.get("shape")
    if not isinstance(shape, list | tuple) or not all(isinstance(d, int) and d >= 1 for d in shape):
        return None
    return tuple(shape)


def _values(
    column: pa.ChunkedArray, name: str, width: int, problems: list[str], dtype=np.float32
) -> np.ndarray | None:
    """A feature's rows as ``[n, width]`` (a scalar column when the shape is [1])."""
    if isinstance(column, pa.ChunkedArray):
        # One chunk per data file; combining copies, so a single chunk is used as it is.
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    t, n = column.type, len(column)
    if column.null_count:
        problems.append(f"feature {name!r} has {column.null_count} null row(s)")
        return None
    if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
        if pa.types.is_fixed_size_list(t):
            widths = np.array([t.list_size])
        else:
            widths = np.diff(column.offsets.to_numpy())
        if (widths != width).any():
            got = int(widths[widths != width][0])
            problems.append(
                f"feature {name!r}: meta/info.json gives {width} value(s) per frame, "
                f"the data holds {got} (shape mismatch)"
            )
            return None
        values = column.flatten()
    else:
        if width != 1:
            problems.append(
                f"feature {name!r}: meta/info.json gives {width} values per frame, "
                f"the data holds a scalar {t} (shape mismatch)"
            )
            return None
        values = column
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)) and not (
        dtype is bool and pa.types.is_boolean(values.type)
    ):
        problems.append(f"feature {name!r} holds {values.type}, expected numbers")
        return None
    return values.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(n, width)


def _distinct(values: np.ndarray) -> np.ndarray:
    """The distinct values of an integer array; indices in a small range are counted
    instead of sorted (np.unique sorts every row)."""
    if not len(values):
        return values
    low, high = int(values.min()), int(values.max())
    if high - low < 1 << 16:
        return np.flatnonzero(np.bincount(values - low)) + low
    return np.unique(values)


def _resolve_env(env_id: str | None, info: Mapping[str, Any], root: Path) -> EnvSpec:
    recorded = (
        (info.get("diffpol") or {}).get("env_id") if isinstance(info.get("diffpol"), dict) else None
    )
    robot_type = info.get("robot_type")
    candidate = env_id or recorded or (robot_type if robot_type in known_env_ids() else None)
    if candidate is None:
        raise LeRobotFormatError(
            root,
            [
                f"the dataset does not say which env it is for (robot_type {robot_type!r}): "
                f"pass --env, one of {', '.join(known_env_ids())}"
            ],
        )
    try:
        return get_env_spec(candidate)
    except ValueError as exc:
        raise LeRobotFormatError(root, [str(exc)]) from None


@dataclass(frozen=True)
class _Frames:
    """A LeRobotDataset's frames as diffpol columns, episode-major, plus what the manifest keeps."""

    table: pa.Table  # Transition schema
    lerobot: dict[str, Any]  # provenance["lerobot"]
    has_label: bool


def _read_tasks(root: Path, problems: list[str]) -> dict[int, str]:
    path = root / TASKS_PATH
    if not path.is_file():
        problems.append(f"{TASKS_PATH} is missing")
        return {}
    table = pq.read_table(path)
    strings = [
        n
        for n in table.column_names
        if pa.types.is_string(table.schema.field(n).type)
        or pa.types.is_large_string(table.schema.field(n).type)
    ]
    if "task_index" not in table.column_names or len(strings) != 1:
        problems.append(
            f"{TASKS_PATH} must hold a task_index column and one string column (the task), "
            f"has {', '.join(table.column_names)}"
        )
        return {}
    return dict(zip(table["task_index"].to_pylist(), table[strings[0]].to_pylist(), strict=True))


def _read_frames(root: Path, info: Mapping[str, Any], env: EnvSpec) -> _Frames:
    """Every check at once: all problems found are reported together."""
    problems: list[str] = []
    features: dict[str, dict] = info["features"]
    left_out = sorted(n for n, f in features.items() if f.get("dtype") in _VISUAL)
    tabular = {n: f for n, f in features.items() if f.get("dtype") not in _VISUAL}
    shapes = {}
    for name, feature in tabular.items():
        shape = _shape(feature)
        if shape is None:
            problems.append(
                f"feature {name!r} has shape {feature.get('shape')!r} in meta/info.json"
            )
        else:
            shapes[name] = math.prod(shape)
    for name in (STATE, ACTION, "episode_index", "frame_index"):
        if name not in tabular:
            problems.append(
                f"meta/info.json has no {name!r} feature (features: {', '.join(features)})"
            )
    obs_features = [STATE]
    if STATE in shapes and shapes[STATE] != env.obs_dim:
        if ENV_STATE in shapes and shapes[STATE] + shapes[ENV_STATE] == env.obs_dim:
            obs_features.append(ENV_STATE)
        else:
            env_part = f" + {ENV_STATE} [{shapes[ENV_STATE]}]" if ENV_STATE in shapes else ""
            problems.append(
                f"{STATE} [{shapes[STATE]}]{env_part} does not make {env.env_id}'s "
                f"observation of {env.obs_dim} values (shape mismatch)"
            )
    if ACTION in shapes and shapes[ACTION] != env.act_dim:
        problems.append(
            f"{ACTION} has {shapes[ACTION]} value(s) per frame, {env.env_id} takes "
            f"{env.act_dim} (shape mismatch)"
        )
    files = sorted((root / "data").glob("chunk-*/file-*.parquet"))
    if not files:
        problems.append("no data files (data/chunk-*/file-*.parquet)")
    if problems:
        raise LeRobotFormatError(root, problems)

    wanted = [
        n
        for n in (
            *obs_features,
            ACTION,
            REWARD,
            DONE,
            TRUNCATED,
            SUCCESS,
            EPISODE_ID,
            SEED,
            EXPERT_ACTION,
            "episode_index",
            "frame_index",
            "task_index",
        )
        if n in tabular
    ]
    tables = []
    for path in files:
        name = path.relative_to(root)
        try:
            parquet = pq.ParquetFile(path)
        except (OSError, pa.ArrowInvalid) as exc:
            problems.append(f"{name} is not a readable Parquet file ({exc})")
            continue
        missing = [n for n in tabular if n not in parquet.schema_arrow.names]
        if missing:
            problems.append(
                f"{name} lacks feature(s) named in meta/info.json: {', '.join(missing)}"
            )
            continue
        tables.append(parquet.read(columns=wanted))
    if problems:
        raise LeRobotFormatError(root, problems)
    table = pa.concat_tables(tables)
    n = table.num_rows
    cols = {
        name: _values(
            table[name],
            name,
            shapes[name],
            problems,
            bool
            if tabular[name].get("dtype") == "bool"
            else (
                np.int64
                if name in ("episode_index", "frame_index", "task_index", EPISODE_ID, SEED)
                else np.float32
            ),
        )
        for name in wanted
    }
    if problems:
        raise LeRobotFormatError(root, problems)
    episode_index = cols["episode_index"][:, 0]
    frame_index = cols["frame_index"][:, 0]
    next_episode = np.diff(episode_index)
    step_back = (next_episode < 0) | ((next_episode == 0) & (np.diff(frame_index) <= 0))
    if step_back.any():  # LeRobot writes frames in order; sort only when they are not
        order = np.lexsort((frame_index, episode_index))
        cols = {k: v[order] for k, v in cols.items()}
        episode_index, frame_index = cols["episode_index"][:, 0], cols["frame_index"][:, 0]
    starts = episode_starts(episode_index)
    lengths = np.diff(np.r_[starts, n])
    problems += episode_step_problems(episode_index, frame_index, "episode_index", "frame_index")
    if n == 0:
        problems.append("the data files hold no frames")
    for key, actual in (("total_frames", n), ("total_episodes", len(starts))):
        if key in info and info[key] != actual:
            problems.append(f"meta/info.json says {key} {info[key]}, the data holds {actual}")
    for name in (*obs_features, ACTION, REWARD, EXPERT_ACTION):
        if name in cols and cols[name] is not None and not np.isfinite(cols[name]).all():
            problems.append(
                f"feature {name!r} has {int((~np.isfinite(cols[name])).sum())} NaN/Inf value(s)"
            )
    tasks = _read_tasks(root, problems)
    task_index = cols["task_index"][:, 0] if "task_index" in cols else np.zeros(n, np.int64)
    # Indices within a range of known tasks (the usual case) need no look-up per row.
    low, high = (int(task_index.min()), int(task_index.max())) if n else (0, -1)
    if tasks and not (high - low < len(tasks) and all(i in tasks for i in range(low, high + 1))):
        unknown = sorted(set(_distinct(task_index).tolist()) - tasks.keys())
        if unknown:
            problems.append(f"task_index value(s) {unknown[:5]} are not in {TASKS_PATH}")
    episodes_meta = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if episodes_meta:
        meta = pa.concat_tables(
            [pq.ParquetFile(p).read(columns=["episode_index", "length"]) for p in episodes_meta]
        )
        recorded = dict(
            zip(meta["episode_index"].to_pylist(), meta["length"].to_pylist(), strict=True)
        )
        actual = dict(zip(episode_index[starts].tolist(), lengths.tolist(), strict=True))
        if recorded != actual:
            diff = sorted(
                k for k in recorded.keys() | actual.keys() if recorded.get(k) != actual.get(k)
            )
            problems.append(
                f"meta/episodes disagrees with the data on {len(diff)} episode(s), e.g. "
                f"episode_index {diff[0]}: length {recorded.get(diff[0])} in meta/episodes, "
                f"{actual.get(diff[0])} frames in the data"
            )
    if problems:
        raise LeRobotFormatError(root, problems)

    last = np.zeros(n, bool)
    last[np.r_[starts[1:] - 1, n - 1]] = True
    done = cols[DONE][:, 0] if DONE in cols else last.copy()
    if TRUNCATED in cols:
        truncated = cols[TRUNCATED][:, 0]
        terminated = done & ~truncated
    else:
        # No flag says why an episode ended: at the env's time limit it was truncated.
        at_limit = np.repeat(lengths >= env.max_episode_steps, lengths)
        truncated, terminated = done & at_limit, done & ~at_limit
    obs = np.concatenate([cols[f] for f in obs_features], axis=1)
    episode_ids = cols[EPISODE_ID][:, 0] if EPISODE_ID in cols else episode_index
    schema = transition_schema(env.obs_dim, env.act_dim)

    def vector(values: np.ndarray) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])

    arrays = {
        "episode_id": pa.array(episode_ids),
        "seed": pa.array(cols[SEED][:, 0] if SEED in cols else np.full(n, -1, np.int64)),
        "step": pa.array(frame_index.astype(np.int32)),
        "obs": vector(obs),
        "action": vector(cols[ACTION]),
        "reward": pa.array(cols[REWARD][:, 0] if REWARD in cols else np.zeros(n, np.float32)),
        "terminated": pa.array(terminated),
        "truncated": pa.array(truncated),
        "expert_action": vector(cols[EXPERT_ACTION])
        if EXPERT_ACTION in cols
        else pa.nulls(n, pa.list_(pa.float32(), env.act_dim)),
        # LeRobot's task strings are free text, not diffpol task names; no success flag.
        "task": pa.repeat(pa.scalar("", pa.string()), n),
        "success": pa.nulls(n, pa.bool_()),
    }
    out = pa.Table.from_arrays([arrays[f.name] for f in schema], schema=schema)
    episode_tasks = task_index[starts]
    task_names = [tasks[i] for i in sorted(tasks)] if tasks else []
    lerobot = {
        "codebase_version": info["codebase_version"],
        "fps": info["fps"],
        "robot_type": info.get("robot_type"),
        "obs_features": [[f, shapes[f]] for f in obs_features],
        "feature_names": {k: tabular[k].get("names") for k in (*obs_features, ACTION)},
        "tasks": task_names,
        # Task index per episode (each episode's first frame); omitted when there is one task.
        "episode_tasks": episode_tasks.tolist() if len(task_names) > 1 else None,
        "left_out": left_out,
        "success_episodes": int(np.logical_or.reduceat(cols[SUCCESS][:, 0], starts).sum())
        if SUCCESS in cols
        else None,
    }
    return _Frames(out, lerobot, EXPERT_ACTION in cols)


def import_lerobot(
    src: str | Path,
    out_dir: str | Path,
    env_id: str | None = None,
    *,
    overwrite: bool = False,
    episodes_per_part: int = 1000,
) -> DatasetManifest:
    """Import a LeRobotDataset v3.0 directory as a diffpol dataset (written atomically).

    The env is ``env_id``, else the one a diffpol export recorded, else ``robot_type`` when
    it is an env id. Everything is checked before anything is written."""
    root = Path(src)
    info = read_info(root)
    env = _resolve_env(env_id, info, root)
    frames = _read_frames(root, info, env)
    table = frames.table
    ids = table["episode_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    if len(np.unique(ids[starts])) != len(starts):
        raise LeRobotFormatError(root, [f"{EPISODE_ID} repeats across episodes"])
    with open_dataset(out_dir, env, overwrite=overwrite) as writer:
        bounds = np.r_[starts[::episodes_per_part], len(ids)]
        parts = list(enumerate(itertools.pairwise(bounds)))
        # Encoding Parquet is most of an import's time and releases the GIL.
        with ThreadPoolExecutor(min(len(parts), os.cpu_count() or 1)) as pool:
            list(
                pool.map(
                    lambda p: writer.write_part(p[0], table.slice(p[1][0], p[1][1] - p[1][0])),
                    parts,
                )
            )
        recorded = info.get("diffpol") if isinstance(info.get("diffpol"), dict) else {}
        manifest = writer.write_manifest(
            policy=str(recorded.get("policy", "lerobot")),
            policy_params={"source": root.resolve().name, "format": "lerobot"},
            seed=int(recorded.get("seed", -1)),
            provenance={
                "source": "lerobot",
                "label_column": "expert_action" if frames.has_label else "action",
                "versions": package_versions(("pyarrow", "numpy")),
                "lerobot": frames.lerobot,
            },
        )
    return manifest


# --- writing ----------------------------------------------------------------------------


def _segment_stats(values: np.ndarray, starts: np.ndarray, kind: str) -> dict[str, np.ndarray]:
    """LeRobot's per-feature statistics of each segment ``[starts[i], starts[i+1])`` of
    ``values [n, w]``: min, max, mean, std (population), count and exact quantiles
    (linear interpolation) as ``[segments, w]`` arrays (count ``[segments, 1]``)."""
    n = len(values)
    counts = np.diff(np.r_[starts, n])
    v = values.astype(np.float64)
    mean = np.add.reduceat(v, starts, axis=0) / counts[:, None]
    centred = v - np.repeat(mean, counts, axis=0)
    std = np.sqrt(np.add.reduceat(centred * centred, starts, axis=0) / counts[:, None])
    stats: dict[str, np.ndarray] = {
        "min": np.minimum.reduceat(values, starts, axis=0),
        "max": np.maximum.reduceat(values, starts, axis=0),
        "mean": mean,
        "std": std,
        "count": counts[:, None].astype(np.int64),
    }
    segment = np.repeat(np.arange(len(starts)), counts)
    ordered = np.empty_like(v)
    for j in range(v.shape[1]):
        ordered[:, j] = v[np.lexsort((v[:, j], segment)), j]
    for q in QUANTILES:
        pos = starts + q * (counts - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, starts + counts - 1)
        frac = (pos - lo)[:, None]
        stats[f"q{round(q * 100):02d}"] = ordered[lo] * (1 - frac) + ordered[hi] * frac
    if kind == "bool":
        stats["min"], stats["max"] = stats["min"].astype(bool), stats["max"].astype(bool)
    return stats


def _hf_feature(dtype: str, width: int, shape: tuple[int, ...]) -> dict[str, Any]:
    value = {"dtype": dtype, "_type": "Value"}
    return value if shape == (1,) else {"feature": value, "length": width, "_type": "List"}


def _column(values: np.ndarray, shape: tuple[int, ...]) -> pa.Array:
    if shape == (1,):
        return pa.array(values.reshape(-1))
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def _pandas_metadata(columns: Sequence[tuple[str, str]], index: str) -> bytes:
    """The ``pandas`` schema metadata that makes ``pd.read_parquet`` restore ``index``."""
    return json.dumps(
        {
            "index_columns": [index],
            "column_indexes": [],
            "columns": [
                {
                    "name": None if c == index else c,
                    "field_name": c,
                    "pandas_type": t,
                    "numpy_type": "object" if t == "unicode" else t,
                    "metadata": None,
                }
                for c, t in columns
            ],
            "attributes": {},
            "creator": {"library": "pyarrow", "version": pa.__version__},
            "pandas_version": "2.0.0",
        }
    ).encode()


def export_lerobot(
    dataset_dir: str | Path,
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    fps: int | None = None,
    task: str | None = None,
    robot_type: str | None = None,
) -> dict[str, Any]:
    """Write a diffpol dataset as a LeRobotDataset v3.0 directory (atomically); returns its
    ``info.json``. ``fps``, the task and ``robot_type`` default to what an import recorded,
    else the env's control rate, the env id and the env id."""
    manifest = read_manifest(dataset_dir)
    out = Path(out_dir)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty; pass --overwrite to replace it")
    recorded = manifest.provenance.get("lerobot") or {}
    try:
        env: EnvSpec | None = get_env_spec(manifest.env.env_id)
    except ValueError:
        env = None
    fps = fps or recorded.get("fps") or (env.control_fps if env else 0)
    if not fps or fps <= 0:
        raise ContractError(f"{manifest.env.env_id} has no known control rate: pass --fps")
    table = pa.concat_tables([pq.read_table(p) for p in data_files(dataset_dir)])
    n = table.num_rows
    ids = table["episode_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    if len(np.unique(ids[starts])) != len(starts):
        raise ContractError(f"{dataset_dir}: rows are not grouped by episode")
    lengths = np.diff(np.r_[starts, n])
    episode_index = np.repeat(np.arange(len(starts)), lengths)
    frame_index = table["step"].to_numpy().astype(np.int64)

    if task is not None:
        tasks, episode_tasks = [task], np.zeros(len(starts), np.int64)
    elif recorded.get("tasks"):
        tasks = list(recorded["tasks"])
        per_episode = recorded.get("episode_tasks")
        episode_tasks = (
            np.asarray(per_episode, np.int64)
            if per_episode is not None and len(per_episode) == len(starts)
            else np.zeros(len(starts), np.int64)
        )
    else:
        tasks, episode_tasks = [manifest.env.env_id], np.zeros(len(starts), np.int64)

    obs = fixed_list_values(table["obs"], manifest.env.obs_dim)
    action = fixed_list_values(table["action"], manifest.env.act_dim)
    obs_features = recorded.get("obs_features") or [[STATE, manifest.env.obs_dim]]
    if sum(w for _, w in obs_features) != manifest.env.obs_dim:
        obs_features = [[STATE, manifest.env.obs_dim]]
    names = recorded.get("feature_names") or {}
    terminated = table["terminated"].to_numpy(zero_copy_only=False)
    truncated = table["truncated"].to_numpy(zero_copy_only=False)
    # (name, dtype, shape, [n, width] values, names)
    columns: list[tuple[str, str, tuple[int, ...], np.ndarray, Any]] = []
    offset = 0
    for name, width in obs_features:
        default = list(env.obs_names) if env and len(obs_features) == 1 and env.obs_names else None
        columns.append(
            (name, "float32", (width,), obs[:, offset : offset + width], names.get(name, default))
        )
        offset += width
    act_names = names.get(ACTION, list(env.act_names) if env and env.act_names else None)
    columns += [
        (ACTION, "float32", (manifest.env.act_dim,), action, act_names),
        (REWARD, "float32", (1,), table["reward"].to_numpy().reshape(n, 1), None),
        (DONE, "bool", (1,), (terminated | truncated).reshape(n, 1), None),
        (TRUNCATED, "bool", (1,), truncated.reshape(n, 1), None),
        (EPISODE_ID, "int64", (1,), ids.reshape(n, 1), None),
        (SEED, "int64", (1,), table["seed"].to_numpy().reshape(n, 1), None),
    ]
    if table["expert_action"].null_count == 0:
        columns.append(
            (
                EXPERT_ACTION,
                "float32",
                (manifest.env.act_dim,),
                fixed_list_values(table["expert_action"], manifest.env.act_dim),
                act_names,
            )
        )
    elif table["expert_action"].null_count != n:
        raise ContractError(f"{dataset_dir}: expert_action is set on some rows only")
    columns += [
        ("timestamp", "float32", (1,), (frame_index / fps).astype(np.float32).reshape(n, 1), None),
        ("frame_index", "int64", (1,), frame_index.reshape(n, 1), None),
        ("episode_index", "int64", (1,), episode_index.reshape(n, 1), None),
        ("index", "int64", (1,), np.arange(n, dtype=np.int64).reshape(n, 1), None),
        ("task_index", "int64", (1,), np.repeat(episode_tasks, lengths).reshape(n, 1), None),
    ]
    features = {
        name: {"dtype": dtype, "shape": list(shape), "names": feature_names}
        for name, dtype, shape, _, feature_names in columns
    }
    info = {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type or recorded.get("robot_type") or manifest.env.env_id,
        "total_episodes": len(starts),
        "total_frames": n,
        "total_tasks": len(tasks),
        "chunks_size": CHUNKS_SIZE,
        "data_files_size_in_mb": DATA_FILE_SIZE_MB,
        "video_files_size_in_mb": VIDEO_FILE_SIZE_MB,
        "fps": int(fps),
        "splits": {"train": f"0:{len(starts)}"},
        "data_path": DATA_PATH,
        "video_path": None,
        "features": features,
        # Read back by diffpol's import (LeRobot ignores keys it does not know).
        "diffpol": {
            "env_id": manifest.env.env_id,
            "policy": manifest.policy,
            "seed": manifest.seed,
            "dataset_fingerprint": manifest.fingerprint,
        },
    }
    hf_metadata = json.dumps(
        {"info": {"features": {c[0]: _hf_feature(c[1], c[3].shape[1], c[2]) for c in columns}}}
    ).encode()
    kinds = {name: dtype for name, dtype, *_ in columns}

    # Whole episodes per data file, each file under LeRobot's size limit.
    row_bytes = sum(c[3].shape[1] * c[3].dtype.itemsize for c in columns)
    per_file = max(1, DATA_FILE_SIZE_MB * 2**20 // max(row_bytes, 1))
    file_of_episode = np.zeros(len(starts), np.int64)
    file_number, rows_in_file = 0, 0
    for e, length in enumerate(lengths):
        if rows_in_file and rows_in_file + length > per_file:
            file_number, rows_in_file = file_number + 1, 0
        file_of_episode[e] = file_number
        rows_in_file += length
    chunk_of_file = lambda f: (f // CHUNKS_SIZE, f % CHUNKS_SIZE)  # noqa: E731

    with atomic_directory(out, overwrite=True) as staging:
        for f in range(int(file_of_episode[-1]) + 1):
            episodes = np.flatnonzero(file_of_episode == f)
            lo, hi = int(starts[episodes[0]]), int(starts[episodes[-1]] + lengths[episodes[-1]])
            chunk, index = chunk_of_file(f)
            path = staging / DATA_PATH.format(chunk_index=chunk, file_index=index)
            path.parent.mkdir(parents=True, exist_ok=True)
            data = pa.table(
                {name: _column(values[lo:hi], shape) for name, _, shape, values, _ in columns}
            )
            pq.write_table(data.replace_schema_metadata({b"huggingface": hf_metadata}), path)

        episode_stats = {
            name: _segment_stats(values, starts, kinds[name]) for name, _, _, values, _ in columns
        }
        chunks = np.array([chunk_of_file(f) for f in file_of_episode]).reshape(-1, 2)
        episodes_table: dict[str, Any] = {
            "episode_index": pa.array(np.arange(len(starts), dtype=np.int64)),
            "tasks": pa.array([[tasks[t]] for t in episode_tasks], pa.list_(pa.string())),
            "length": pa.array(lengths.astype(np.int64)),
            "data/chunk_index": pa.array(chunks[:, 0].astype(np.int64)),
            "data/file_index": pa.array(chunks[:, 1].astype(np.int64)),
            "dataset_from_index": pa.array(starts.astype(np.int64)),
            "dataset_to_index": pa.array((starts + lengths).astype(np.int64)),
        }
        for name, stats in episode_stats.items():
            for stat, values in stats.items():
                episodes_table[f"stats/{name}/{stat}"] = pa.array(values.tolist())
        episodes_table["meta/episodes/chunk_index"] = pa.array(np.zeros(len(starts), np.int64))
        episodes_table["meta/episodes/file_index"] = pa.array(np.zeros(len(starts), np.int64))
        path = staging / EPISODES_PATH.format(chunk_index=0, file_index=0)
        path.parent.mkdir(parents=True)
        pq.write_table(pa.table(episodes_table), path)

        tasks_table = pa.table(
            {
                "task_index": pa.array(np.arange(len(tasks), dtype=np.int64)),
                "__index_level_0__": pa.array(tasks, pa.large_string()),
            }
        ).replace_schema_metadata(
            {
                b"pandas": _pandas_metadata(
                    [("task_index", "int64"), ("__index_level_0__", "unicode")], "__index_level_0__"
                )
            }
        )
        pq.write_table(tasks_table, staging / TASKS_PATH)
        whole = np.zeros(1, np.int64)
        stats = {
            name: {k: v[0].tolist() for k, v in _segment_stats(values, whole, kinds[name]).items()}
            for name, _, _, values, _ in columns
        }
        atomic_write_bytes(staging / STATS_PATH, _json(stats))
        atomic_write_bytes(staging / INFO_PATH, _json(info))
    return info


def _json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=4, ensure_ascii=False) + "\n").encode()


def is_lerobot_dataset(path: str | Path) -> bool:
    """Whether ``path`` looks like a LeRobotDataset (of any version) rather than a diffpol one."""
    root = Path(path)
    return (root / INFO_PATH).is_file() or (root / "meta" / "episodes.jsonl").is_file()
