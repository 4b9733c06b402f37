"""A training worker killed mid-run: Ray Train restarts it from the latest checkpoint."""

from __future__ import annotations

import csv
import dataclasses

from diffpol.contracts import Window
from diffpol.trainer import (
    Config,
    ModelConfig,
    OptimConfig,
    PolicyRun,
    TrainConfig,
    read_checkpoint,
    train,
    train_many,
)
from diffpol.trainer.faults import KillWorkerOnce, RecordTrainingStarts
from diffpol.trainer.synthetic import bimodal_samples, write_samples


def small_run(samples_dir, epochs: int):
    """Samples (400 rows, a quarter held out) and a tiny config that tolerates one failure."""
    obs, action = bimodal_samples(400, seed=5)
    samples = write_samples(samples_dir, obs, action, val_fraction=0.25)
    config = Config(
        model=ModelConfig(window=Window(1, 1), hidden_width=16, depth=1),
        optim=OptimConfig(warmup_steps=1),
        train=TrainConfig(epochs=epochs, batch_size=100, max_failures=1, keep_checkpoints=1),
    )
    return samples, config


def test_a_killed_worker_resumes_and_every_epoch_is_recorded_once(ray_local, tmp_path):
    samples, config = small_run(tmp_path / "samples", epochs=3)
    marker, starts = tmp_path / "killed", tmp_path / "starts"
    result = train(
        samples,
        tmp_path / "out",
        config,
        callbacks=[RecordTrainingStarts(starts), KillWorkerOnce(marker, epoch=1, step=1)],
    )
    assert marker.exists(), "the worker was never killed"
    # The second attempt started at epoch 1, from the checkpoint of epoch 0.
    assert starts.read_text().split() == ["0", "1"]
    with open(result.metrics_csv) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert [int(r["global_step"]) for r in rows] == [3, 6, 9]  # 300 train rows / 100
    assert result.epochs_completed == 3


def test_a_worker_killed_in_a_later_policy_resumes_it_without_retraining_the_first(
    ray_local, tmp_path
):
    samples, base = small_run(tmp_path / "samples", epochs=2)
    bc = dataclasses.replace(base, model=dataclasses.replace(base.model, policy_type="bc"))
    marker = tmp_path / "killed"
    starts = {name: tmp_path / f"starts-{name}" for name in ("bc", "diffusion")}
    results = train_many(
        samples,
        {
            "bc": PolicyRun(bc, tmp_path / "bc", (RecordTrainingStarts(starts["bc"]),)),
            "diffusion": PolicyRun(
                base,
                tmp_path / "diffusion",
                (RecordTrainingStarts(starts["diffusion"]), KillWorkerOnce(marker, epoch=1)),
            ),
        },
    )
    assert marker.exists(), "the worker was never killed"
    # The restarted worker skipped the finished policy and resumed the second at epoch 1.
    assert starts["bc"].read_text().split() == ["0"]
    assert starts["diffusion"].read_text().split() == ["0", "1"]
    for name, result in results.items():
        assert result.epochs_completed == 2, name
        with open(result.metrics_csv) as f:
            assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1], name
        assert read_checkpoint(result.checkpoint_dir).config.model.policy_type == name
