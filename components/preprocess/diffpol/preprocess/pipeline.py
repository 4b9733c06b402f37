"""The preprocess pipeline: rollout datasets in, shuffled train/val samples out.

Stages (each a Ray Data execution; nothing row-sized reaches the driver):

1. statistics: read every input, validate blocks, reduce each block to partial moments and
   an episode index (``stats.py``); fit the normaliser and split episodes on the driver.
2. per split: read the inputs again (projected, only that split's episodes kept), tag each
   row with its episode's shuffle group, ``groupby(group).map_groups`` so each call holds
   whole episodes, build the windows vectorised and shuffle them inside the group, and
   ``write_parquet``. The group-by is needed anyway to bring each episode's rows together
   (Ray's Parquet blocks do not follow episode or file boundaries); grouping by a seeded
   random bucket of episodes instead of by episode makes that same shuffle do the mixing.

The output appears atomically: everything is written to a staging directory that is
renamed to OUT only after ``samples.json``, the last file, is written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
from ray.exceptions import RayTaskError

from diffpol.contracts.atomic import atomic_directory, atomic_write_json
from diffpol.contracts.errors import ContractError
from diffpol.contracts.normalizer import AffineNormalizer, Normalizer
from diffpol.contracts.ray_session import ray_session
from diffpol.contracts.samples import (
    NORMALIZER_FILE,
    SAMPLES_FILE,
    SAMPLES_VERSION,
    SPLITS,
    SamplesInfo,
    SplitInfo,
    sample_schema,
)
from diffpol.preprocess.config import PreprocessConfig
from diffpol.preprocess.ray_settings import pipeline_data_context
from diffpol.preprocess.sources import INPUT_COLUMNS, Sources, open_sources
from diffpol.preprocess.split import SplitPlan, split_episodes
from diffpol.preprocess.stats import DataStats, collect_stats
from diffpol.preprocess.windows import build_windows

logger = logging.getLogger(__name__)
T = TypeVar("T")
GROUP_COLUMN = "shuffle_group"


@dataclass(frozen=True)
class PreprocessResult:
    out_dir: Path
    info: SamplesInfo
    normalizer: Normalizer
    # Wall seconds per stage: open, stats, train, val, total.
    seconds: dict[str, float]


def preprocess(
    data: Sequence[str | Path] | Sources,
    out_dir: str | Path,
    config: PreprocessConfig | None = None,
    *,
    overwrite: bool = False,
) -> PreprocessResult:
    """Turn rollout datasets into training samples in ``out_dir`` (see the module doc).

    ``data`` is a list of dataset directories, or inputs already opened with
    ``open_sources`` (the CLI does that before starting Ray, to fail fast).

    Raises ContractError (a ValueError) for bad or incompatible inputs and FileExistsError
    when ``out_dir`` exists and ``overwrite`` is false. Uses the connected Ray cluster, or
    starts a local one for the call and shuts it down after it.
    """
    config = config or PreprocessConfig()
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"output {out_dir} already exists; pass overwrite to replace it")
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    if isinstance(data, Sources):
        sources = data
    else:
        sources = open_sources(data, verify_fingerprints=config.verify_fingerprints)
    seconds["open"] = time.perf_counter() - start
    logger.info(
        "%d dataset(s), %d transitions of %s; computing statistics",
        len(sources.items),
        sources.rows,
        sources.env.env_id,
    )
    with ray_session(), pipeline_data_context(progress=config.progress):
        stats = _ray_stage(seconds, "stats", collect_stats, sources)
        normalizer = stats.fit_normalizer(config)
        plans = split_episodes(
            stats.episodes.ids,
            stats.episodes.lengths,
            val_fraction=config.val_fraction,
            seed=config.seed,
            group_rows=config.shuffle_group_rows,
        )
        with atomic_directory(out_dir, overwrite=overwrite) as staging:
            splits = {}
            for index, name in enumerate(SPLITS):
                plan = plans[name]
                logger.info("writing %s: %d episodes, %d samples", name, plan.episodes, plan.rows)
                files = _ray_stage(
                    seconds,
                    name,
                    write_split,
                    sources,
                    plan,
                    normalizer,
                    config,
                    staging,
                    split_index=index,
                )
                splits[name] = SplitInfo(plan.rows, plan.episodes, files)
            normalizer.save(staging / NORMALIZER_FILE)
            info = _samples_info(sources, stats, normalizer, config, splits)
            atomic_write_json(staging / SAMPLES_FILE, info.to_json())
    seconds["total"] = time.perf_counter() - start
    logger.info("wrote %s in %.1f s", out_dir, seconds["total"])
    return PreprocessResult(out_dir, info, normalizer, seconds)


def split_samples(
    sources: Sources,
    plan: SplitPlan,
    normalizer: Normalizer,
    config: PreprocessConfig,
    *,
    split_index: int,
) -> ray.data.Dataset:
    """One split's samples, as a lazy Ray Dataset: read, tag each episode with its shuffle
    group, then build and shuffle the windows of one group at a time."""
    files = [str(p) for source in sources.items for p in source.files]
    ds = ray.data.read_parquet(files, columns=INPUT_COLUMNS)
    ds = ds.map_batches(
        tag_shuffle_groups,
        batch_format="pyarrow",
        batch_size=None,
        fn_kwargs={"ids": plan.ids, "groups": plan.groups},
    )
    return ds.groupby(GROUP_COLUMN).map_groups(
        samples_for_group,
        batch_format="pyarrow",
        fn_kwargs={
            "n_obs_steps": config.window.n_obs_steps,
            "horizon": config.window.horizon,
            "obs_normalizer": normalizer.obs,
            "action_normalizer": normalizer.action,
            "expected_lengths": (plan.ids, plan.lengths),
            "seed": (config.seed, split_index),
        },
    )


def write_split(
    sources: Sources,
    plan: SplitPlan,
    normalizer: Normalizer,
    config: PreprocessConfig,
    staging: Path,
    *,
    split_index: int,
) -> tuple[str, ...]:
    """Write one split's samples under ``staging/plan.name``; return the files, relative."""
    directory = staging / plan.name
    schema = sample_schema(
        config.window.n_obs_steps, config.window.horizon, sources.env.obs_dim, sources.env.act_dim
    )
    if plan.episodes == 0:
        # An empty split still gets one (empty) file, so readers see the schema.
        directory.mkdir(parents=True)
        pq.write_table(schema.empty_table(), directory / "empty.parquet")
    else:
        ds = split_samples(sources, plan, normalizer, config, split_index=split_index)
        # A minimum only: with a maximum as well, Ray cuts blocks into odd small tails.
        ds.write_parquet(str(directory), min_rows_per_file=config.rows_per_file)
    written = sorted(directory.glob("*.parquet"))
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in written)
    if rows != plan.rows:
        raise RuntimeError(f"{plan.name}: wrote {rows} samples, expected {plan.rows}")
    return tuple(f"{plan.name}/{p.name}" for p in written)


