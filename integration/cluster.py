"""A real multi-node Ray cluster on this machine, for fault-tolerance tests.

Every node is a separate raylet with its own object store, CPUs and custom resources
(``ray.cluster_utils.Cluster``, the same machinery Ray's own tests use), so killing a
node's raylet and its processes is what losing a machine looks like to the rest of the
cluster.

What makes it safe on a machine that others share:

- ``RAY_TMPDIR`` points at a short private directory while the cluster lives: AF_UNIX
  socket paths stay under 108 bytes, and the "latest cluster" address file Ray writes
  lands there instead of ``/tmp/ray``, where any plain ``ray.init()`` on the machine
  would otherwise find and join this cluster. ``RAY_ADDRESS`` names this cluster for its
  own processes and drivers, which would otherwise guess among every Ray on the machine.
- Only this cluster's own processes are ever signalled (by pid, never ``ray stop``);
  Ray's reaper kills them if the test process dies without tearing down.
- The GCS health check runs every 0.5 s, so a killed node is declared dead in about
  2.5 s instead of about 15 s (the RPC fails at once when the raylet is gone, so the
  short period does not make a slow but live raylet look dead).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")

HEALTH_CHECK = {
    "health_check_period_ms": 500,
    "health_check_failure_threshold": 5,
}


@dataclass(frozen=True)
class ClusterConfig:
    head_cpus: float = 1
    workers: int = 2
    cpus_per_worker: float = 1
    object_store_bytes: int = 80_000_000


def importable_path() -> str:
    """This process's import path as a PYTHONPATH for Ray workers and subprocesses (a
    test runner or a PEX puts entries on sys.path that PYTHONPATH alone does not hold).
    Absolute: under Pants the source roots are relative to the sandbox, and subprocesses
    may start elsewhere."""
    entries = [p for p in [*os.environ.get("PYTHONPATH", "").split(os.pathsep), *sys.path] if p]
    return os.pathsep.join(dict.fromkeys(os.path.abspath(p) for p in entries if os.path.exists(p)))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def wait_for(
    condition: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.05
) -> T:
    """Poll until ``condition()`` is truthy; return it, or fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            # The command name (field 2) may hold spaces: the ppid comes after its ')'.
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (no psutil needed)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"process {pid} reports no VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` in the process tree (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = parent_pid(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def pid_alive(pid: int) -> bool:
    """Whether the process exists and has not exited (a zombie, dead but not yet reaped by
    its parent, counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


class LocalCluster:
    """Head node plus ``config.workers`` worker nodes; ``connect()`` makes this process
    a driver. Use as a context manager (or call ``shutdown``) so it always goes away."""

    def __init__(self, config: ClusterConfig | None = None) -> None:
        self.config = config or ClusterConfig()
        self._cluster: Any = None
        self._root: str | None = None
        self._saved_env: dict[str, str | None] = {}
        self.workers: list[Any] = []  # ray._private.node.Node of each live worker node

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> LocalCluster:
        from ray._private.services import get_node_ip_address
        from ray.cluster_utils import Cluster

        self._root = tempfile.mkdtemp(prefix="dpi-", dir="/tmp")
        # Also on an interpreter exit that skips fixture teardown (SIGTERM -> SystemExit);
        # and once more at exit, for logs a Ray worker still exiting wrote after teardown.
        atexit.register(self.shutdown)
        atexit.register(shutil.rmtree, self._root, True)
        self._set_env("RAY_TMPDIR", self._root)
        # Worker processes inherit the raylet's environment, also for drivers (such as a
        # pipeline subprocess) that do not ship their own PYTHONPATH in a runtime env.
        self._set_env("PYTHONPATH", importable_path())
        # Ray Train's internals look the cluster's address up (RAY_ADDRESS first, else a
        # guess among every GCS on the machine): fix the GCS port so the head's own
        # processes inherit the right answer too.
        port = free_port()
        address = f"{get_node_ip_address()}:{port}"
        self._set_env("RAY_ADDRESS", address)
        try:
            self._cluster = Cluster(
                initialize_head=True,
                head_node_args=dict(
                    num_cpus=self.config.head_cpus,
                    object_store_memory=self.config.object_store_bytes,
                    include_dashboard=False,
                    gcs_server_port=port,
                    _system_config=HEALTH_CHECK,
                ),
            )
            if self._cluster.address != address:
                raise RuntimeError(f"the head came up at {self._cluster.address}, not {address}")
            for _ in range(self.config.workers):
                self.add_worker()
        except BaseException:
            self.shutdown()
            raise
        return self

    def add_worker(self) -> Any:
        """Start one more worker node (e.g. to replace a lost one)."""
        node = self._cluster.add_node(
            num_cpus=self.config.cpus_per_worker,
            object_store_memory=self.config.object_store_bytes,
        )
        self.workers.append(node)
        return node

    def connect(self) -> Any:
        """Join as a driver (workers get this process's import path)."""
        import ray

        ray.init(
            address=self.address,
            runtime_env={"env_vars": {"PYTHONPATH": importable_path()}},
            log_to_driver=False,
        )
        return ray

    def shutdown(self) -> None:
        import ray

        try:
            if ray.is_initialized():
                ray.shutdown()
        finally:
            try:
                if self._cluster is not None:
                    self._cluster.shutdown()
            finally:
                self._cluster = None
                for name, value in self._saved_env.items():
                    if value is None:
                        os.environ.pop(name, None)
                    else:
                        os.environ[name] = value
                self._saved_env.clear()
                if self._root is not None:
                    shutil.rmtree(self._root, ignore_errors=True)
                    self._root = None
                atexit.unregister(self.shutdown)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def _set_env(self, name: str, value: str | None) -> None:
        self._saved_env.setdefault(name, os.environ.get(name))
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value

    # -- inspection ----------------------------------------------------------------------

    @property
    def address(self) -> str:
        return self._cluster.address

    @property
    def head(self) -> Any:
        return self._cluster.head_node

    @staticmethod
    def raylet_pid(node: Any) -> int:
        from ray._private import ray_constants

        return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid

    def node_of_pid(self, pid: int) -> Any | None:
        """The node whose raylet started process ``pid`` (Ray workers are its children)."""
        raylets = {self.raylet_pid(n): n for n in [self.head, *self.workers]}
        for _ in range(8):  # workers are direct children; allow a few levels anyway
            parent = parent_pid(pid)
            if parent is None:
                return None
            if parent in raylets:
                return raylets[parent]
            pid = parent
        return None

    @staticmethod
    def alive_node_ids() -> set[str]:
        import ray

        return {n["NodeID"] for n in ray.nodes() if n["Alive"]}

    # -- faults --------------------------------------------------------------------------

    def kill_node(self, node: Any, *, wait_dead_s: float | None = None) -> list[int]:
        """Lose a machine: SIGKILL the node's raylet and every process it started (its Ray
        workers and agents) at once, without a word to the GCS. Returns the killed pids.

        (Killing only the raylet is gentler than a lost machine: its workers keep running,
        and answering the drivers connected to them, until they notice.) With
        ``wait_dead_s`` (needs a connected driver), wait until the GCS declares the node
        dead. The node's remaining helper processes are reaped either way.
        """
        raylet = self.raylet_pid(node)
        victims = [raylet, *descendants(raylet)]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        node.kill_raylet(check_alive=False)  # reaps the raylet (our child)
        self.workers.remove(node)
        if wait_dead_s is not None:
            wait_for(
                lambda: node.node_id not in self.alive_node_ids(),
                wait_dead_s,
                f"the GCS to declare node {node.node_id[:8]} dead",
            )
        self._cluster.remove_node(node, allow_graceful=False)
        return victims
