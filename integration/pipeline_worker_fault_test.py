"""A training worker killed mid-epoch while the pipeline command runs on a real local
multi-node Ray cluster: Ray Train replaces it and resumes, and the run completes with
every epoch recorded once.

Written against the command-line contract in ``pipeline.py`` (the fault is injected with
``DIFFPOL_FAULT_KILL_WORKER_AT_EPOCH`` / ``DIFFPOL_FAULT_MARKER``). One pipeline run:
several minutes on a shared 2-core machine.
"""

from __future__ import annotations

import re
import time

from cluster import ClusterConfig, pid_alive, wait_for
from pipeline import (
    FAULT_MARKER_ENV,
    KILL_WORKER_ENV,
    RUN_TIMEOUT_S,
    check_outputs,
    checkpoints,
    pipeline_args,
    stop,
    wait,
)

CLUSTER_CONFIG = ClusterConfig(head_cpus=1, workers=2, cpus_per_worker=1)
KILL_AT_EPOCH = 1


def test_a_training_worker_killed_mid_epoch_is_replaced_and_the_run_completes(
    cluster, run_pipeline, tmp_path
):
    out, marker = tmp_path / "run", tmp_path / "worker-killed.txt"
    env = {KILL_WORKER_ENV: str(KILL_AT_EPOCH), FAULT_MARKER_ENV: str(marker)}
    start = time.monotonic()
    process, log = run_pipeline.start(pipeline_args(cluster.address, out), env=env)
    try:
        # Fail fast if the hook is not wired: the epoch it should have died in got saved.
        wait_for(
            lambda: (
                marker.exists()
                or checkpoints(out, "diffusion")[KILL_AT_EPOCH:]
                or process.poll() is not None
            ),
            RUN_TIMEOUT_S,
            f"a worker kill at epoch {KILL_AT_EPOCH}",
            interval_s=0.5,
        )
        assert marker.exists(), (
            f"no training worker was killed: the pipeline must pass KillWorkerOnce("
            f"${FAULT_MARKER_ENV}, epoch=${KILL_WORKER_ENV}) to train() when {KILL_WORKER_ENV} "
            "is set\n" + log.read_text(errors="replace")[-3000:]
        )
        returncode = wait(process, log, RUN_TIMEOUT_S - (time.monotonic() - start))
    finally:
        stop(process)
    assert returncode == 0, log.read_text(errors="replace")[-6000:]
    found = re.search(r"killed pid (\d+) at epoch (\d+)", marker.read_text())
    assert found and int(found.group(2)) == KILL_AT_EPOCH, marker.read_text()
    assert not pid_alive(int(found.group(1)))
    epochs = check_outputs(out)
    assert len(epochs) > KILL_AT_EPOCH
    print(
        f"\nworker killed at epoch {KILL_AT_EPOCH}; the run finished {len(epochs)} epochs in "
        f"{time.monotonic() - start:.0f} s"
    )