def tag_shuffle_groups(table: pa.Table, *, ids: np.ndarray, groups: np.ndarray) -> pa.Table:
    """Keep the rows of the split's episodes (``ids`` sorted) and add their shuffle group."""
    episode_id = table.column("episode_id").to_numpy()
    if len(ids) == 0:
        return table.slice(0, 0).append_column(GROUP_COLUMN, pa.array([], pa.int64()))
    pos = np.clip(np.searchsorted(ids, episode_id), 0, len(ids) - 1)
    keep = ids[pos] == episode_id
    table = table.filter(pa.array(keep))
    return table.append_column(GROUP_COLUMN, pa.array(groups[pos[keep]], pa.int64()))


def samples_for_group(
    table: pa.Table,
    *,
    n_obs_steps: int,
    horizon: int,
    obs_normalizer: AffineNormalizer,
    action_normalizer: AffineNormalizer,
    expected_lengths: tuple[np.ndarray, np.ndarray],
    seed: tuple[int, int],
) -> pa.Table:
    """Windows of all episodes in one shuffle group, in a seeded random row order."""
    samples = build_windows(
        table,
        n_obs_steps=n_obs_steps,
        horizon=horizon,
        obs_normalizer=obs_normalizer,
        action_normalizer=action_normalizer,
        expected_lengths=expected_lengths,
    )
    group = int(table.column(GROUP_COLUMN)[0].as_py())
    order = np.random.default_rng([*seed, group]).permutation(samples.num_rows)
    return samples.take(pa.array(order))


