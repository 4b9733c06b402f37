"""Micro-batching on the server's event loop: fuse concurrent sampling requests into one
onnxruntime call.

Handlers validate a request and queue it (no thread hand-off: they run on the loop too).
One drain task takes what is queued and runs it as one call on a single worker thread, so
the loop keeps reading requests meanwhile; those form the next call. Before a call the
drain waits, at most ``max_wait_s``, until as many requests are queued as the previous call
answered: with clients in a closed loop those come straight back, and waiting for them
costs less than an extra call. A lone one-row request (the previous call answered one) runs
on the loop itself: it takes about as long as the thread hop it saves a single client, while
anything bigger runs on the worker, so the loop keeps reading requests. Jobs run on the model they
were validated against, so a hot reload never mixes models within a call. A job whose
deadline passed, or whose caller went away, while it was queued is dropped, not run.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from diffpol.sampler.runtime import OnnxPolicy


class DeadlineExpired(Exception):
    """The request's deadline passed (or its caller cancelled) before it could run."""


@dataclass
class Job:
    model: OnnxPolicy
    obs: np.ndarray
    noise: np.ndarray
    step_noise: np.ndarray | None
    deadline: float | None  # the loop's clock (loop.time()); None: no deadline
    answer: asyncio.Future  # cancelled when the caller's RPC ends early

    @property
    def rows(self) -> int:
        return self.obs.shape[0]


@dataclass
class BatchStats:
    jobs: int = 0
    rows: int = 0
    calls: int = 0
    expired: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class MicroBatcher:
    """Create and use on the event loop's thread only (not thread-safe, needs no locks)."""

    def __init__(
        self, max_rows: int, max_wait_s: float, on_call: Callable[[int], None] | None = None
    ) -> None:
        if max_rows < 1 or max_wait_s <= 0:
            raise ValueError("MicroBatcher needs max_rows >= 1 and max_wait_s > 0")
        self.max_rows, self.max_wait_s = max_rows, max_wait_s
        self._on_call = on_call  # told the rows of each successful onnxruntime call
        self.stats = BatchStats()
        self._loop = asyncio.get_running_loop()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="sampler-batch")
        self._queue: deque[Job] = deque()
        self._draining = False
        self._expected = 1  # jobs the previous call answered
        self._enough: asyncio.Event | None = None  # set once _expected jobs are queued

    async def run(
        self,
        model: OnnxPolicy,
        obs: np.ndarray,
        noise: np.ndarray,
        step_noise: np.ndarray | None,
        deadline: float | None,
    ) -> np.ndarray:
        """Queue one request and return its rows of the fused call's actions."""
        job = Job(model, obs, noise, step_noise, deadline, self._loop.create_future())
        self._queue.append(job)
        if self._enough is not None and len(self._queue) >= self._expected:
            self._enough.set()
        if not self._draining:
            self._draining = True
            self._loop.create_task(self._drain())
        return await job.answer

    def close(self) -> None:
        self._worker.shutdown(wait=True)

    async def _drain(self) -> None:
        try:
            while self._queue:
                await self._gather()
                batch = self._take()
                if not batch:
                    continue
                self._expected = len(batch)
                by_model: dict[int, list[Job]] = {}
                for job in batch:
                    by_model.setdefault(id(job.model), []).append(job)
                for jobs in by_model.values():
                    await self._run_group(jobs)
        finally:
            self._draining = False

    async def _gather(self) -> None:
        await asyncio.sleep(0)  # handlers whose requests are already here queue theirs
        if len(self._queue) >= self._expected:
            return
        self._enough = asyncio.Event()
        try:
            await asyncio.wait_for(self._enough.wait(), self.max_wait_s)
        except TimeoutError:
            pass
        finally:
            self._enough = None

    def _take(self) -> list[Job]:
        """Jobs for one call, up to ``max_rows`` rows; expired and abandoned ones dropped."""
        batch: list[Job] = []
        rows, now = 0, self._loop.time()
        while self._queue:
            job = self._queue[0]
            if not job.answer.done() and (job.deadline is None or now < job.deadline):
                if batch and rows + job.rows > self.max_rows:
                    break
                batch.append(job)
                rows += job.rows
            else:
                self.stats.expired += 1
                if not job.answer.done():
                    job.answer.set_exception(DeadlineExpired())
            self._queue.popleft()
        return batch

    async def _run_group(self, jobs: list[Job]) -> None:
        model = jobs[0].model
        if len(jobs) == 1:
            obs, noise, step_noise = jobs[0].obs, jobs[0].noise, jobs[0].step_noise
        else:
            obs = np.concatenate([j.obs for j in jobs])
            noise = np.concatenate([j.noise for j in jobs])
            step_noise = (
                None if jobs[0].step_noise is None else np.concatenate([j.step_noise for j in jobs])  # type: ignore[misc]
            )
        try:
            if len(obs) == 1 and self._expected == 1:
                action = model.run_checked(obs, noise, step_noise)
            else:
                action = await self._loop.run_in_executor(
                    self._worker, model.run_checked, obs, noise, step_noise
                )
        except Exception as exc:  # answer every caller; the batcher keeps running
            self.stats.failed += len(jobs)
            for job in jobs:
                if not job.answer.done():
                    job.answer.set_exception(exc)
            return
        self.stats.calls += 1
        if self._on_call is not None:
            self._on_call(len(obs))
        start = 0
        for job in jobs:
            end = start + job.rows
            self.stats.jobs += 1
            self.stats.rows += job.rows
            if not job.answer.done():  # its caller may have gone meanwhile
                job.answer.set_result(action[start:end])
            start = end
