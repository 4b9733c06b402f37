"""Metric outputs: one CSV row per epoch in order, a PNG plot, an epoch log line."""

from __future__ import annotations

import csv
import math
from concurrent.futures import ThreadPoolExecutor

from diffpol.trainer.metrics import (
    METRIC_COLUMNS,
    format_epoch_line,
    plot_losses,
    write_metrics_csv,
)

HISTORY = [
    {"epoch": 1, "train_loss": 0.5, "val_loss": 0.6, "lr": 1e-3, "global_step": 20},
    {"epoch": 0, "train_loss": 0.9, "val_loss": None, "lr": 5e-4, "global_step": 10},
]


def test_csv_has_one_row_per_epoch_in_epoch_order(tmp_path):
    path = write_metrics_csv(HISTORY, tmp_path / "metrics.csv")
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(METRIC_COLUMNS)
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert rows[0]["val_loss"] == "" and rows[1]["val_loss"] == "0.6"


def test_plot_is_a_png_even_without_val_loss(tmp_path):
    history = [{"epoch": 0, "train_loss": 1.0, "val_loss": math.nan}]
    assert plot_losses(history, tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert plot_losses(HISTORY, tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_plots_drawn_from_many_threads_at_once_all_succeed(tmp_path):
    # The pipeline's concurrent training runs plot from their own threads; unguarded,
    # matplotlib's mathtext parser (log-scale tick labels) failed 34 of these 40 draws.
    history = [
        {"epoch": e, "train_loss": 0.1 / (e + 1), "val_loss": 0.2 / (e + 1)} for e in range(20)
    ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        paths = pool.map(lambda k: plot_losses(history, tmp_path / f"{k}.png"), range(40))
        assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_epoch_line_is_one_based_and_tolerates_missing_values():
    line = format_epoch_line(HISTORY[1], epochs_total=5)
    assert line.startswith("epoch 1/5: train_loss 0.90000 val_loss -")
