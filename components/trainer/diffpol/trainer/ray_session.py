"""Connecting to Ray for a training run, with Ray 2.60's noise handled at the source.

- A Ray that is already initialised (a test fixture, a notebook) is used as it is.
- ``address`` connects to a running cluster.
- Otherwise a local Ray is started for the run and shut down after it. Ray 2.60 enables
  token authentication for new local clusters and, the first time, writes the token to
  ``~/.ray/auth_token``. We leave that as Ray does it (an in-memory token would need
  Ray's private config-reload API, since ``import ray`` already read the auth mode);
  set ``RAY_AUTH_MODE`` / ``RAY_AUTH_TOKEN_PATH`` to choose otherwise.
- Ray Train V2's PlacementGroupCleaner polls the State API every second; without
  ``ray[default]`` the dashboard (which serves that API) cannot run, and every poll logs
  "Failed to query Ray Train Controller actor state" (about 100 lines in a short run).
  The cleaner still works (it only matters if the controller dies), so the setup hook
  below lowers that one logger to ERROR in the workers of our job.
- Ray Train V2's controller polls the workers every 2 s, and a worker's ``report`` waits
  while its previous report is uncollected (a queue of one): a run that checkpoints
  every ~1 s epoch waited ~1 s per epoch, as long as the epoch itself. Our jobs poll
  every ``TRAIN_POLL_INTERVAL_S`` (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``; an environment
  value wins).
- A local Ray has no node that a cloud provider can preempt, so Ray Train's preemption
  watcher (an actor process per run) is turned off there; on a cluster (``address``) it
  stays on. Every process counts on a laptop: a Ray Train run starts ~5 of them, and their
  imports, not training, take most of the quick preset's time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator

_QUIET_LOGGERS = ("ray.train.v2._internal.execution.controller.placement_group_cleaner",)
TRAIN_POLL_INTERVAL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
TRAIN_POLL_INTERVAL_S = 0.2
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def quiet_ray_train_internals() -> None:
    """``worker_process_setup_hook``: silence Ray-internal noise that needs no action."""
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # Raised by Ray Train's own default DataConfig (ray 2.60), not by anything we pass.
    warnings.filterwarnings("ignore", message=".*exclude_resources.*is deprecated.*")


def _importable_path() -> str:
    """This process's import path, for local workers (a pex or a test runner may have put
    entries on sys.path that PYTHONPATH alone does not hold)."""
    entries = [p for p in sys.path if p and os.path.exists(p)]
    return os.pathsep.join(dict.fromkeys(entries))


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[bool]:
    """Yield whether this call started (and will stop) Ray."""
    import ray

    if ray.is_initialized():
        yield False
        return
    env_vars = {
        TRAIN_POLL_INTERVAL_ENV: os.environ.get(TRAIN_POLL_INTERVAL_ENV, str(TRAIN_POLL_INTERVAL_S))
    }
    runtime_env: dict = {
        "worker_process_setup_hook": f"{__name__}.quiet_ray_train_internals",
        "env_vars": env_vars,
    }
    if address is None:
        env_vars["PYTHONPATH"] = _importable_path()
        env_vars[PREEMPTION_WATCHER_ENV] = os.environ.get(PREEMPTION_WATCHER_ENV, "0")
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            runtime_env=runtime_env,
            logging_level=logging.WARNING,
        )
    else:
        ray.init(address=address, runtime_env=runtime_env, logging_level=logging.WARNING)
    try:
        yield True
    finally:
        ray.shutdown()
