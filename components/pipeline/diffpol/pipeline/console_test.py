"""The training bar follows the epochs the workers have written to metrics.csv."""

from __future__ import annotations

import pytest

from diffpol.pipeline.console import WatchedRun, epoch_progress
from diffpol.trainer.metrics import write_metrics_csv


def test_the_bar_counts_the_epochs_written_so_far(tmp_path, capsys):
    runs = [WatchedRun("diffusion", tmp_path / "d.csv", 2), WatchedRun("bc", tmp_path / "b.csv", 1)]
    write_metrics_csv(
        [{"epoch": 0, "train_loss": 0.5}, {"epoch": 1, "train_loss": 0.25}], runs[0].metrics_csv
    )
    with epoch_progress(runs):
        pass  # bc has written nothing yet
    err = capsys.readouterr().err
    assert "2/3" in err
    assert "policy=diffusion" in err and "loss=0.25" in err


def test_the_bar_counts_optimizer_steps_across_policies_of_different_epoch_lengths(
    tmp_path, capsys
):
    runs = [
        WatchedRun("diffusion", tmp_path / "d.csv", 2, steps_per_epoch=400),
        WatchedRun("ten-demos", tmp_path / "t.csv", 20, steps_per_epoch=40),
    ]
    write_metrics_csv([{"epoch": 0, "train_loss": 0.5}], runs[0].metrics_csv)
    with epoch_progress(runs):
        pass
    assert "400/1600" in capsys.readouterr().err


def test_a_run_without_epochs_is_refused(tmp_path):
    with pytest.raises(ValueError, match="epochs"):
        WatchedRun("diffusion", tmp_path / "d.csv", 0)
