"""Fault injection for resilience tests: kill a training worker once, mid-run.

``KillWorkerOnce`` is a Lightning callback: in the given epoch, at the end of the first
block that took the epoch past the given optimizer step (before the epoch's checkpoint, so
the epoch is lost and trained again), it sends SIGKILL to its own process (no cleanup, no
exception: what an OOM kill or a lost node looks like to Ray). A marker file makes it fire
once, so the restarted worker trains on.
The pipeline command (``diffpol.pipeline.faults``) turns it on from the environment.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import lightning.pytorch as pl

from diffpol.trainer.distributed import world_rank


class KillWorkerOnce(pl.Callback):
    def __init__(
        self, marker: str | Path, epoch: int, step: int = 1, rank: int = 0, delay_s: float = 5.0
    ) -> None:
        self.marker = str(marker)
        self.epoch, self.step, self.rank = epoch, step, rank
        # Ray Train V2's controller collects reports by polling the workers: a report still
        # queued on a worker that dies is lost. Waiting lets the previous epoch's checkpoint
        # register, so the test exercises resume-from-checkpoint rather than that race.
        self.delay_s = delay_s
        self._epoch_start_step = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start_step = pl_module.optimizer_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (
            trainer.current_epoch == self.epoch
            and pl_module.optimizer_steps - self._epoch_start_step >= self.step
            and world_rank() == self.rank
            and not os.path.exists(self.marker)
        ):
            Path(self.marker).write_text(f"killed pid {os.getpid()} at epoch {self.epoch}\n")
            time.sleep(self.delay_s)
            os.kill(os.getpid(), signal.SIGKILL)


class RecordTrainingStarts(pl.Callback):
    """Appends the epoch each training attempt starts at (rank 0) to a file: after a
    kill and a resume it reads "0\\n1\\n" for a restart at epoch 1, "0\\n0\\n" for one
    that trained from scratch."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)

    def on_train_start(self, trainer, pl_module) -> None:
        if world_rank() == 0:
            with open(self.path, "a") as f:
                f.write(f"{trainer.current_epoch}\n")
