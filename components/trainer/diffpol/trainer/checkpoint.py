"""The on-disk form of a training checkpoint (one directory per epoch).

::

    checkpoint.ckpt   Lightning's training state: weights, EMA, optimizer, LR scheduler,
                      loop counters, callback state (the metric history). Resumes training.
    policy.pt         {"ema": state_dict, "model": state_dict}: tensors only.
    config.json       Config (model, optim, train)
    normalizer.json   diffpol.contracts.Normalizer
    meta.json         epochs done, dataset fingerprint and shapes, versions, metric history

Everything is loaded with ``torch.load(..., weights_only=True)`` or as JSON: reading a
checkpoint never unpickles arbitrary objects.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from diffpol.contracts.atomic import atomic_write_json
from diffpol.contracts.errors import ContractError
from diffpol.contracts.normalizer import Normalizer
from diffpol.trainer.config import Config

CHECKPOINT_FORMAT = 1
LIGHTNING_FILE = "checkpoint.ckpt"
POLICY_FILE = "policy.pt"
CONFIG_FILE = "config.json"
NORMALIZER_FILE = "normalizer.json"
META_FILE = "meta.json"


class CheckpointError(ContractError):
    """A checkpoint directory that is incomplete, of another format, or unreadable."""


def package_versions() -> dict[str, str]:
    import lightning
    import numpy
    import ray

    from diffpol.trainer import __version__

    return {
        "diffpol.trainer": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "ray": ray.__version__,
        "numpy": numpy.__version__,
    }


@dataclass(frozen=True)
class CheckpointMeta:
    epochs_completed: int
    epochs_total: int
    global_step: int
    # TrainingData.describe(): fingerprint, env, shapes, bounds, rows.
    data: dict[str, Any]
    versions: dict[str, str]
    # One row per epoch trained so far, in epoch order (see metrics.METRIC_COLUMNS).
    history: list[dict[str, Any]] = field(default_factory=list)
    format: int = CHECKPOINT_FORMAT

    @property
    def completed(self) -> bool:
        return self.epochs_completed >= self.epochs_total

    @property
    def fingerprint(self) -> str:
        return self.data["fingerprint"]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "epochs_completed": self.epochs_completed,
            "epochs_total": self.epochs_total,
            "completed": self.completed,
            "global_step": self.global_step,
            "data": self.data,
            "versions": self.versions,
            "history": self.history,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> CheckpointMeta:
        if raw.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(
                f"checkpoint format {raw.get('format')!r} is not supported "
                f"(expected {CHECKPOINT_FORMAT})"
            )
        return cls(
            epochs_completed=int(raw["epochs_completed"]),
            epochs_total=int(raw["epochs_total"]),
            global_step=int(raw["global_step"]),
            data=dict(raw["data"]),
            versions=dict(raw["versions"]),
            history=list(raw["history"]),
        )


def write_sidecars(
    directory: Path, config: Config, normalizer: Normalizer, meta: CheckpointMeta
) -> None:
    atomic_write_json(directory / CONFIG_FILE, config.to_json())
    normalizer.save(directory / NORMALIZER_FILE)
    atomic_write_json(directory / META_FILE, meta.to_json())


def save_policy_weights(directory: Path, model: torch.nn.Module, ema: torch.nn.Module) -> Path:
    path = directory / POLICY_FILE
    torch.save({"model": model.state_dict(), "ema": ema.state_dict()}, path)
    return path


@dataclass(frozen=True)
class CheckpointContents:
    directory: Path
    config: Config
    normalizer: Normalizer
    meta: CheckpointMeta


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{path.parent} is not a complete diffpol checkpoint: {path.name} is missing"
        ) from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc


def read_checkpoint(directory: str | Path) -> CheckpointContents:
    """Config, normaliser and metadata of a checkpoint (JSON only; no weights)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    try:
        config = Config.from_json(_read_json(directory / CONFIG_FILE))
        meta = CheckpointMeta.from_json(_read_json(directory / META_FILE))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, CheckpointError):
            raise
        raise CheckpointError(f"{directory}: malformed checkpoint metadata: {exc!r}") from exc
    normalizer = Normalizer.load(directory / NORMALIZER_FILE)
    return CheckpointContents(directory, config, normalizer, meta)


def load_policy_weights(directory: str | Path) -> dict[str, dict[str, torch.Tensor]]:
    path = Path(directory) / POLICY_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{directory} is not a complete diffpol checkpoint: {POLICY_FILE} is missing"
        )
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise CheckpointError(f"{path} cannot be loaded as plain tensors: {exc}") from exc
    if not isinstance(weights, dict) or {"model", "ema"} - weights.keys():
        raise CheckpointError(f"{path} must hold a dict with 'model' and 'ema' state dicts")
    return weights


def verify_checkpoint_files(directory: str | Path) -> None:
    """Both weight files load as plain tensors (a complete copy, not a truncated or
    tampered one); raises CheckpointError naming the file otherwise."""
    load_policy_weights(directory)
    path = Path(directory) / LIGHTNING_FILE
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(
            f"{directory} is not a complete diffpol checkpoint: {LIGHTNING_FILE} is missing"
        ) from None
    except Exception as exc:  # as in load_policy_weights
        raise CheckpointError(f"{path} cannot be loaded as plain tensors: {exc}") from exc
