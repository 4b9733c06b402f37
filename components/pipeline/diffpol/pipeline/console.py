"""What the pipeline shows a person: a line per stage, a bar per long stage.

Training runs in Ray Train's workers, out of the driver's sight; its bar follows the
``metrics.csv`` each policy's rank-0 worker rewrites after every epoch (a file the driver
can read on one machine; on a cluster without a shared filesystem the bar stays still
and the stage's end line still comes).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

POLL_INTERVAL_S = 0.5


def log(message: str) -> None:
    print(f"[diffpol {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def progress_bar(total: int | None, unit: str, desc: str) -> Any:
    """One tqdm bar on stderr, drawn in place (one console line however long it runs)."""
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True)


@dataclasses.dataclass(frozen=True)
class WatchedRun:
    """A policy whose training the bar counts: its live ``metrics.csv``, its epochs and
    optimizer steps per epoch (policies on samples of different sizes have epochs of
    different lengths: the bar counts steps, so its rate and time left hold across them)."""

    name: str
    metrics_csv: Path
    epochs: int
    steps_per_epoch: int = 1

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"{self.name}: epochs must be >= 1, got {self.epochs}")
        if self.steps_per_epoch < 1:
            raise ValueError(f"{self.name}: steps_per_epoch must be >= 1")

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def last_row(self) -> dict[str, str] | None:
        try:
            with open(self.metrics_csv, newline="") as f:
                rows = list(csv.DictReader(f))
        except (OSError, csv.Error):  # not written yet
            return None
        return rows[-1] if rows else None


def _short(value: str | None) -> str:
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return ""


def _update(bar: Any, runs: Sequence[WatchedRun]) -> None:
    done, postfix = 0, {}
    for run in runs:
        row = run.last_row()
        if row is None:
            continue
        done += min(int(row["epoch"]) + 1, run.epochs) * run.steps_per_epoch
        postfix = {"policy": run.name, "loss": _short(row.get("train_loss"))}
    bar.n = done
    bar.set_postfix(postfix, refresh=False)
    bar.refresh()


@contextlib.contextmanager
def epoch_progress(runs: Sequence[WatchedRun]) -> Iterator[None]:
    """A bar of the optimizer steps of ``runs`` (advancing an epoch at a time), refreshed
    from their metrics while the block runs."""
    stop = threading.Event()
    with progress_bar(sum(run.steps for run in runs), "step", "train") as bar:

        def poll() -> None:
            while not stop.wait(POLL_INTERVAL_S):
                _update(bar, runs)

        thread = threading.Thread(target=poll, name="epoch-progress", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            _update(bar, runs)
