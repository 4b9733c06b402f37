"""Noise schedules (Ho et al. 2020; Nichol & Dhariwal 2021) and sampling timestep spacing.

Notation (Ho et al.): ``beta_t``, ``alpha_t = 1 - beta_t``, ``abar_t = prod_{s<=t} alpha_s``.

Timestep spacing when sampling with fewer steps than ``num_train_timesteps`` ("leading",
the default): ``t = (n-1)*r, ..., r, 0`` with ``r = T // n``. The chain then never starts at
``t = T-1``, where the cosine schedule's clipped last beta makes ``sqrt(abar)`` about 5e-4:
recovering ``x_0`` there divides by it and amplifies float32 rounding ~2000x, so a single
sample could differ by 1e-4 between PyTorch and ONNX. With
T = 100 and 10 steps the first step is t = 90, where ``1/sqrt(abar)`` is about 7.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

BetaSchedule = Literal["linear", "cosine"]
PredictionType = Literal["epsilon", "sample"]
TimestepSpacing = Literal["leading", "trailing", "linspace"]

# Nichol & Dhariwal (2021): offset s of the cosine schedule and the cap on beta that keeps
# the last step from being a division by ~0.
COSINE_OFFSET = 0.008
COSINE_MAX_BETA = 0.999


@dataclass(frozen=True)
class NoiseScheduleConfig:
    num_train_timesteps: int = 100
    beta_schedule: BetaSchedule = "cosine"
    # Only used by the linear schedule.
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: PredictionType = "epsilon"
    # Clip the x_0 estimate to [-1, 1] at every step: actions are min-max normalised to
    # that range, and the clip keeps early, badly conditioned steps from overshooting.
    clip_sample: bool = True
    clip_sample_range: float = 1.0

    def __post_init__(self) -> None:
        if self.num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {self.num_train_timesteps}")
        if self.beta_schedule not in ("linear", "cosine"):
            raise ValueError(
                f"beta_schedule must be 'linear' or 'cosine', got {self.beta_schedule!r}"
            )
        if self.prediction_type not in ("epsilon", "sample"):
            raise ValueError(
                f"prediction_type must be 'epsilon' or 'sample', got {self.prediction_type!r}"
            )
        if not 0 < self.beta_start <= self.beta_end < 1:
            raise ValueError(
                f"need 0 < beta_start <= beta_end < 1, got {self.beta_start}, {self.beta_end}"
            )
        if self.clip_sample_range <= 0:
            raise ValueError(f"clip_sample_range must be > 0, got {self.clip_sample_range}")


def make_betas(config: NoiseScheduleConfig) -> np.ndarray:
    """beta_0..beta_{T-1} in float64: linear (Ho et al. section 4) or cosine (Nichol &
    Dhariwal eq. 17, ``abar(t) = f(t)/f(0)``, ``f(t) = cos^2((t/T + s)/(1 + s) * pi/2)``)."""
    steps = config.num_train_timesteps
    if config.beta_schedule == "linear":
        return np.linspace(config.beta_start, config.beta_end, steps, dtype=np.float64)

    def f(u: float) -> float:
        return math.cos((u + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2

    # beta_t = 1 - abar(t+1)/abar(t), capped.
    return np.array(
        [min(1 - f((i + 1) / steps) / f(i / steps), COSINE_MAX_BETA) for i in range(steps)],
        dtype=np.float64,
    )


def make_timesteps(num_train: int, num_inference: int, spacing: TimestepSpacing) -> list[int]:
    """Descending, distinct sampling timesteps in [0, num_train)."""
    if not 1 <= num_inference <= num_train:
        raise ValueError(
            f"number of sampling steps must be in [1, {num_train}] (the training "
            f"timesteps), got {num_inference}"
        )
    if spacing == "leading":
        ratio = num_train // num_inference
        steps = [i * ratio for i in range(num_inference)]
    elif spacing == "trailing":
        ratio = num_train / num_inference
        steps = [round(num_train - i * ratio) - 1 for i in range(num_inference)][::-1]
    elif spacing == "linspace":
        steps = [round(x) for x in np.linspace(0, num_train - 1, num_inference)]
    else:
        raise ValueError(
            f"timestep spacing must be 'leading', 'trailing' or 'linspace', got {spacing!r}"
        )
    return sorted({int(s) for s in steps}, reverse=True)
