"""The pipeline's driver killed (SIGKILL) after its first training checkpoint, then the same
command run again on the same real local multi-node Ray cluster: the rerun finishes the
run, with every epoch recorded once.

Written against the command-line contract in ``pipeline.py``; skipped only while
``diffpol.trainer.main`` does not exist. A partial and a resumed pipeline run: several
minutes on a shared 2-core machine.
"""

from __future__ import annotations

import signal

import pytest
from cluster import ClusterConfig, wait_for
from pipeline import (
    SKIP_REASON,
    check_outputs,
    committed_checkpoints,
    pipeline_args,
    pipeline_available,
    stop,
)

pytestmark = pytest.mark.skipif(
    not pipeline_available(),
    reason=SKIP_REASON,
)

CLUSTER_CONFIG = ClusterConfig(head_cpus=1, workers=2, cpus_per_worker=1)
RUN_TIMEOUT_S = 540


def test_the_driver_killed_after_the_first_checkpoint_and_rerun_finishes_the_run(
    cluster, run_pipeline, tmp_path
):
    out = tmp_path / "run"
    args = pipeline_args(cluster.address, out)
    process, log = run_pipeline.start(args)
    try:
        wait_for(
            lambda: committed_checkpoints(out) or process.poll() is not None,
            RUN_TIMEOUT_S,
            "the first committed training checkpoint",
            interval_s=0.2,
        )
        assert process.poll() is None, (
            "the pipeline ended before it wrote a checkpoint:\n"
            + log.read_text(errors="replace")[-3000:]
        )
        first = committed_checkpoints(out)[0]
        stop(process, signal.SIGKILL)  # the driver alone: its Ray job ends with it
    finally:
        stop(process, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists(), "a killed run must not publish its outputs"
    # Stages finished before the kill are reused by the rerun, not redone...
    finished = {p: p.stat().st_mtime_ns for p in out.glob("*/manifest.json")}
    finished |= {p: p.stat().st_mtime_ns for p in out.glob("*/samples.json")}
    assert len(finished) == 2, f"the data and samples stages should be done: {sorted(finished)}"
    finished[first / "meta.json"] = (first / "meta.json").stat().st_mtime_ns

    rerun = run_pipeline(args, timeout=RUN_TIMEOUT_S).check()
    epochs = check_outputs(out)
    # ...nor is the epoch checkpointed before the kill trained again (the rerun resumes).
    assert {p: p.stat().st_mtime_ns for p in finished} == finished, "finished work was redone"
    print(
        f"\ndriver killed after {first.relative_to(out)}; the rerun finished "
        f"{len(epochs)} epochs in {rerun.seconds:.0f} s"
    )
