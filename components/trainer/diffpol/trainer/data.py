"""The trainer's view of a preprocess output: validated metadata, a fingerprint, Ray datasets.

Reading and validating ``samples.json`` / ``normalizer.json`` is the preprocess
component's contract code (``diffpol.contracts.samples.load_samples``); this module adds what
training needs on top: a fingerprint that identifies the exact bytes trained on, and the
per-epoch shuffling Ray datasets that feed the workers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffpol.contracts.dataset import fingerprint_files
from diffpol.contracts.samples import (
    NORMALIZER_FILE,
    SAMPLES_FILE,
    Samples,
    load_samples,
    sample_datasets,
)
from diffpol.trainer.config import ModelConfig


@dataclass(frozen=True)
class TrainingData:
    samples: Samples
    # sha256 over samples.json, normalizer.json and every listed Parquet file, by split.
    fingerprint: str

    @property
    def root(self) -> Path:
        return self.samples.root

    @property
    def info(self):
        return self.samples.info

    def describe(self) -> dict[str, Any]:
        """What a checkpoint records about its data (JSON)."""
        info = self.info
        return {
            "path": str(self.root),
            "fingerprint": self.fingerprint,
            **info.env.to_json(),
            **info.window.to_json(),
            "label": info.label,
            "train_rows": info.train.rows,
            "val_rows": info.val.rows,
            "sources": [s.get("fingerprint") for s in info.sources],
        }


def open_training_data(samples_dir: str | Path) -> TrainingData:
    """Validate a preprocess output (raises ContractError, a ValueError, naming the problem)."""
    samples = load_samples(samples_dir)
    return TrainingData(samples, fingerprint_samples(samples))


def fingerprint_samples(samples: Samples) -> str:
    digest = hashlib.sha256()
    for name in (SAMPLES_FILE, NORMALIZER_FILE):
        digest.update(name.encode())
        digest.update((samples.root / name).read_bytes())
    for split in ("train", "val"):
        digest.update(f"{split}:{fingerprint_files(samples.files(split))}".encode())
    return digest.hexdigest()


def check_model_matches(config: ModelConfig, data: TrainingData) -> None:
    """The samples' windows must be the ones the model is built for."""
    window = data.info.window
    # Ta is the model's own choice at inference: any Ta <= T trains on the same samples.
    model = config.window
    if (model.n_obs_steps, model.horizon) != (window.n_obs_steps, window.horizon):
        raise ValueError(
            f"{data.root} holds windows of n_obs_steps={window.n_obs_steps}, "
            f"horizon={window.horizon}, but the model is configured for "
            f"n_obs_steps={model.n_obs_steps}, horizon={model.horizon}: preprocess with "
            "matching window sizes, or set ModelConfig(window=Window(n_obs_steps=..., "
            "horizon=..., n_action_steps=...)) to the samples' values"
        )


def make_ray_datasets(data: TrainingData, seed: int = 0) -> dict[str, Any]:
    """Ray datasets for TorchTrainer: ``train`` (block order reshuffled every epoch) and
    ``val`` when the split has rows.

    Both are materialised once into the object store: every epoch then streams blocks
    from memory instead of re-reading and re-decoding Parquet (the samples of a control
    task are megabytes, e.g. 100k Pendulum rows are ~9 MB).
    """
    from ray.data import RandomSeedConfig

    train, val = sample_datasets(data.samples)
    # Seeded, and a new order at each execution (epoch).
    order = RandomSeedConfig(seed=seed, reseed_after_execution=True)
    datasets = {"train": train.materialize().randomize_block_order(seed=order)}
    if data.info.val.rows > 0:
        datasets["val"] = val.materialize()
    return datasets
