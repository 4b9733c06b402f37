"""Sinusoidal timestep embedding (Vaswani et al. 2017, as used by Ho et al. 2020)."""

from __future__ import annotations

import math

import torch


def sinusoidal_frequencies(dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """The ``dim // 2`` angular frequencies ``max_period^(-i / (dim // 2))``, float32."""
    half = dim // 2
    return torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)


def sinusoidal_embedding(
    t: torch.Tensor, dim: int, freqs: torch.Tensor | None = None
) -> torch.Tensor:
    """Transformer-style embedding of (float) timesteps [N] -> [N, dim]: sin half, cos half.

    ``freqs`` (``sinusoidal_frequencies(dim)``) may be passed precomputed, e.g. as a buffer
    already on ``t``'s device."""
    if freqs is None:
        freqs = sinusoidal_frequencies(dim).to(t.device)
    angles = t.float()[:, None] * freqs[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
