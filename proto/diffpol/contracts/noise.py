"""The one noise stream every sampler uses, so in-process and remote policies agree exactly,
and the one way seeds of independent streams are derived from a run's seed."""

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


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for the stream ``keys`` (e.g. rank, epoch) of a run seeded ``seed``.

    ``SeedSequence`` hashes the keys into well-mixed, independent streams: unlike
    ``seed * prime + key`` arithmetic, two (seed, keys) pairs never share a stream by
    accident."""
    if seed < 0 or any(key < 0 for key in keys):
        raise ValueError(f"seed and keys must be >= 0, got {seed} and {keys}")
    state = np.random.SeedSequence(seed, spawn_key=keys).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))
