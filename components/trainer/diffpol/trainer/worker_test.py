"""ShardBlocks on a real Ray dataset: every row once per epoch, in blocks of whole
minibatches, shuffled across Ray's batches through the buffer (or in order, for val)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffpol.trainer.worker import ShardBlocks

ROWS, BATCH, STEPS = 300, 4, 8  # blocks of 32 rows
BLOCK = BATCH * STEPS


@pytest.fixture(scope="module")
def dataset(ray_local):
    # Row i carries i in both columns, so pairs and order can be checked.
    ids = np.arange(ROWS, dtype=np.float32)
    return ray_local.data.from_numpy(ids).map_batches(
        lambda b: {
            "obs": np.repeat(b["data"][:, None, None], 6, axis=2).reshape(-1, 2, 3),
            "action": b["data"][:, None, None],
        }
    )


def _epoch(blocks: ShardBlocks) -> list[dict[str, torch.Tensor]]:
    return list(blocks)


def _ids(epoch) -> list[int]:
    for block in epoch:
        # obs and action rows stay paired through the buffer.
        assert torch.equal(block["obs"][:, 0, 0], block["action"][:, 0, 0])
    return [int(i) for block in epoch for i in block["action"][:, 0, 0]]


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
