"""The Ray a call connects to: what a locally started one hands its workers, what it
leaves behind, where Ray's own output goes."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys
import time
from pathlib import Path

import pytest
import ray
import ray.data

from diffpol.contracts.ray_session import (
    PREEMPTION_WATCHER_ENV,
    RAY_CLUSTERS_ENV,
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


def _descendants(root: int) -> set[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found.update(children)
        frontier.extend(children)
    return found


def _listening() -> dict[int, tuple[str, str, int]]:
    """Socket inode -> (protocol, local IP, port) of every TCP socket listening and every
    unconnected UDP socket on the machine, from /proc/net (what ``ss -ltun`` lists)."""
    sockets = {}
    for proto, state in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
        for line in Path(f"/proc/net/{proto}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != state:
                continue
            address, port = fields[1].split(":")
            raw = bytes.fromhex(address)
            if len(raw) == 4:
                ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
            else:  # four host-order 32-bit words
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                ip = socket.inet_ntop(socket.AF_INET6, words)
            sockets[int(fields[9])] = (proto, ip, int(port, 16))
    return sockets


def _listeners_of(pids: set[int]) -> list[tuple[int, str, str, int]]:
    listening = _listening()
    found = []
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[len("socket:[") : -1])
                if inode in listening:
                    found.append((pid, *listening[inode]))
    return found


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_a_local_ray_listens_on_loopback_only(monkeypatch):
    monkeypatch.delenv(RAY_CLUSTERS_ENV, raising=False)
    with ray_session(num_cpus=1):
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        ray.get(_worker_env.remote([]))  # a worker process is up, with its gRPC server
        listeners = _listeners_of(_descendants(os.getpid()))
        assert ray._private.ray_constants.ENABLE_RAY_CLUSTER is False
    assert ray._private.ray_constants.ENABLE_RAY_CLUSTER is True  # restored
    assert RAY_CLUSTERS_ENV not in os.environ
    # GCS, raylet (node manager, object manager), the driver's and a worker's gRPC servers.
    assert len({pid for pid, *_ in listeners}) >= 4, listeners
    exposed = [entry for entry in listeners if not _is_loopback(entry[2])]
    assert exposed == [], f"Ray listens beyond loopback: {exposed}"


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_the_users_cluster_setting_wins(monkeypatch):
    monkeypatch.setenv(RAY_CLUSTERS_ENV, "1")
    with ray_session(num_cpus=1):
        ip = ray.util.get_node_ip_address()
        assert ray._private.ray_constants.ENABLE_RAY_CLUSTER is True
    # Ray's own choice: the address it reaches the network from.
    assert ip == ray._private.services.node_ip_address_from_perspective()
