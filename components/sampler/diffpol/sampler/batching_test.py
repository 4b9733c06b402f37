"""The event-loop micro-batcher on its own (no gRPC): fusion, row routing, dropping."""

from __future__ import annotations

import asyncio

import numpy as np

from diffpol.sampler.batching import DeadlineExpired, MicroBatcher
from diffpol.sampler.testing import reference_obs


def _inputs(policy, rows: int, seed: int):
    obs = reference_obs(rows, seed=seed)
    noise, step_noise = policy.draw_inputs(rows, seed)
    return obs, noise, step_noise


def test_requests_queued_while_a_call_runs_share_the_next_call(policy):
    requests = [_inputs(policy, 1 + i % 3, seed=i) for i in range(20)]

    async def main():
        batcher = MicroBatcher(max_rows=64, max_wait_s=0.05)
        try:
            # All 20 are queued before the batcher's task first runs: one fused call.
            actions = await asyncio.gather(
                *(batcher.run(policy, *r, deadline=None) for r in requests)
            )
        finally:
            batcher.close()
        return actions, batcher.stats

    actions, stats = asyncio.run(main())
    for i, action in enumerate(actions):
        np.testing.assert_array_equal(action, policy.act(requests[i][0], seed=i))
    assert stats.jobs == 20 and stats.rows == sum(r[0].shape[0] for r in requests)
    assert stats.calls == 1


def test_a_call_never_exceeds_max_rows(policy):
    requests = [_inputs(policy, 3, seed=i) for i in range(6)]

    async def main():
        batcher = MicroBatcher(max_rows=7, max_wait_s=0.05)
        try:
            await asyncio.gather(*(batcher.run(policy, *r, deadline=None) for r in requests))
        finally:
            batcher.close()
        return batcher.stats

    stats = asyncio.run(main())
    assert stats.rows == 18 and stats.calls == 3  # two 3-row jobs per call at most


def test_expired_and_abandoned_requests_are_dropped_not_run(policy):
    async def main():
        batcher = MicroBatcher(max_rows=64, max_wait_s=0.05)
        loop = asyncio.get_running_loop()
        try:
            expired = asyncio.ensure_future(
                batcher.run(policy, *_inputs(policy, 2, 0), deadline=loop.time() - 1)
            )
            abandoned = asyncio.ensure_future(
                batcher.run(policy, *_inputs(policy, 4, 1), deadline=None)
            )
            kept = asyncio.ensure_future(batcher.run(policy, *_inputs(policy, 1, 2), None))
            await asyncio.sleep(0)  # all three are queued
            abandoned.cancel()
            assert (await kept).shape[0] == 1
            try:
                await expired
            except DeadlineExpired:
                pass
            else:
                raise AssertionError("an expired request was answered")
        finally:
            batcher.close()
        return batcher.stats

    stats = asyncio.run(main())
    assert stats.expired == 2 and stats.rows == 1 and stats.jobs == 1
