"""Import external transition logs (e.g. from a real robot) from Parquet into a dataset.

External log schema (Parquet, one row per control step; names after ``--map``):

==================  ==========  ===============================================================
column              required    type and meaning
==================  ==========  ===============================================================
``episode_id``      yes         integer; rows of one episode share it
``step``            yes         integer; 0..n-1 within each episode (any row order)
``obs``             yes         list<float> of obs_dim values: the observation the action
                                was taken in; or obs_dim numeric columns (``obs=a+b+c``)
``action``          yes         list<float> of act_dim values (or act_dim numeric columns):
                                the action executed
``reward``          no          number; default 0
``terminated``      no          bool; default false
``truncated``       no          bool; default true on each episode's last step unless
                                terminated there
``expert_action``   no          like ``action``: a label that differs from the executed action
``seed``            no          integer reset seed; default -1 (unknown)
==================  ==========  ===============================================================

Floats may be float32 or float64 (stored as float32), lists may be fixed- or variable-size
(every row must then hold exactly the dimension's number of values); no nulls, NaN or Inf.
``--map obs=state,action=cmd`` maps schema names to the file's column names; a vector may
also be assembled from scalar columns: ``--map obs=cos_th+sin_th+th_dot``. A file that does
not fit gets one error listing every problem found.

CLI: ``python -m diffpol.rollout.importer [--format parquet] --env Pendulum-v1 --out DIR
[--map ...] FILE...`` (``--format lerobot DIR``: ``diffpol.rollout.lerobot``).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from diffpol.contracts import transition_schema
from diffpol.contracts.dataset import DatasetManifest
from diffpol.contracts.errors import ContractError
from diffpol.envs import EnvSpec, get_env_spec, known_env_ids
from diffpol.rollout.provenance import package_versions
from diffpol.rollout.sink import open_dataset

REQUIRED = ("episode_id", "step", "obs", "action")
OPTIONAL = ("reward", "terminated", "truncated", "expert_action", "seed")
_VECTORS = {"obs": "obs_dim", "action": "act_dim", "expert_action": "act_dim"}
_INTEGERS = ("episode_id", "step", "seed")
_BOOLS = ("terminated", "truncated")


class ImportSchemaError(ContractError):
    """An external log does not fit the import schema; ``problems`` lists every issue."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        listing = "\n".join(f"  - {p}" for p in problems)
        super().__init__(
            f"{source} does not fit the import schema ({len(problems)} problem(s)):\n{listing}"
        )


@dataclass(frozen=True)
class ColumnMapping:
    """Schema column -> source column(s); unmapped schema columns keep their names."""

    columns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def sources(self, name: str) -> tuple[str, ...]:
        return tuple(self.columns.get(name, (name,)))


def episode_starts(ids: np.ndarray) -> np.ndarray:
    """Where each episode begins in ``ids`` (rows grouped by episode)."""
    return np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]) if len(ids) else np.zeros(0, int)


def episode_step_problems(
    ids: np.ndarray, steps: np.ndarray, id_name: str, step_name: str
) -> list[str]:
    """A message unless ``steps`` run 0..n-1 in each episode (rows sorted by id, then step)."""
    starts = episode_starts(ids)
    expected = np.arange(len(ids)) - np.repeat(starts, np.diff(np.r_[starts, len(ids)]))
    bad = np.unique(ids[steps != expected])
    if not len(bad):
        return []
    return [
        f"{step_name} must run 0..n-1 without gaps or repeats in each episode; "
        f"{len(bad)} episode(s) do not, e.g. {id_name} {int(bad[0])}"
    ]


def parse_mapping(text: str | None) -> ColumnMapping:
    """``"obs=state,action=cmd"`` or ``"obs=a+b+c"`` -> ColumnMapping."""
    if not text:
        return ColumnMapping()
    columns: dict[str, tuple[str, ...]] = {}
    problems = []
    for item in text.split(","):
        name, sep, source = item.partition("=")
        name, source = name.strip(), source.strip()
        if not sep or not name or not source:
            problems.append(f"mapping item {item!r} is not NAME=COLUMN")
        elif name not in REQUIRED + OPTIONAL:
            problems.append(
                f"mapping names unknown column {name!r}; schema columns: {', '.join(REQUIRED + OPTIONAL)}"
            )
        elif name in columns:
            problems.append(f"mapping gives {name!r} twice")
        else:
            parts = tuple(p.strip() for p in source.split("+"))
            if len(parts) > 1 and name not in _VECTORS:
                problems.append(
                    f"only vector columns ({', '.join(_VECTORS)}) can join columns with '+'"
                )
            columns[name] = parts
    if problems:
        raise ValueError("invalid --map: " + "; ".join(problems))
    return ColumnMapping(columns)


def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_floating(t) or pa.types.is_integer(t)


