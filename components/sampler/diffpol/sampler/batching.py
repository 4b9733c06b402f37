"""Micro-batching: fuse concurrent sampling requests into one onnxruntime call.

One worker thread takes the first waiting job, then keeps collecting until the batch holds
``max_rows`` rows, ``max_wait_s`` has passed, or every request the server has admitted is
already in the batch (nobody else is coming, so waiting longer only adds latency). Jobs
run on the model they were validated against, so a hot reload never mixes models within
a call. A job whose deadline passed or whose caller went away while it was queued is
dropped, not run.
"""

from __future__ import annotations

import _thread
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from diffpol.sampler.runtime import OnnxPolicy


class DeadlineExpired(Exception):
    """The request's deadline passed (or its caller cancelled) before it could run."""


class Answer:
    """Where the batcher puts one job's result, and its caller waits for it.

    A bare lock, held until the answer is in: answering is one release (one futex wake).
    ``concurrent.futures.Future`` answers through a Condition (several lock operations
    and a fresh waiter lock per call), which took ~20% of the server's Python time with
    64 concurrent clients.
    """

    __slots__ = ("_error", "_pending", "_value")

    def __init__(self) -> None:
        self._pending = _thread.allocate_lock()
        self._pending.acquire()
        self._value: np.ndarray | None = None
        self._error: BaseException | None = None

    def set(self, value: np.ndarray | None = None, error: BaseException | None = None) -> None:
        self._value, self._error = value, error
        self._pending.release()

    def result(self) -> np.ndarray:
        """Block until the answer is in; raise the job's error, if it has one."""
        self._pending.acquire()
        self._pending.release()  # later calls return at once
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


@dataclass
class Job:
    model: OnnxPolicy
    obs: np.ndarray
    noise: np.ndarray
    step_noise: np.ndarray | None
    deadline: float | None  # time.monotonic() seconds; None: no deadline
    is_active: Callable[[], bool]
    answer: Answer = field(default_factory=Answer)

    @property
    def rows(self) -> int:
        return self.obs.shape[0]

    def expired(self, now: float) -> bool:
        return (self.deadline is not None and now >= self.deadline) or not self.is_active()


@dataclass
class BatchStats:
    jobs: int = 0
    rows: int = 0
    calls: int = 0
    expired: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


_STOP = object()


class MicroBatcher:
    def __init__(self, max_rows: int, max_wait_s: float) -> None:
        if max_rows < 1 or max_wait_s <= 0:
            raise ValueError("MicroBatcher needs max_rows >= 1 and max_wait_s > 0")
        self.max_rows, self.max_wait_s = max_rows, max_wait_s
        self.stats = BatchStats()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        # Requests admitted (arrive) and not yet answered by this batcher (depart).
        self._expected = 0
        self._expected_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="sampler-batcher", daemon=True)
        self._thread.start()

    def arrive(self) -> None:
        with self._expected_lock:
            self._expected += 1

    def depart(self, requests: int = 1) -> None:
        with self._expected_lock:
            self._expected -= requests

    def submit(self, job: Job) -> Answer:
        """Queue a job (after ``arrive``); the batcher calls ``depart`` when it is answered."""
        self._queue.put(job)
        return job.answer

    def close(self) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        carried: Job | None = None
        while True:
            first = carried if carried is not None else self._queue.get()
            carried = None
            if first is _STOP:
                return
            batch, rows = [first], first.rows
            stop_after = False
            wait_until = time.monotonic() + self.max_wait_s
            while rows < self.max_rows and len(batch) < self._expected:
                timeout = wait_until - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    job = self._queue.get(timeout=timeout)
                except queue.Empty:
                    break
                if job is _STOP:
                    stop_after = True
                    break
                if rows + job.rows > self.max_rows:
                    carried = job
                    break
                batch.append(job)
                rows += job.rows
            self._run(batch)
            if stop_after:
                if carried is not None:
                    self._run([carried])
                return

    def _run(self, batch: list[Job]) -> None:
        self.depart(len(batch))  # all of them are answered below: nobody else is coming
        now = time.monotonic()
        by_model: dict[int, list[Job]] = {}
        for job in batch:
            if job.expired(now):
                self.stats.expired += 1
                job.answer.set(error=DeadlineExpired())
            else:
                by_model.setdefault(id(job.model), []).append(job)
        for jobs in by_model.values():
            self._run_group(jobs)

    def _run_group(self, jobs: list[Job]) -> None:
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
            action = model.run_checked(obs, noise, step_noise)
        except Exception as exc:  # answer every caller; the batcher keeps running
            self.stats.failed += len(jobs)
            for job in jobs:
                job.answer.set(error=exc)
            return
        self.stats.calls += 1
        start = 0
        for job in jobs:
            end = start + job.rows
            self.stats.jobs += 1
            self.stats.rows += job.rows
            job.answer.set(action[start:end])
            start = end