def _samples_info(
    sources: Sources,
    stats: DataStats,
    normalizer: Normalizer,
    config: PreprocessConfig,
    splits: dict[str, SplitInfo],
) -> SamplesInfo:
    from diffpol.preprocess import __version__

    expert_rows = stats.expert_label_rows
    action_rows = stats.rows - expert_rows
    label = (
        "expert_action"
        if action_rows == 0
        else "action"
        if expert_rows == 0
        else ("expert_action, else action")
    )
    manifest = sources.first
    return SamplesInfo(
        version=SAMPLES_VERSION,
        env=manifest.env,
        window=config.window,
        label=label,
        label_rows={"expert_action": expert_rows, "action": action_rows},
        normalizer={"obs": normalizer.obs.mode, "action": normalizer.action.mode},
        train=splits["train"],
        val=splits["val"],
        sources=tuple(s.describe() for s in sources.items),
        config=config.to_json(),
        shuffle=(
            "episodes in seeded random order, packed into groups of about "
            f"{config.shuffle_group_rows} rows; samples shuffled within each group"
        ),
        created_by=f"diffpol.preprocess {__version__}",
    )


def _ray_stage(
    seconds: dict[str, float],
    stage: str,
    fn: Callable[..., T],
    sources: Sources,
    *args: Any,
    **kwargs: Any,
) -> T:
    """Run ``fn(sources, ...)``, a Ray Data stage, timing it into ``seconds[stage]``.

    Data errors raised in Ray workers come back as a plain ContractError that names the
    problem (and, for unreadable Parquet, the file) instead of a remote traceback.
    """
    start = time.perf_counter()
    try:
        return fn(sources, *args, **kwargs)
    except Exception as exc:
        causes = list(_cause_chain(exc))
        # Ray's RayTaskError copies also pass isinstance checks; their text is a traceback.
        causes = [c for c in causes if not isinstance(c, RayTaskError)]
        contract = next((c for c in causes if isinstance(c, ContractError)), None)
        if contract is not None:
            raise ContractError(f"{stage}: {_first_line(contract)}") from exc
        io_error = next((c for c in causes if isinstance(c, (pa.ArrowException, OSError))), None)
        # An I/O error is bad input only if an input file is unreadable (not, say, a full disk).
        culprit = _first_unreadable(sources) if io_error is not None else None
        if culprit is not None:
            raise ContractError(
                f"{stage}: {culprit} cannot be read (corrupted?): {_first_line(io_error)}"
            ) from exc
        raise
    finally:
        seconds[stage] = time.perf_counter() - start


def _first_unreadable(sources: Sources) -> Path | None:
    """On the error path only: the first input file pyarrow cannot read, to name it."""
    for source in sources.items:
        for path in source.files:
            try:
                pq.read_table(path)
            except (pa.ArrowException, OSError):
                return path
    return None


def _cause_chain(exc: BaseException):
    """``exc`` and its causes, outermost first, through Ray's task-error wrappers."""
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        inner = getattr(current, "cause", None)
        current = inner if isinstance(inner, BaseException) else current.__cause__


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