def _convert(table: pa.Table, env: EnvSpec, mapping: ColumnMapping, source: str) -> pa.Table:
    """One file's rows in the Transition schema (episodes sorted, steps checked), or
    ImportSchemaError listing every problem."""
    problems: list[str] = []
    names = set(table.column_names)
    n = table.num_rows
    out: dict[str, np.ndarray | None] = {}

    def missing(name: str, sources: tuple[str, ...], required: bool) -> bool:
        absent = [s for s in sources if s not in names]
        if absent and (required or name in mapping.columns or len(absent) < len(sources)):
            problems.append(
                f"column {name!r}: source column(s) {', '.join(map(repr, absent))} not in file "
                f"(file has: {', '.join(table.column_names)})"
            )
        return bool(absent)

    for name in REQUIRED + OPTIONAL:
        required = name in REQUIRED
        sources = mapping.sources(name)
        if missing(name, sources, required):
            out[name] = None
            continue
        columns = [table.column(s) for s in sources]
        label = f"column {name!r}" + (f" (from {'+'.join(sources)})" if sources != (name,) else "")
        nulls = sum(c.null_count for c in columns)
        if nulls:
            problems.append(f"{label} has {nulls} null(s)")
            out[name] = None
            continue
        if name in _VECTORS:
            out[name] = _vector(columns, getattr(env, _VECTORS[name]), label, n, problems)
        elif name in _INTEGERS:
            if not pa.types.is_integer(columns[0].type):
                problems.append(f"{label} has type {columns[0].type}, expected an integer type")
                out[name] = None
            else:
                out[name] = columns[0].to_numpy().astype(np.int64)
        elif name in _BOOLS:
            if not pa.types.is_boolean(columns[0].type):
                problems.append(f"{label} has type {columns[0].type}, expected bool")
                out[name] = None
            else:
                out[name] = columns[0].to_numpy()
        else:  # reward
            if not _numeric(columns[0].type):
                problems.append(f"{label} has type {columns[0].type}, expected a number")
                out[name] = None
            else:
                out[name] = columns[0].to_numpy().astype(np.float32)
    for name in ("obs", "action", "expert_action", "reward"):
        values = out.get(name)
        if values is not None and not np.isfinite(values).all():
            problems.append(
                f"column {name!r} has {int((~np.isfinite(values)).sum())} NaN/Inf value(s)"
            )
    if out["episode_id"] is not None and out["step"] is not None and n:
        order = np.lexsort((out["step"], out["episode_id"]))
        ids, steps = out["episode_id"][order], out["step"][order]
        problems += episode_step_problems(ids, steps, "episode_id", "steps")
    if n == 0:
        problems.append("file has no rows")
    if problems:
        raise ImportSchemaError(source, problems)

    columns = {k: (v[order] if v is not None else None) for k, v in out.items()}
    last = np.r_[columns["episode_id"][1:] != columns["episode_id"][:-1], True]
    terminated = columns["terminated"] if columns["terminated"] is not None else np.zeros(n, bool)
    truncated = columns["truncated"] if columns["truncated"] is not None else (last & ~terminated)
    schema = transition_schema(env.obs_dim, env.act_dim)

    def vector(values: np.ndarray | None, dim: int) -> pa.Array:
        if values is None:
            return pa.nulls(n, pa.list_(pa.float32(), dim))
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), dim)

    arrays = {
        "episode_id": pa.array(columns["episode_id"]),
        "seed": pa.array(
            columns["seed"] if columns["seed"] is not None else np.full(n, -1, np.int64)
        ),
        "step": pa.array(columns["step"].astype(np.int32)),
        "obs": vector(columns["obs"], env.obs_dim),
        "action": vector(columns["action"], env.act_dim),
        "reward": pa.array(
            columns["reward"] if columns["reward"] is not None else np.zeros(n, np.float32)
        ),
        "terminated": pa.array(terminated),
        "truncated": pa.array(truncated),
        "expert_action": vector(columns["expert_action"], env.act_dim),
        # Imported rows carry no task name or per-step success flag.
        "task": pa.array([""] * n, pa.string()),
        "success": pa.nulls(n, pa.bool_()),
    }
    return pa.Table.from_arrays([arrays[f.name] for f in schema], schema=schema)


def _vector(columns: list, dim: int, label: str, n: int, problems: list[str]) -> np.ndarray | None:
    """[n, dim] float32 from one list column or ``dim`` numeric columns."""
    if len(columns) > 1:
        bad = [str(c.type) for c in columns if not _numeric(c.type)]
        if len(columns) != dim:
            problems.append(f"{label} joins {len(columns)} columns, expected {dim}")
        if bad:
            problems.append(f"{label} joins non-numeric column(s) of type {', '.join(bad)}")
        if bad or len(columns) != dim:
            return None
        return np.stack([c.to_numpy().astype(np.float32) for c in columns], axis=1)
    column = columns[0].combine_chunks() if isinstance(columns[0], pa.ChunkedArray) else columns[0]
    t = column.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        if dim == 1 and _numeric(t):  # a scalar column is a 1-d vector
            return column.to_numpy().astype(np.float32).reshape(n, 1)
        problems.append(f"{label} has type {t}, expected a list of {dim} floats")
        return None
    if not _numeric(t.value_type):
        problems.append(f"{label} has type {t}, expected a list of {dim} floats")
        return None
    if pa.types.is_fixed_size_list(t):
        widths = np.full(n, t.list_size)
    else:
        widths = np.diff(column.offsets.to_numpy())
    wrong = int((widths != dim).sum())
    if wrong:
        problems.append(f"{label}: {wrong} row(s) hold a number of values other than {dim}")
        return None
    if column.flatten().null_count:
        problems.append(f"{label} has null value(s) inside its lists")
        return None
    return column.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(n, dim)


