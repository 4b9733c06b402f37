"""The pipeline command's fault hook, for the integration suite.

With ``KILL_WORKER_AT_EPOCH_ENV`` set, the diffusion policy's training worker is SIGKILLed
once at that epoch (``diffpol.trainer.faults.KillWorkerOnce``), and ``FAULT_MARKER_ENV``
names the marker file it writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from diffpol.trainer.faults import KillWorkerOnce

KILL_WORKER_AT_EPOCH_ENV = "DIFFPOL_FAULT_KILL_WORKER_AT_EPOCH"
FAULT_MARKER_ENV = "DIFFPOL_FAULT_MARKER"


def kill_worker_from_env(environ: Mapping[str, str], epochs: int) -> KillWorkerOnce | None:
    """The ``KillWorkerOnce`` the environment asks for (None when it asks for none), for a
    run of ``epochs`` epochs. Raises ValueError for a value that could never fire."""
    raw = environ.get(KILL_WORKER_AT_EPOCH_ENV, "").strip()
    if not raw:
        return None
    try:
        epoch = int(raw)
    except ValueError:
        raise ValueError(
            f"{KILL_WORKER_AT_EPOCH_ENV}={raw!r} is not an epoch number (an integer >= 0)"
        ) from None
    if not 0 <= epoch < epochs:
        raise ValueError(
            f"{KILL_WORKER_AT_EPOCH_ENV}={epoch} is outside the run's epochs 0..{epochs - 1}: "
            "the worker would never be killed"
        )
    marker = environ.get(FAULT_MARKER_ENV, "").strip()
    if not marker:
        raise ValueError(
            f"{KILL_WORKER_AT_EPOCH_ENV} is set but {FAULT_MARKER_ENV} is not: set it to the "
            "file that records the kill (it also keeps the restarted worker alive)"
        )
    # Absolute: Ray Train workers run in their own working directory.
    path = Path(marker).resolve()
    if not path.parent.is_dir():
        raise ValueError(f"{FAULT_MARKER_ENV}={marker}: directory {path.parent} does not exist")
    return KillWorkerOnce(path, epoch)
