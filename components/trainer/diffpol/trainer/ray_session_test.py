"""The Ray a training run connects to: what a locally started one hands its workers."""

from __future__ import annotations

import os

import pytest
import ray

from diffpol.trainer.ray_session import (
    PREEMPTION_WATCHER_ENV,
    TRAIN_POLL_INTERVAL_ENV,
    TRAIN_POLL_INTERVAL_S,
    ray_session,
)


@ray.remote(num_cpus=0)
def _worker_env(names: list[str]) -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in names}


NAMES = [PREEMPTION_WATCHER_ENV, TRAIN_POLL_INTERVAL_ENV]


@pytest.fixture(autouse=True)
def _no_ray():
    assert not ray.is_initialized()
    yield
    ray.shutdown()


def test_a_local_ray_polls_fast_and_runs_no_preemption_watcher(monkeypatch):
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    with ray_session(num_cpus=1) as started:
        assert started
        env = ray.get(_worker_env.remote(NAMES))
    assert not ray.is_initialized()
    assert env == {PREEMPTION_WATCHER_ENV: "0", TRAIN_POLL_INTERVAL_ENV: str(TRAIN_POLL_INTERVAL_S)}


def test_the_users_environment_wins(monkeypatch):
    monkeypatch.setenv(PREEMPTION_WATCHER_ENV, "1")
    monkeypatch.setenv(TRAIN_POLL_INTERVAL_ENV, "2")
    with ray_session(num_cpus=1):
        env = ray.get(_worker_env.remote(NAMES))
    assert env == {PREEMPTION_WATCHER_ENV: "1", TRAIN_POLL_INTERVAL_ENV: "2"}


def test_a_running_ray_is_used_as_it_is():
    ray.init(num_cpus=1, include_dashboard=False)
    with ray_session() as started:
        assert not started
        env = ray.get(_worker_env.remote(NAMES))
    assert ray.is_initialized()
    assert env[PREEMPTION_WATCHER_ENV] == os.environ.get(PREEMPTION_WATCHER_ENV)
