"""The one noise stream every sampler uses, so in-process and remote policies agree exactly."""

from __future__ import annotations

import numpy as np


def draw_noise(seed: int | None, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal float32 noise; the same seed and shape give the same array anywhere."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape, dtype=np.float32)


def draw_sampler_noise(
    seed: int | None, batch: int, horizon: int, act_dim: int, step_noise_steps: int = 0
) -> tuple[np.ndarray, np.ndarray | None]:
    """Inputs of an exported sampler graph for one call.

    ``noise`` [B, T, act_dim] is the initial sample x_T; ``step_noise`` [B, K, T, act_dim]
    feeds the K stochastic updates of DDPM (or DDIM with eta > 0) and is None for a
    deterministic sampler. One generator draws both, in that order.
    """
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((batch, horizon, act_dim), dtype=np.float32)
    step_noise = None
    if step_noise_steps:
        shape = (batch, step_noise_steps, horizon, act_dim)
        step_noise = rng.standard_normal(shape, dtype=np.float32)
    return noise, step_noise
