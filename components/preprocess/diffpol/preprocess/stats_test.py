"""Partial statistics and their merge, run locally on blocks (the Ray pass is in pipeline_test)."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffpol.contracts.errors import ContractError
from diffpol.preprocess.sources import open_sources
from diffpol.preprocess.stats import Moments, block_stats, combine_block_stats
from diffpol.preprocess.synthetic import synthetic_episodes, write_dataset


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 400),
    cuts=st.lists(st.integers(0, 400), max_size=6),
    offset=st.floats(-1e4, 1e4),
    seed=st.integers(0, 10_000),
)
def test_merged_moments_equal_numpy_on_the_whole_data(n, cuts, offset, seed):
    x = np.random.default_rng(seed).normal(offset, 3.0, (n, 3))
    bounds = sorted({0, n, *(c for c in cuts if c <= n)})
    merged = Moments.merge([Moments.of(x[a:b]) for a, b in pairwise(bounds)])
    assert merged.count == n
    np.testing.assert_allclose(merged.mean, x.mean(0), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(merged.std, x.std(0), rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(merged.min, x.min(0))
    np.testing.assert_array_equal(merged.max, x.max(0))


def test_empty_blocks_are_ignored_and_no_data_is_an_error():
    x = np.arange(6.0).reshape(3, 2)
    merged = Moments.merge([Moments.of(x[:0]), Moments.of(x), Moments.of(x[:0])])
    np.testing.assert_allclose(merged.mean, x.mean(0))
    with pytest.raises(ContractError, match="no values"):
        Moments.merge([Moments.of(x[:0])])


def stats_of(tmp_path, blocks: list[pa.Table], *, manifest_table: pa.Table | None = None):
    """block_stats over hand-made blocks, combined against a one-dataset manifest."""
    write_dataset(tmp_path / "d", [manifest_table or pa.concat_tables(blocks)])
    sources = open_sources([tmp_path / "d"])
    rows = [
        block_stats(b, obs_dim=3, act_dim=1, source=0, source_path="d").to_pylist()[0]
        for b in blocks
    ]
    return combine_block_stats(rows, sources)


def test_episode_index_joins_episodes_split_across_blocks(tmp_path):
    table = synthetic_episodes([5, 7, 3], first_episode_id=20)
    stats = stats_of(tmp_path, [table.slice(0, 8), table.slice(8, 5), table.slice(13)])
    assert stats.episodes.ids.tolist() == [20, 21, 22]
    assert stats.episodes.lengths.tolist() == [5, 7, 3]
    assert stats.rows == 15 and stats.expert_label_rows == 15
    assert stats.episodes.lengths_of(np.array([22, 99, 20])).tolist() == [3, -1, 5]


def test_a_step_that_is_duplicated_where_another_is_missing_is_caught(tmp_path):
    table = synthetic_episodes([4])
    steps = pa.array([0, 0, 2, 3], pa.int32())  # count, min and max all look right
    broken = table.set_column(table.schema.get_field_index("step"), "step", steps)
    with pytest.raises(
        ContractError, match=r"episode 0 does not have each step 0\.\.3 exactly once"
    ):
        stats_of(tmp_path, [broken])


def test_episode_count_must_match_the_manifest(tmp_path):
    table = synthetic_episodes([4, 4])
    # The manifest is written for rows with three episodes of the same total size.
    three = synthetic_episodes([3, 3, 2])
    with pytest.raises(ContractError, match="manifest says 3 episodes but the data holds 2"):
        stats_of(tmp_path, [table], manifest_table=three)
