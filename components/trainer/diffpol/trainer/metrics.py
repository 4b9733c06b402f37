"""Per-epoch metrics: the CSV, the loss plot and TensorBoard scalars.

The metric history travels inside every checkpoint, so after a resume the CSV and the
plot are rebuilt from it: each epoch appears exactly once, including epochs whose
checkpoints were later deleted (``result.metrics_dataframe`` only keeps those).
"""

from __future__ import annotations

import csv
import io
import math
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from diffpol.contracts.atomic import atomic_write_bytes

METRIC_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "lr",
    "global_step",
    "epoch_time_s",
    "train_samples_per_s",
)
METRICS_CSV = "metrics.csv"
LOSS_PLOT = "loss.png"
TENSORBOARD_DIR = "tensorboard"


def write_metrics_csv(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in sorted(history, key=lambda r: r["epoch"]):
        writer.writerow({k: _csv_value(row.get(k)) for k in METRIC_COLUMNS})
    return atomic_write_bytes(path, buffer.getvalue().encode())


def _csv_value(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return value


# matplotlib is not thread-safe (its mathtext parser, used by log-scale tick labels, fails
# when two threads draw at once), and the pipeline's concurrent training runs each plot
# their losses from their own thread.
_PLOT_LOCK = threading.Lock()


def plot_losses(history: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    with _PLOT_LOCK:
        return _plot_losses(history, path, title)


def _plot_losses(history: Sequence[dict[str, Any]], path: str | Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    rows = sorted(history, key=lambda r: r["epoch"])
    epochs = [r["epoch"] for r in rows]
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    for key, label in (("train_loss", "train"), ("val_loss", "val (EMA)")):
        values = [r.get(key) for r in rows]
        points = [
            (e, v)
            for e, v in zip(epochs, values, strict=True)
            if v is not None and not math.isnan(v)
        ]
        if points:
            axes.plot(*zip(*points, strict=True), marker="o", label=label)
    axes.set_xlabel("epoch")
    axes.set_ylabel("loss (MSE)")
    axes.set_yscale("log")
    axes.set_title(title or "training loss per epoch")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return atomic_write_bytes(path, buffer.getvalue())


class TensorBoardScalars:
    """Scalars per epoch; ``purge_step`` drops events a crashed attempt logged at or after
    the epoch training resumes from, so re-run epochs are not shown twice."""

    def __init__(self, log_dir: str | Path, purge_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def log(self, row: dict[str, Any]) -> None:
        for key in METRIC_COLUMNS[1:]:
            value = row.get(key)
            if isinstance(value, (int, float)) and not math.isnan(value):
                self._writer.add_scalar(key, value, global_step=row["epoch"])
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def format_epoch_line(row: dict[str, Any], epochs_total: int) -> str:
    def number(key: str, fmt: str) -> str:
        value = row.get(key)
        return (
            "-"
            if value is None or (isinstance(value, float) and math.isnan(value))
            else format(value, fmt)
        )

    return (
        f"epoch {row['epoch'] + 1}/{epochs_total}: train_loss {number('train_loss', '.5f')} "
        f"val_loss {number('val_loss', '.5f')} lr {number('lr', '.2e')} "
        f"{number('train_samples_per_s', ',.0f')} samples/s {number('epoch_time_s', '.1f')} s"
    )
