"""ShardBlocks on a real Ray dataset: every row once per epoch, in blocks of whole
minibatches, shuffled across Ray's batches through the buffer (or in order, for val)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from diffpol.contracts.samples import sample_schema
from diffpol.trainer.worker import ShardBlocks

ROWS, BATCH, STEPS = 300, 4, 8  # blocks of 32 rows
BLOCK = BATCH * STEPS


@pytest.fixture(scope="module")
def dataset(ray_local):
    # Samples as preprocess writes them; row i carries i in every obs and action value,
    # so pairs and order can be checked.
    ids = np.arange(ROWS)
    values = ids.astype(np.float32)
    table = pa.table(
        {
            "episode_id": ids // 100,
            "step": (ids % 100).astype(np.int32),
            "obs": pa.FixedSizeListArray.from_arrays(np.repeat(values, 6), 6),
            "action": pa.FixedSizeListArray.from_arrays(values, 1),
        },
        schema=sample_schema(n_obs_steps=2, horizon=1, obs_dim=3, act_dim=1),
    )
    return ray_local.data.from_arrow([table.slice(start, 100) for start in (0, 100, 200)])


def _epoch(blocks: ShardBlocks) -> list[dict[str, torch.Tensor]]:
    return list(blocks)


def _ids(epoch) -> list[int]:
    for block in epoch:
        # Only the training columns, flat float32 rows, obs and action still paired.
        assert set(block) == {"obs", "action"}
        assert block["obs"].dtype == block["action"].dtype == torch.float32
        assert block["obs"].shape[1:] == (6,) and block["action"].shape[1:] == (1,)
        assert torch.equal(block["obs"], block["action"].expand(-1, 6))
    return [int(i) for block in epoch for i in block["action"][:, 0]]


def test_shuffled_epochs_yield_every_row_once_in_whole_blocks(dataset):
    blocks = ShardBlocks(
        dataset, BATCH, shuffle=True, shuffle_buffer_rows=64, steps_per_block=STEPS, seed=3
    )
    first, second = _epoch(blocks), _epoch(blocks)
    for epoch in (first, second):
        assert sorted(_ids(epoch)) == list(range(ROWS))
        sizes = [int(block["obs"].shape[0]) for block in epoch]
        assert sizes[:-1] == [BLOCK] * (len(sizes) - 1) and 0 < sizes[-1] <= BLOCK
    # The first block is drawn from the buffer, not from Ray's first batch alone.
    assert max(_ids(first[:1])) >= BLOCK
    # Each epoch draws a new order.
    assert _ids(first) != _ids(second)


def test_the_same_seed_gives_the_same_order(dataset):
    def order(seed: int) -> list[int]:
        blocks = ShardBlocks(
            dataset, BATCH, shuffle=True, shuffle_buffer_rows=64, steps_per_block=STEPS, seed=seed
        )
        return _ids(_epoch(blocks))

    assert order(5) == order(5) != order(6)


def test_unshuffled_blocks_keep_the_dataset_order(dataset):
    blocks = ShardBlocks(dataset, BATCH, shuffle=False, steps_per_block=STEPS)
    assert _ids(_epoch(blocks)) == list(range(ROWS))


def test_epochs_started_in_the_background_yield_the_same_rows(dataset):
    blocks = ShardBlocks(
        dataset, BATCH, shuffle=True, shuffle_buffer_rows=64, steps_per_block=STEPS, epochs=3
    )
    epochs = []
    for expect_next in (True, True, False):
        epochs.append(_ids(_epoch(blocks)))
        # The next epoch is under way once this one is done, and only if one is left.
        assert (blocks._next_epoch is not None) == expect_next
    assert all(sorted(ids) == list(range(ROWS)) for ids in epochs)
    assert epochs[0] != epochs[1] != epochs[2]
