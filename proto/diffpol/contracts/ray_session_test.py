"""The Ray a call connects to: what a locally started one hands its workers, what it
leaves behind, where Ray's own output goes."""

from __future__ import annotations

import logging
import os
import time

import pytest
import ray
import ray.data

from diffpol.contracts.ray_session import (
    PREEMPTION_WATCHER_ENV,
    TRAIN_POLL_INTERVAL_ENV,
    TRAIN_POLL_INTERVAL_S,
    RaySessionConfig,
    ray_session,
)


@ray.remote(num_cpus=0)
def _worker_env(names: list[str]) -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in names}


@ray.remote(num_cpus=0)
def _shout(text: str) -> None:
    print(text, flush=True)


NAMES = [PREEMPTION_WATCHER_ENV, TRAIN_POLL_INTERVAL_ENV]


@pytest.fixture(autouse=True)
def _no_ray():
    assert not ray.is_initialized()
    yield
    ray.shutdown()


def test_a_local_ray_polls_fast_runs_no_preemption_watcher_and_is_gone_after(monkeypatch):
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
    with ray_session(num_cpus=2) as started:
        assert not started
        env = ray.get(_worker_env.remote(NAMES))
        assert ray.cluster_resources()["CPU"] == 1
    assert ray.is_initialized()
    assert env[PREEMPTION_WATCHER_ENV] == os.environ.get(PREEMPTION_WATCHER_ENV)


def test_an_error_in_the_block_still_shuts_ray_down():
    with pytest.raises(RuntimeError, match="boom"), ray_session(num_cpus=1):
        raise RuntimeError("boom")
    assert not ray.is_initialized()


def test_rays_output_goes_to_the_log_file(tmp_path, capfd):
    log_file = tmp_path / "logs" / "ray.log"
    ray_logger = logging.getLogger("ray.data")
    before = list(ray_logger.handlers)
    with ray_session(num_cpus=1, log_file=log_file):
        ray.get(_shout.remote("hello from a worker"))
        ray_logger.warning("hello from Ray Data")
        ctx = ray.data.DataContext.get_current()
        assert not ctx.enable_progress_bars
        # Worker output reaches the driver asynchronously.
        for _ in range(100):
            if "hello from a worker" in log_file.read_text():
                break
            time.sleep(0.1)
    text = log_file.read_text()
    assert "hello from a worker" in text
    assert "\x1b[" not in text  # no terminal colours in a file
    assert "hello from Ray Data" in text
    console = capfd.readouterr()
    assert "hello from" not in console.out + console.err
    assert ray_logger.handlers == before
    assert ray.data.DataContext.get_current().enable_progress_bars


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="num_cpus"):
        RaySessionConfig(num_cpus=0)
    with pytest.raises(ValueError, match="address"):
        RaySessionConfig(address="")
