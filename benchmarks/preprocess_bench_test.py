"""Preprocess throughput and the shuffle alternatives, measured side by side in one run.

    DIFFPOL_BENCH_SCALE=1.0 ./pants test benchmarks/preprocess_bench_test.py -- \
        --benchmark-only --benchmark-columns=min,mean,max,rounds

Scale 1.0 is ~100k transitions (500 episodes of 200 steps, 25 part files); CI runs a
small scale. Each shuffle variant goes from the input Parquet to written samples, so the
numbers compare whole "split" stages; ``extra_info`` records how well each one mixes
episodes (distinct episodes per 256-row batch, read back in file order; and the share of
neighbouring rows from the same episode). The side-by-side table, with time ratios to the
chosen variant, is printed and written to DIFFPOL_BENCH_OUT/preprocess_shuffle.md when
that variable is set.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray

from diffpol.contracts.ray_data import data_context
from diffpol.preprocess import PreprocessConfig, preprocess
from diffpol.preprocess.pipeline import split_samples
from diffpol.preprocess.ray_settings import pipeline_data_context
from diffpol.preprocess.sources import INPUT_COLUMNS, open_sources
from diffpol.preprocess.split import split_episodes
from diffpol.preprocess.stats import collect_stats
from diffpol.preprocess.synthetic import write_synthetic_dataset
from diffpol.preprocess.windows import build_windows

SCALE = float(os.environ.get("DIFFPOL_BENCH_SCALE", "1.0"))
EPISODE_STEPS = 200
EPISODES = max(4, round(500 * SCALE))
CONFIG = PreprocessConfig(val_fraction=0.0, progress=False)
BATCH = 256


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench") / "data"
    write_synthetic_dataset(root, [EPISODE_STEPS] * EPISODES, episodes_per_file=20)
    return root


@pytest.fixture
def fresh_dir(tmp_path):
    counter = iter(range(10**6))

    def make() -> Path:
        path = tmp_path / f"out{next(counter)}"
        shutil.rmtree(path, ignore_errors=True)
        return path

    return make


def test_preprocess_throughput(benchmark, ray_local, dataset, fresh_dir):
    rows = EPISODES * EPISODE_STEPS
    preprocess([dataset], fresh_dir(), CONFIG)  # warm the Ray workers
    results = []

    def run():
        results.append(preprocess([dataset], fresh_dir(), PreprocessConfig(progress=False)))

    benchmark.pedantic(run, rounds=3, iterations=1)
    # Every timed run wrote every transition as one sample (To/T windows are padded).
    for result in results:
        assert result.info.train.rows + result.info.val.rows == rows
    # From the pipeline's own timer: benchmark.stats is None under --benchmark-disable.
    mean_s = float(np.mean([r.seconds["total"] for r in results]))
    benchmark.extra_info["rows"] = rows
    benchmark.extra_info["rows_per_s_mean"] = round(rows / mean_s)
    benchmark.extra_info["stage_seconds_last"] = {
        k: round(v, 3) for k, v in results[-1].seconds.items()
    }


# --- shuffle alternatives -------------------------------------------------------------


def _plan(dataset: Path):
    sources = open_sources([dataset])
    with pipeline_data_context(progress=False):
        stats = collect_stats(sources)
    plan = split_episodes(
        stats.episodes.ids,
        stats.episodes.lengths,
        val_fraction=0.0,
        seed=0,
        group_rows=CONFIG.shuffle_group_rows,
    )["train"]
    return sources, stats.fit_normalizer(CONFIG), plan


def _episode_windows(sources, normalizer, plan) -> ray.data.Dataset:
    """Windows built per episode (groupby episode_id), in episode order: no shuffle."""
    files = [str(p) for s in sources.items for p in s.files]
    return (
        ray.data.read_parquet(files, columns=INPUT_COLUMNS)
        .groupby("episode_id")
        .map_groups(
            build_windows,
            batch_format="pyarrow",
            fn_kwargs={
                "n_obs_steps": CONFIG.window.n_obs_steps,
                "horizon": CONFIG.window.horizon,
                "obs_normalizer": normalizer.obs,
                "action_normalizer": normalizer.action,
                "expected_lengths": (plan.ids, plan.lengths),
            },
        )
    )


def _variant(name: str, sources, normalizer, plan) -> ray.data.Dataset:
    if name == "episode_groups (chosen)":
        return split_samples(sources, plan, normalizer, CONFIG, split_index=0)
    ds = _episode_windows(sources, normalizer, plan)
    if name == "none (episode order)":
        return ds
    if name == "random_shuffle":
        return ds.random_shuffle(seed=0)
    if name == "randomize_block_order + local":
        # Nested, so Ray pickles it by value: workers cannot import this benchmark module.
        def _local_shuffle(table: pa.Table, *, seed: int) -> pa.Table:
            rng = np.random.default_rng([seed, int(table.column("episode_id")[0].as_py())])
            return table.take(pa.array(rng.permutation(table.num_rows)))

        return ds.randomize_block_order(seed=0).map_batches(
            _local_shuffle,
            batch_format="pyarrow",
            batch_size=CONFIG.shuffle_group_rows,
            fn_kwargs={"seed": 0},
        )
    raise ValueError(name)


def _mixing(out: Path) -> dict[str, float]:
    episodes = pa.concat_tables(
        pq.read_table(p, columns=["episode_id"]) for p in sorted(out.glob("*.parquet"))
    )["episode_id"].to_numpy()
    batches = [episodes[i : i + BATCH] for i in range(0, len(episodes) - BATCH + 1, BATCH)]
    return {
        "episodes_per_256_batch": round(float(np.mean([len(np.unique(b)) for b in batches])), 1),
        "same_episode_neighbours": round(float((episodes[1:] == episodes[:-1]).mean()), 3),
    }


SHUFFLES = [
    "none (episode order)",
    "episode_groups (chosen)",
    "randomize_block_order + local",
    "random_shuffle",
]


@pytest.fixture(scope="module")
def shuffle_report():
    """Collects each variant's numbers; writes the side-by-side table after the last one."""
    rows: dict[str, dict] = {}
    yield rows
    chosen = rows.get("episode_groups (chosen)")
    if not chosen:
        return
    lines = [
        f"Shuffle alternatives, {chosen['rows']} samples (DIFFPOL_BENCH_SCALE={SCALE}), "
        "input Parquet -> shuffled sample Parquet, mean of the timed rounds, all in one run:",
        "",
        "| variant | mean s | x chosen | episodes per 256-row batch | same-episode neighbours |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['mean_s']:.3f} | {r['mean_s'] / chosen['mean_s']:.2f} | "
            f"{r['episodes_per_256_batch']} | {r['same_episode_neighbours']} |"
        )
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if os.environ.get("DIFFPOL_BENCH_OUT"):
        out = Path(os.environ["DIFFPOL_BENCH_OUT"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "preprocess_shuffle.md").write_text(text)


@pytest.mark.parametrize("variant", SHUFFLES)
def test_shuffle_alternatives(benchmark, ray_local, dataset, fresh_dir, shuffle_report, variant):
    benchmark.group = "shuffle: input parquet -> shuffled sample parquet"
    sources, normalizer, plan = _plan(dataset)
    outs, seconds = [], []

    def run():
        out = fresh_dir()
        start = time.perf_counter()
        with pipeline_data_context(progress=False):
            _variant(variant, sources, normalizer, plan).write_parquet(
                str(out), min_rows_per_file=CONFIG.rows_per_file
            )
        seconds.append(time.perf_counter() - start)
        outs.append(out)

    run()  # warm-up (worker start, imports)
    benchmark.pedantic(run, rounds=3, iterations=1)
    benchmark.extra_info.update(_mixing(outs[-1]))
    benchmark.extra_info["rows"] = plan.rows
    # Each variant is a shuffle, not a filter: every planned sample is written once.
    for out in outs:
        assert pq.read_table(out, columns=["step"]).num_rows == plan.rows
    # Own timer (without the warm-up): benchmark.stats is None under --benchmark-disable.
    shuffle_report[variant] = {**benchmark.extra_info, "mean_s": float(np.mean(seconds[1:]))}


@pytest.mark.parametrize(
    "settings", ["ray defaults (as in the seed tutorial)", "pipeline settings"]
)
def test_random_shuffle_of_in_memory_rows(benchmark, ray_local, settings):
    """The seed tutorial's step: ``random_shuffle`` of 10k small rows from ``from_items``.

    Shows where its time goes: Ray's defaults (200 blocks minimum, actor-based hash
    shuffle), not the data.
    """
    benchmark.group = "random_shuffle of 10k from_items rows"
    if settings.startswith("ray defaults") and SCALE < 1:
        pytest.skip("about a minute on 2 cores; runs at DIFFPOL_BENCH_SCALE >= 1")
    rng = np.random.default_rng(0)
    items = [
        {"obs": rng.normal(size=3).astype(np.float32), "noisy_action": rng.normal(size=1)}
        for _ in range(10_000)
    ]

    def run():
        start = time.perf_counter()
        if settings == "pipeline settings":
            with pipeline_data_context(progress=False):
                n = ray.data.from_items(items).random_shuffle(seed=0).materialize().count()
        else:
            with data_context({"enable_progress_bars": False}):
                n = ray.data.from_items(items).random_shuffle(seed=0).materialize().count()
        assert n == 10_000
        return time.perf_counter() - start

    benchmark.pedantic(run, rounds=1 if settings.startswith("ray defaults") else 3, iterations=1)
