"""The pipeline's driver killed (SIGKILL) once the diffusion policy's first epoch is
checkpointed, then the same command run again on the same real local multi-node Ray
cluster: the rerun resumes (the finished stages and checkpointed epochs are not redone) and
finishes the run, with every epoch recorded once.

Written against the command-line contract in ``pipeline.py``. A partial and a resumed
pipeline run: several minutes on a shared 2-core machine.
"""

from __future__ import annotations

import json
import signal

from cluster import ClusterConfig, wait_for
from pipeline import (
    RUN_TIMEOUT_S,
    check_outputs,
    committed_checkpoints,
    pipeline_args,
    stop,
)

CLUSTER_CONFIG = ClusterConfig(head_cpus=1, workers=2, cpus_per_worker=1)


def test_the_driver_killed_mid_training_and_rerun_resumes_and_finishes_the_run(
    cluster, run_pipeline, tmp_path
):
    out = tmp_path / "run"
    args = pipeline_args(cluster.address, out)
    process, log = run_pipeline.start(args)
    try:
        # The diffusion policy trains first, for several epochs, then the baselines:
        # killing the driver after its first is killing it mid-training.
        wait_for(
            lambda: committed_checkpoints(out, "diffusion") or process.poll() is not None,
            RUN_TIMEOUT_S,
            "the diffusion policy's first committed checkpoint",
            interval_s=0.2,
        )
        assert process.poll() is None, (
            "the pipeline ended before it wrote a checkpoint:\n"
            + log.read_text(errors="replace")[-3000:]
        )
        stop(process, signal.SIGKILL)  # the driver alone: its Ray job ends with it
    finally:
        stop(process, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    assert not (out / "summary.json").exists(), "a killed run must not publish its outputs"
    # Stages finished before the kill are reused by the rerun, not redone...
    finished = {p: p.stat().st_mtime_ns for p in out.glob("*/manifest.json")}
    finished |= {p: p.stat().st_mtime_ns for p in out.glob("*/samples.json")}
    assert len(finished) == 2, f"the data and samples stages should be done: {sorted(finished)}"
    saved = committed_checkpoints(out)
    finished |= {c / "meta.json": (c / "meta.json").stat().st_mtime_ns for c in saved}
    diffusion_saved = committed_checkpoints(out, "diffusion")
    history_saved = json.loads((diffusion_saved[-1] / "meta.json").read_text())["history"]

    rerun = run_pipeline(args, timeout=RUN_TIMEOUT_S).check()
    epochs = check_outputs(out)
    trained = [
        json.loads(meta.read_text())["epochs_completed"]
        for meta in out.glob("train/*/checkpoint/meta.json")
    ]
    # One committed checkpoint per policy and epoch: fewer than all of them at the kill.
    assert len(saved) < sum(trained), "the kill came after every policy finished training"
    # ...nor are the epochs checkpointed before the kill trained again (the rerun resumes):
    # the diffusion policy's final history starts with the rows saved before the kill
    # (a retrained epoch would have its own times), and the checkpoints committed then
    # and still kept are untouched (Ray Train keeps the latest few).
    history = json.loads((out / "train/diffusion/checkpoint/meta.json").read_text())["history"]
    assert history[: len(history_saved)] == history_saved, "the diffusion policy was retrained"
    kept = {p: t for p, t in finished.items() if p.exists()}
    assert {p: p.stat().st_mtime_ns for p in kept} == kept, "finished work was redone"
    assert all(p in kept for p in finished if "checkpoints" not in p.parts), (
        "the rerun rewrote the data or samples"
    )
    print(
        f"\ndriver killed with {', '.join(str(c.relative_to(out)) for c in saved)} "
        f"checkpointed; the rerun finished {len(epochs)} epochs in {rerun.seconds:.0f} s"
    )
