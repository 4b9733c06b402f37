"""Episode-level split and shuffle groups."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffpol.contracts.errors import ContractError
from diffpol.preprocess.split import split_episodes, val_episode_count


def plans(n: int, *, val_fraction: float = 0.2, seed: int = 0, group_rows: int = 50):
    ids = np.arange(n, dtype=np.int64) * 7 + 100  # sorted, not contiguous
    lengths = (np.arange(n) % 5 + 1) * 10
    return (
        ids,
        lengths,
        split_episodes(ids, lengths, val_fraction=val_fraction, seed=seed, group_rows=group_rows),
    )


@settings(max_examples=50, deadline=None)
@given(n=st.integers(2, 300), fraction=st.floats(0.0, 0.95), seed=st.integers(0, 2**31))
def test_every_episode_lands_in_exactly_one_split(n, fraction, seed):
    ids, lengths, split = plans(n, val_fraction=fraction, seed=seed)
    train, val = split["train"], split["val"]
    assert not set(train.ids) & set(val.ids)
    assert sorted([*train.ids, *val.ids]) == ids.tolist()
    assert train.rows + val.rows == lengths.sum()
    assert val.episodes == val_episode_count(n, fraction)
    assert train.episodes >= 1


def test_split_is_deterministic_given_the_seed_and_changes_with_it():
    _, _, a = plans(100, seed=3)
    _, _, b = plans(100, seed=3)
    _, _, c = plans(100, seed=4)
    assert a["val"].ids.tolist() == b["val"].ids.tolist()
    assert a["train"].groups.tolist() == b["train"].groups.tolist()
    assert a["val"].ids.tolist() != c["val"].ids.tolist()


def test_val_fraction_rounds_to_whole_episodes_with_at_least_one():
    assert val_episode_count(10, 0.0) == 0
    assert val_episode_count(10, 0.1) == 1
    assert val_episode_count(10, 0.01) == 1  # asked for some: get one
    assert val_episode_count(3, 0.9) == 2  # train keeps at least one
    with pytest.raises(ContractError, match="cannot hold out"):
        val_episode_count(1, 0.1)


def test_shuffle_groups_hold_whole_episodes_of_about_group_rows():
    _, lengths, split = plans(200, val_fraction=0.0, group_rows=300)
    train = split["train"]
    rows_per_group = np.bincount(train.groups, weights=train.lengths)
    assert train.num_groups == len(rows_per_group) > 1
    # A group closes at the first episode that reaches group_rows: at most one episode over.
    assert rows_per_group.max() < 300 + lengths.max()
    assert rows_per_group[:-1].min() >= 300 - lengths.max()
    # Groups draw episodes from all over the id range, not consecutive runs.
    first_group = np.sort(train.ids[train.groups == 0])
    assert (np.diff(first_group) > 7).any()
