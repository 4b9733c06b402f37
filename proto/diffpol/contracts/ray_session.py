"""The one way diffpol connects to Ray, with Ray 2.60's noise handled at the source.

- A Ray that is already initialised (a test fixture, a notebook, the pipeline's session
  around a library call) is used as it is: its runtime env and options are its owner's.
- ``address`` connects to a running cluster.
- Otherwise a local Ray is started for the call and shut down after it, so a library
  call never leaves a Ray behind. Ray 2.60 enables
  token authentication for new local clusters and, the first time, writes the token to
  ``~/.ray/auth_token``. We leave that as Ray does it (an in-memory token would need
  Ray's private config-reload API, since ``import ray`` already read the auth mode);
  set ``RAY_AUTH_MODE`` / ``RAY_AUTH_TOKEN_PATH`` to choose otherwise.
- Local workers import what this process imports: ``PYTHONPATH`` is this process's
  ``sys.path`` (a pex or a test runner puts entries there that the inherited
  ``PYTHONPATH`` alone does not hold). A cluster's workers keep their own environment.
- Ray Train V2's PlacementGroupCleaner polls the State API every second; without
  ``ray[default]`` the dashboard (which serves that API) cannot run, and every poll logs
  "Failed to query Ray Train Controller actor state" (about 100 lines in a short run).
  The cleaner still works (it only matters if the controller dies), so the setup hook
  below lowers that one logger to ERROR in the workers of our job.
- Ray Train V2's controller polls the workers every 2 s, and a worker's ``report`` waits
  while its previous report is uncollected (a queue of one): a run that checkpoints
  every ~1 s epoch waited ~1 s per epoch, as long as the epoch itself. Our jobs poll
  every ``TRAIN_POLL_INTERVAL_S`` (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``).
- A local Ray has no node that a cloud provider can preempt, so Ray Train's preemption
  watcher (an actor process per run) is turned off there; on a cluster (``address``) it
  stays on. Every process counts on a laptop: a Ray Train run starts ~5 of them.
- A local Ray listens on loopback only. Ray 2.60 binds its servers (GCS, raylet, object
  manager, workers' gRPC servers, its agents) to the node IP, and to all interfaces
  unless that IP is a loopback one; on Linux the node IP is the machine's address, and
  ``ray.init(_node_ip_address="127.0.0.1")`` is rewritten to it (``resolve_ip_for_localhost``).
  Ray keeps a local node on loopback where clusters are off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``,
  the default on macOS and Windows), a switch Ray reads once, at ``import ray``: so for a
  local start this module sets that variable (which Ray's own processes inherit) and Ray's
  copy of it for the session's duration (``local_only``). Token authentication (Ray's
  default for new local clusters) stays on, the dashboard off. ``ray_session_test.py``
  checks with a socket listing that no Ray process listens beyond loopback.
- Values the user set in the environment win over all of the above.
- Ray's own console output (driver loggers, Ray Data's progress, worker output streamed
  to the driver) goes to ``log_file`` when one is given (``ray_logs``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from diffpol.contracts.ray_logs import ray_logs_to, worker_output_to

_QUIET_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)
TRAIN_POLL_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
TRAIN_POLL_INTERVAL_S = 0.2
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"
# Ray's switch for multi-node clusters (off: the node IP is loopback); see local_only.
RAY_CLUSTERS_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@dataclasses.dataclass(frozen=True)
class RaySessionConfig:
    """How to reach Ray when none is running yet.

    ``address``: a cluster to join (``auto``, ``ray://host:10001``); ``None`` starts a local
    Ray with ``num_cpus`` CPUs (default: all). ``log_to_driver``: stream worker output to
    this process. ``log_file``: where Ray's console output goes (``None``: the console).
    """

    address: str | None = None
    num_cpus: int | None = None
    log_to_driver: bool = True
    log_file: Path | None = None

    def __post_init__(self) -> None:
        if self.num_cpus is not None and self.num_cpus < 1:
            raise ValueError(f"num_cpus must be >= 1, got {self.num_cpus}")
        if self.address is not None and not self.address:
            raise ValueError("address must be non-empty (None starts a local Ray)")


def quiet_ray_train_internals() -> None:
    """``worker_process_setup_hook``: silence Ray-internal noise that needs no action."""
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # Raised by Ray Train's own default DataConfig (ray 2.60), not by anything we pass.
    warnings.filterwarnings("ignore", message=".*exclude_resources.*is deprecated.*")


def importable_path() -> str:
    """This process's import path, as a ``PYTHONPATH`` for local workers."""
    entries = [p for p in sys.path if p and os.path.exists(p)]
    return os.pathsep.join(dict.fromkeys(entries))


def runtime_env(*, local: bool) -> dict:
    """The runtime env of a Ray this module starts (``local``) or joins."""
    defaults = {TRAIN_POLL_INTERVAL_ENV: str(TRAIN_POLL_INTERVAL_S)}
    if local:
        defaults[PREEMPTION_WATCHER_ENV] = "0"
        defaults["PYTHONPATH"] = importable_path()
    return {
        "worker_process_setup_hook": f"{__name__}.quiet_ray_train_internals",
        "env_vars": {name: os.environ.get(name, value) for name, value in defaults.items()},
    }


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """While it lasts, a Ray started in this process uses 127.0.0.1 as its node IP, so its
    servers listen on loopback only; unless the user set ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``.
    """
    if RAY_CLUSTERS_ENV in os.environ:
        yield
        return
    from ray._private import ray_constants  # Ray's copy of the switch, read at import

    previous = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[RAY_CLUSTERS_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = previous
        os.environ.pop(RAY_CLUSTERS_ENV, None)


@contextlib.contextmanager
def _connected(config: RaySessionConfig) -> Iterator[bool]:
    import ray

    if ray.is_initialized():
        yield False
        return
    local = config.address is None
    with local_only() if local else contextlib.nullcontext():
        ray.init(
            address=config.address,
            num_cpus=config.num_cpus if local else None,
            include_dashboard=False if local else None,
            runtime_env=runtime_env(local=local),
            logging_level=logging.WARNING,
            log_to_driver=config.log_to_driver,
        )
        try:
            yield True
        finally:
            ray.shutdown()


@contextlib.contextmanager
def ray_session(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    log_to_driver: bool = True,
    log_file: str | Path | None = None,
) -> Iterator[bool]:
    """Use the running Ray, or join ``address``, or start a local one; yield whether this
    call started (and will stop) Ray. See ``RaySessionConfig`` for the arguments."""
    config = RaySessionConfig(
        address=address,
        num_cpus=num_cpus,
        log_to_driver=log_to_driver,
        log_file=Path(log_file) if log_file is not None else None,
    )
    with contextlib.ExitStack() as stack:
        if config.log_file is not None:
            stack.enter_context(ray_logs_to(config.log_file))  # before Ray logs its start
        started = stack.enter_context(_connected(config))
        if config.log_file is not None:
            stack.enter_context(worker_output_to(config.log_file))
        yield started
