"""Train/validation split by episode, and the seeded episode order the shuffle follows.

One permutation of the (sorted) episode ids, drawn from the seed, does both jobs: its
first ``n_val`` episodes are validation, and each split's episodes, in permuted order,
are packed into shuffle groups of about ``group_rows`` rows. A group therefore holds
episodes from anywhere in the inputs, and shuffling rows inside a group mixes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffpol.contracts.errors import ContractError


@dataclass(frozen=True)
class SplitPlan:
    """The episodes of one split and the shuffle group of each (arrays sorted by id)."""

    name: str
    ids: np.ndarray
    lengths: np.ndarray
    groups: np.ndarray
    num_groups: int

    @property
    def rows(self) -> int:
        return int(self.lengths.sum())

    @property
    def episodes(self) -> int:
        return len(self.ids)


def val_episode_count(n_episodes: int, val_fraction: float) -> int:
    """Episodes held out: the rounded fraction, at least one when asked for any, and never
    all of them (training needs at least one)."""
    if val_fraction == 0:
        return 0
    if n_episodes < 2:
        raise ContractError(
            f"cannot hold out val_fraction={val_fraction} of {n_episodes} episode(s): the "
            "split is by episode; provide more episodes or set val_fraction to 0"
        )
    return min(max(1, round(val_fraction * n_episodes)), n_episodes - 1)


def split_episodes(
    ids: np.ndarray,
    lengths: np.ndarray,
    *,
    val_fraction: float,
    seed: int,
    group_rows: int,
) -> dict[str, SplitPlan]:
    """Split episodes (``ids`` sorted, unique) into ``{"train": ..., "val": ...}``."""
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = val_episode_count(len(ids), val_fraction)
    return {
        "train": _plan("train", order[n_val:], ids, lengths, group_rows),
        "val": _plan("val", order[:n_val], ids, lengths, group_rows),
    }


def _plan(
    name: str, picked: np.ndarray, ids: np.ndarray, lengths: np.ndarray, group_rows: int
) -> SplitPlan:
    # Rows before each episode in the permuted order decide its group: whole episodes,
    # about group_rows rows a group.
    picked_lengths = lengths[picked].astype(np.int64)
    rows_before = np.cumsum(picked_lengths) - picked_lengths
    groups = rows_before // group_rows
    by_id = np.argsort(ids[picked], kind="stable")
    return SplitPlan(
        name=name,
        ids=ids[picked][by_id],
        lengths=lengths[picked][by_id],
        groups=groups[by_id],
        num_groups=int(groups.max()) + 1 if len(groups) else 0,
    )