def import_parquet(
    files: Sequence[str | Path],
    out_dir: str | Path,
    env_id: str,
    mapping: ColumnMapping | None = None,
    *,
    policy: str = "imported",
    episodes_per_part: int = 1000,
    overwrite: bool = False,
) -> DatasetManifest:
    """Convert external Parquet logs into a dataset directory. Every file is checked before
    anything is written; all problems of all files are reported together."""
    env = get_env_spec(env_id)
    mapping = mapping or ColumnMapping()
    if not files:
        raise ValueError("no input files given")
    tables, problems = [], []
    for path in map(Path, files):
        try:
            tables.append(_convert(pq.read_table(path), env, mapping, str(path)))
        except ImportSchemaError as exc:
            problems += [f"{path.name}: {p}" for p in exc.problems]
        except (OSError, pa.ArrowInvalid) as exc:
            problems.append(f"{path.name}: not a readable Parquet file ({exc})")
    if problems:
        raise ImportSchemaError(f"{len(files)} input file(s)", problems)
    table = pa.concat_tables(tables)
    ids = table["episode_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    if len(np.unique(ids[starts])) != len(starts):
        raise ImportSchemaError(
            "input files", ["the same episode_id appears in more than one file"]
        )
    with open_dataset(out_dir, env, overwrite=overwrite) as writer:
        bounds = np.r_[starts[::episodes_per_part], len(ids)]
        for part, (lo, hi) in enumerate(itertools.pairwise(bounds)):
            writer.write_part(part, table.slice(lo, hi - lo))
        has_label = table["expert_action"].null_count < table.num_rows
        manifest = writer.write_manifest(
            policy=policy,
            policy_params={
                "sources": [Path(f).name for f in files],
                "mapping": {k: "+".join(v) for k, v in mapping.columns.items()},
            },
            seed=-1,
            provenance={
                "source": "import",
                "label_column": "expert_action" if has_label else "action",
                "versions": package_versions(("pyarrow", "numpy")),
            },
        )
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="import",
        description="Import external data into a diffpol dataset: Parquet transition logs "
        "(--format parquet; schema: see the module doc or components/rollout/README.md) or a "
        "LeRobotDataset v3.0 directory (--format lerobot).",
    )
    parser.add_argument(
        "--format", choices=("parquet", "lerobot"), default="parquet", help="input format"
    )
    parser.add_argument(
        "files", nargs="+", type=Path, help="Parquet file(s), or one LeRobotDataset directory"
    )
    parser.add_argument(
        "--env",
        help=f"env id, one of {', '.join(known_env_ids())} (required for parquet; for lerobot "
        "the default is the env the dataset names)",
    )
    parser.add_argument("--out", required=True, type=Path, help="dataset directory to write")
    parser.add_argument(
        "--map", dest="mapping", help="parquet: column mapping, e.g. obs=state,action=cmd"
    )
    parser.add_argument(
        "--policy", default="imported", help="parquet: name recorded as the data policy"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    errors = []
    if args.env is not None:
        try:
            get_env_spec(args.env)
        except ValueError as exc:
            errors.append(str(exc))
    if args.format == "parquet":
        if args.env is None:
            errors.append("--env is required with --format parquet")
        try:
            mapping = parse_mapping(args.mapping)
        except ValueError as exc:
            errors.append(str(exc))
        errors += [f"input file {f} does not exist" for f in args.files if not f.is_file()]
    else:
        if len(args.files) != 1:
            errors.append("--format lerobot takes one dataset directory")
        elif not args.files[0].is_dir():
            errors.append(f"input directory {args.files[0]} does not exist")
        if args.mapping:
            errors.append("--map applies to --format parquet only")
    if args.out.exists() and not args.overwrite:
        errors.append(f"--out {args.out} exists; pass --overwrite to replace it")
    if errors:
        parser.error("; ".join(errors))
    try:
        if args.format == "parquet":
            manifest = import_parquet(
                args.files,
                args.out,
                args.env,
                mapping,
                policy=args.policy,
                overwrite=args.overwrite,
            )
        else:
            from diffpol.rollout.lerobot import import_lerobot

            manifest = import_lerobot(args.files[0], args.out, args.env, overwrite=args.overwrite)
    except ContractError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"imported {manifest.episodes} episodes, {manifest.transitions} transitions of "
        f"{manifest.env.env_id} into {args.out} (mean return {manifest.returns.mean:.2f})"
    )
    left_out = manifest.provenance.get("lerobot", {}).get("left_out")
    if left_out:
        print(f"left out (diffpol learns from state, not images): {', '.join(left_out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
