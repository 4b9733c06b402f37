"""Training samples from whole episodes: an observation history and an action chunk per step.

For the row at ``step`` t of an episode with steps 0..L-1 (the samples format:
``diffpol.contracts.samples``):

- ``obs``    = normalized obs at t-To+1 .. t, where a step before 0 repeats the obs at step 0;
- ``action`` = normalized labels at t .. t+T-1, where a step past L-1 repeats the label at L-1.

Both are flattened row-major ([To, obs_dim] -> To*obs_dim). Everything here is vectorised
over all episodes of a block at once: one gather per window, no Python loop per episode.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from diffpol.contracts.arrow import fixed_list_array, fixed_list_values
from diffpol.contracts.errors import ContractError
from diffpol.contracts.normalizer import AffineNormalizer
from diffpol.contracts.samples import sample_schema


def label_values(table: pa.Table, act_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The training label of each row, ``[n, act_dim]`` float32, and a mask of rows where it
    came from ``expert_action`` (the rest fall back to the executed ``action``)."""
    action = fixed_list_values(table.column("action"), act_dim)
    expert_col = table.column("expert_action")
    has_expert = pc.invert(pc.is_null(expert_col)).to_numpy(zero_copy_only=False)
    if not has_expert.any():
        return action, has_expert
    # Null lists still occupy act_dim slots in the child array (values unspecified), so
    # flattening the chunks keeps rows aligned; np.where then picks per row.
    expert = fixed_list_values(expert_col, act_dim, keep_null_slots=True)
    return np.where(has_expert[:, None], expert, action), has_expert


def episode_bounds(episode_id: np.ndarray, step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort order of rows by (episode, step) and, per sorted row, its episode's first row.

    Rows of each episode must be exactly steps 0..L-1 (each once); anything else means the
    episode is incomplete here (split across blocks or files, or rows lost) and would give
    silently wrong windows, so it raises.
    """
    order = np.lexsort((step, episode_id))
    ep = episode_id[order]
    st = step[order].astype(np.int64)
    n = len(ep)
    is_start = np.ones(n, bool)
    is_start[1:] = ep[1:] != ep[:-1]
    start_of_row = np.maximum.accumulate(np.where(is_start, np.arange(n), 0))
    offset = np.arange(n) - start_of_row
    bad = st != offset
    if bad.any():
        row = int(np.argmax(bad))
        raise ContractError(
            f"episode {int(ep[row])} is not a complete run of steps 0..L-1 within one block: "
            f"found step {int(st[row])} where step {int(offset[row])} was expected (rows of an "
            "episode are missing, duplicated or spread over blocks)"
        )
    return order, start_of_row


def build_windows(
    table: pa.Table,
    *,
    n_obs_steps: int,
    horizon: int,
    obs_normalizer: AffineNormalizer,
    action_normalizer: AffineNormalizer,
    expected_lengths: tuple[np.ndarray, np.ndarray] | None = None,
) -> pa.Table:
    """Training samples for every row of ``table``, which must hold whole episodes.

    ``expected_lengths`` (sorted episode ids, their lengths in the dataset), when given, is
    checked against the rows present, catching an episode whose tail sits in another block.
    """
    obs_dim, act_dim = obs_normalizer.dim, action_normalizer.dim
    schema = sample_schema(n_obs_steps, horizon, obs_dim, act_dim)
    if table.num_rows == 0:
        return schema.empty_table()
    episode_id = table.column("episode_id").to_numpy()
    step = table.column("step").to_numpy()
    order, start_of_row = episode_bounds(episode_id, step)
    n = len(order)
    # Last row of each row's episode: the next episode's start minus one.
    is_end = np.ones(n, bool)
    ep_sorted = episode_id[order]
    is_end[:-1] = ep_sorted[1:] != ep_sorted[:-1]
    end_of_row = np.minimum.accumulate(np.where(is_end, np.arange(n), n)[::-1])[::-1]
    if expected_lengths is not None:
        _check_lengths(ep_sorted[is_end], (end_of_row - start_of_row + 1)[is_end], expected_lengths)

    obs = obs_normalizer.normalize(fixed_list_values(table.column("obs"), obs_dim)[order])
    labels, _ = label_values(table, act_dim)
    labels = action_normalizer.normalize(labels[order])
    rows = np.arange(n)[:, None]
    obs_index = np.maximum(rows - (n_obs_steps - 1) + np.arange(n_obs_steps), start_of_row[:, None])
    action_index = np.minimum(rows + np.arange(horizon), end_of_row[:, None])
    obs_windows = obs[obs_index].reshape(n, n_obs_steps * obs_dim)
    action_windows = labels[action_index].reshape(n, horizon * act_dim)
    return pa.Table.from_arrays(
        [
            pa.array(ep_sorted, pa.int64()),
            pa.array(step[order].astype(np.int32)),
            fixed_list_array(obs_windows),
            fixed_list_array(action_windows),
        ],
        schema=schema,
    )


def lookup_lengths(ids: np.ndarray, lengths: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``lengths`` of the ``query`` ids given sorted ``ids``; -1 where an id is unknown."""
    if len(ids) == 0:
        return np.full(len(query), -1, np.int64)
    pos = np.clip(np.searchsorted(ids, query), 0, len(ids) - 1)
    return np.where(ids[pos] == query, lengths[pos], -1)


def _check_lengths(
    ids: np.ndarray, lengths: np.ndarray, expected: tuple[np.ndarray, np.ndarray]
) -> None:
    want = lookup_lengths(expected[0], expected[1], ids)
    wrong = np.flatnonzero(want != lengths)
    if len(wrong):
        i = wrong[0]
        raise ContractError(
            f"episode {int(ids[i])}: {int(lengths[i])} step(s) here but {int(want[i])} in the "
            "dataset (the episode was split across blocks, or is not in this split); its "
            "windows would be wrong"
        )
