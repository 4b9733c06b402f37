"""Run the end-to-end pipeline command line as a subprocess, as a user (or a scheduler that
restarts failed jobs) would.

The contract the tests rely on (``python -m diffpol.pipeline.main``):

- flags ``--preset quick``, ``--out DIR``, ``--address ADDR`` (join a running Ray cluster),
  ``--seed N``; running the same command again resumes or returns the finished run;
- outputs ``DIR/metrics.csv`` (one row per epoch, column ``epoch``), ``DIR/summary.json``
  and ``DIR/policy.onnx``; one Ray Train run under ``DIR/checkpoints/<run>/`` trains every
  policy and keeps a checkpoint ``<policy>_epoch_<n>/`` per policy and epoch, holding a
  directory per policy trained so far, each with the trainer's ``meta.json``;
- fault injection: ``DIFFPOL_FAULT_KILL_WORKER_AT_EPOCH=<epoch>`` makes the pipeline add
  ``diffpol.trainer.faults.KillWorkerOnce(marker, epoch)`` to the training workers, with
  ``marker`` = ``DIFFPOL_FAULT_MARKER`` (the file it writes when it fires).
"""

from __future__ import annotations

import csv
import fnmatch
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from cluster import importable_path

MAIN_MODULE = "diffpol.pipeline.main"
# Bound on one quick pipeline run: about 6 minutes measured on the shared 2-core machine at
# load average 15-25.
RUN_TIMEOUT_S = 600
KILL_WORKER_ENV = "DIFFPOL_FAULT_KILL_WORKER_AT_EPOCH"
FAULT_MARKER_ENV = "DIFFPOL_FAULT_MARKER"


@dataclass(frozen=True)
class PipelineRun:
    args: tuple[str, ...]
    returncode: int
    output: str  # stdout and stderr, interleaved
    seconds: float

    def check(self) -> PipelineRun:
        if self.returncode != 0:
            raise AssertionError(
                f"pipeline {' '.join(self.args)} exited {self.returncode} after "
                f"{self.seconds:.0f} s; last output:\n{self.output[-6000:]}"
            )
        return self


class PipelineRunner:
    """``runner(args, cwd, timeout)`` runs the pipeline to the end; ``runner.start`` gives
    the running process for tests that kill it."""

    def __init__(self, default_cwd: str | Path) -> None:
        self.default_cwd = Path(default_cwd)
        self._runs = 0

    def command(self, args: Sequence[str]) -> list[str]:
        return [sys.executable, "-m", MAIN_MODULE, *args]

    def _env(self, env: Mapping[str, str] | None) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": importable_path(), **(env or {})}

    def start(
        self,
        args: Sequence[str],
        cwd: str | Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> tuple[subprocess.Popen, Path]:
        """Start the pipeline; returns the process and the file its output goes to."""
        cwd = Path(cwd or self.default_cwd)
        self._runs += 1
        log = cwd / f"pipeline-{self._runs}.log"
        with open(log, "wb") as sink:  # the child keeps its own descriptor
            process = subprocess.Popen(
                self.command(args),
                cwd=cwd,
                env=self._env(env),
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        return process, log

    def __call__(
        self,
        args: Sequence[str],
        cwd: str | Path | None = None,
        timeout: float = RUN_TIMEOUT_S,
        env: Mapping[str, str] | None = None,
    ) -> PipelineRun:
        start = time.monotonic()
        process, log = self.start(args, cwd, env)
        returncode = wait(process, log, timeout)
        return PipelineRun(
            tuple(args), returncode, log.read_text(errors="replace"), time.monotonic() - start
        )


def wait(process: subprocess.Popen, log: Path, timeout: float) -> int:
    """The pipeline's exit status; past ``timeout`` it is killed and the test fails with its
    last output."""
    try:
        return process.wait(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        stop(process)
        raise AssertionError(
            f"pipeline {' '.join(process.args[3:])} did not finish within {timeout:g} s; "
            "last output:\n" + log.read_text(errors="replace")[-6000:]
        ) from None


def pipeline_args(address: str, out: Path, seed: int = 0) -> list[str]:
    return ["--preset", "quick", "--address", address, "--out", str(out), "--seed", str(seed)]


def _policy_of(checkpoint_dir_name: str) -> str:
    return checkpoint_dir_name.rsplit("_epoch_", 1)[0]


def checkpoints(out: Path, policy: str = "*") -> list[Path]:
    """The policy's epoch checkpoints in the run's Ray Train storage: of each
    ``<policy>_epoch_<n>/`` directory, the ``<policy>/`` state it was reported for (it
    holds meta.json)."""
    found = []
    for report in Path(out).glob(f"checkpoints/*/{policy}_epoch_*"):
        state = report / _policy_of(report.name)
        if (state / "meta.json").is_file():
            found.append(state)
    return sorted(found)


def committed_checkpoints(out: Path, policy: str = "*") -> list[Path]:
    """Like ``checkpoints``, for the checkpoints Ray Train has registered (listed in its
    checkpoint_manager_snapshot.json, Ray 2.60's record), not merely written: a rerun can
    resume only from these."""
    found = []
    for snapshot in sorted(Path(out).glob("checkpoints/*/checkpoint_manager_snapshot.json")):
        try:
            results = json.loads(snapshot.read_text()).get("checkpoint_results", [])
        except (OSError, json.JSONDecodeError):
            continue  # being written
        for result in results:
            name = result["checkpoint_dir_name"]
            if not fnmatch.fnmatchcase(_policy_of(name), policy):
                continue
            state = snapshot.parent / name / _policy_of(name)
            if (state / "meta.json").is_file():
                found.append(state)
    return found


def check_outputs(out: Path) -> list[int]:
    """The run's outputs are complete: every epoch once in metrics.csv, a summary, and a
    policy.onnx that loads and acts. Returns the epochs."""
    from diffpol.sampler import OnnxPolicy

    with open(out / "metrics.csv") as f:
        epochs = [int(row["epoch"]) for row in csv.DictReader(f)]
    assert epochs and epochs == list(range(len(epochs))), f"epochs in metrics.csv: {epochs}"
    summary = json.loads((out / "summary.json").read_text())
    assert isinstance(summary, dict) and summary, "summary.json is empty"
    policy = OnnxPolicy(out / "policy.onnx")
    spec = policy.spec
    actions = policy.act(np.zeros((2, spec.n_obs_steps, spec.obs_dim), np.float32), seed=0)
    assert actions.shape == (2, spec.n_action_steps, spec.act_dim)
    assert np.isfinite(actions).all()
    return epochs


def stop(process: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal one process (never its group: its Ray workers belong to the cluster)."""
    if process.poll() is None:
        process.send_signal(sig)
        process.wait(timeout=30)
