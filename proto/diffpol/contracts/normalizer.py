"""Per-dimension normalisation of observations and actions, as a small versioned JSON artifact.

Both modes are affine, ``x_norm = (x - center) / scale``, so a consumer (the ONNX export, a
torch module) needs only ``center`` and ``scale``:

- ``minmax``: maps [min, max] to [-1, 1]; the mode diffusion policies use for actions,
  whose noise schedule assumes data in [-1, 1].
- ``standard``: zero mean, unit variance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from diffpol.contracts.atomic import atomic_write_json
from diffpol.contracts.errors import ContractError

NORMALIZER_VERSION = 1
Mode = Literal["minmax", "standard"]
# A dimension that never varies must not divide by zero; it maps to 0.
_MIN_SCALE = 1e-6


@dataclass(frozen=True)
class AffineNormalizer:
    mode: Mode
    center: tuple[float, ...]
    scale: tuple[float, ...]

    @classmethod
    def from_stats(
        cls,
        mode: Mode,
        *,
        min: np.ndarray | None = None,
        max: np.ndarray | None = None,
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
    ) -> AffineNormalizer:
        if mode == "minmax":
            lo, hi = np.asarray(min, np.float64), np.asarray(max, np.float64)
            center, scale = (hi + lo) / 2, (hi - lo) / 2
        elif mode == "standard":
            center, scale = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        else:
            raise ContractError(f"unknown normalizer mode {mode!r}: use 'minmax' or 'standard'")
        scale = np.maximum(scale, _MIN_SCALE)
        return cls(mode, tuple(map(float, center)), tuple(map(float, scale)))

    @property
    def dim(self) -> int:
        return len(self.center)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        return ((x - np.asarray(self.center)) / np.asarray(self.scale)).astype(np.float32)

    def unnormalize(self, x: np.ndarray) -> np.ndarray:
        return (x * np.asarray(self.scale) + np.asarray(self.center)).astype(np.float32)


@dataclass(frozen=True)
class Normalizer:
    obs: AffineNormalizer
    action: AffineNormalizer

    def to_json(self) -> dict:
        return {
            "version": NORMALIZER_VERSION,
            "obs": {"mode": self.obs.mode, "center": self.obs.center, "scale": self.obs.scale},
            "action": {
                "mode": self.action.mode,
                "center": self.action.center,
                "scale": self.action.scale,
            },
        }

    @classmethod
    def from_json(cls, raw: dict) -> Normalizer:
        version = raw.get("version")
        if version != NORMALIZER_VERSION:
            raise ContractError(
                f"normalizer version {version!r} is not supported (expected {NORMALIZER_VERSION})"
            )
        parts = {}
        for key in ("obs", "action"):
            part = raw.get(key)
            if not isinstance(part, dict) or {"mode", "center", "scale"} - part.keys():
                raise ContractError(f"normalizer.{key} needs mode, center and scale")
            center, scale = np.asarray(part["center"], float), np.asarray(part["scale"], float)
            if center.shape != scale.shape or center.ndim != 1:
                raise ContractError(
                    f"normalizer.{key}: center and scale must be equal-length lists"
                )
            if not (np.isfinite(center).all() and np.isfinite(scale).all() and (scale > 0).all()):
                raise ContractError(f"normalizer.{key}: values must be finite with scale > 0")
            parts[key] = AffineNormalizer(part["mode"], tuple(center), tuple(scale))
        return cls(**parts)

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> Normalizer:
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except json.JSONDecodeError as exc:
            raise ContractError(f"{path} is not a valid normalizer file: {exc}") from exc
