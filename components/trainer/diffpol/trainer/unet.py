"""A temporal U-Net denoiser over the action chunk (Chi et al. 2023's ``ConditionalUnet1D``).

The chunk is a 1-D signal: ``act_dim`` channels over ``T`` positions. Each level of the
U-Net is two residual blocks (Conv1d -> GroupNorm -> Mish, twice) at one channel width,
then a stride-2 convolution halving the length; the way up mirrors it with transposed
convolutions and skip connections. Every residual block is FiLM-conditioned: a per-channel
scale and bias computed from the timestep embedding and the observation window.

Chi et al. compute each block's FiLM parameters as ``Linear(Mish(concat(t_emb, obs)))``.
Mish acts elementwise, so that equals ``W_t Mish(t_emb) + W_o Mish(obs) + b``; the two
terms are kept apart (and all blocks' rows stacked into one matrix each) so that a sampler
computes the observation term once per call and the timestep term from constants, as for
the MLP (``encode_condition``, ``time_terms``, ``denoise``: the interface
``diffpol.diffusion.Denoiser`` that ``sampling.DenoisingLoop`` runs).
"""

from __future__ import annotations

import torch
from torch import nn

from diffpol.diffusion.activations import FastMish
from diffpol.diffusion.embedding import sinusoidal_embedding, sinusoidal_frequencies


class ConvBlock(nn.Module):
    """Conv1d (same length) -> GroupNorm -> Mish: [B, C_in, L] -> [B, C_out, L]."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.norm = nn.GroupNorm(groups, out_channels)
        self.act = FastMish()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class FiLMResidualBlock(nn.Module):
    """Two ``ConvBlock``s with a FiLM between them and a residual connection.

    ``forward(x [B, C_in, L], film [B, 2*C_out]) -> [B, C_out, L]``: ``film`` holds the
    per-channel scale (first C_out) and bias (last C_out) applied after the first block.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int):
        super().__init__()
        self.out_channels = out_channels
        self.first = ConvBlock(in_channels, out_channels, kernel_size, groups)
        self.second = ConvBlock(out_channels, out_channels, kernel_size, groups)
        self.residual = (
            nn.Conv1d(in_channels, out_channels, 1)
            if in_channels != out_channels
            else nn.Identity()
        )

    @property
    def film_dim(self) -> int:
        return 2 * self.out_channels

    def forward(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        scale, bias = film.unsqueeze(-1).chunk(2, dim=1)  # [B, C_out, 1] each
        h = self.first(x) * scale + bias
        return self.second(h) + self.residual(x)


class ConditionalUnet1D(nn.Module):
    """Noise (or clean-sample) prediction for a flat action chunk.

    Shapes: ``x_flat`` [B, T*act_dim] (the chunk, time-major), ``obs_flat`` [B, To*obs_dim],
    ``t`` [B] or [1]; output [B, T*act_dim]. Inside, the chunk is [B, act_dim, T] and level
    i of ``down_dims`` runs at length T / 2**i, so T must be divisible by
    2**(len(down_dims) - 1).
    """

    def __init__(
        self,
        act_dim: int,
        horizon: int,
        cond_dim: int,
        time_embed_dim: int,
        down_dims: tuple[int, ...],
        kernel_size: int,
        groups: int,
    ) -> None:
        super().__init__()
        if horizon % 2 ** (len(down_dims) - 1):
            raise ValueError(
                f"horizon {horizon} is not divisible by 2**{len(down_dims) - 1}: a U-Net with "
                f"{len(down_dims)} levels halves the chunk {len(down_dims) - 1} times"
            )
        self.act_dim, self.horizon = act_dim, horizon
        self.time_embed_dim = time_embed_dim
        self.register_buffer("time_freqs", sinusoidal_frequencies(time_embed_dim), persistent=False)
        # Chi et al.'s diffusion-step encoder: sinusoidal -> Linear(4x) -> Mish -> Linear.
        self.time_mlp = nn.Sequential(
            nn.Linear(time_embed_dim, 4 * time_embed_dim),
            FastMish(),
            nn.Linear(4 * time_embed_dim, time_embed_dim),
        )
        self.mish = FastMish()

        def block(c_in: int, c_out: int) -> FiLMResidualBlock:
            return FiLMResidualBlock(c_in, c_out, kernel_size, groups)

        dims = (act_dim, *down_dims)
        levels = len(down_dims)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for i in range(levels):
            self.down.append(
                nn.ModuleList([block(dims[i], dims[i + 1]), block(dims[i + 1], dims[i + 1])])
            )
            if i < levels - 1:
                self.downsample.append(nn.Conv1d(dims[i + 1], dims[i + 1], 3, stride=2, padding=1))
        self.mid = nn.ModuleList([block(down_dims[-1], down_dims[-1]) for _ in range(2)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(1, levels)):
            # Input: the path from below concatenated with level i's output (the skip at
            # this length), dims[i + 1] channels each.
            self.up.append(
                nn.ModuleList([block(2 * dims[i + 1], dims[i]), block(dims[i], dims[i])])
            )
            self.upsample.append(nn.ConvTranspose1d(dims[i], dims[i], 4, stride=2, padding=1))
        self.final = nn.Sequential(
            ConvBlock(down_dims[0], down_dims[0], kernel_size, groups),
            nn.Conv1d(down_dims[0], act_dim, 1),
        )
        self.blocks: list[FiLMResidualBlock] = [
            b for pair in (*self.down, self.mid, *self.up) for b in pair
        ]
        film_dim = sum(b.film_dim for b in self.blocks)
        # All blocks' FiLM rows, stacked: the observation part (with the bias) and the
        # timestep part.
        self.film_cond = nn.Linear(cond_dim, film_dim)
        self.film_time = nn.Linear(time_embed_dim, film_dim, bias=False)

    def encode_condition(self, obs_flat: torch.Tensor) -> torch.Tensor:
        """[B, To*obs_dim] -> the observation's FiLM term [B, F]."""
        return self.film_cond(self.mish(obs_flat))

    def time_terms(self, time_features: torch.Tensor) -> torch.Tensor:
        """Sinusoidal timestep features [S, time_embed_dim] -> FiLM terms [S, F]."""
        return self.film_time(self.mish(self.time_mlp(time_features)))

    def encode_time(self, t: torch.Tensor) -> torch.Tensor:
        return self.time_terms(sinusoidal_embedding(t, self.time_embed_dim, self.time_freqs))

    def denoise(
        self, x_flat: torch.Tensor, cond_term: torch.Tensor, time_term: torch.Tensor
    ) -> torch.Tensor:
        """[B, T*act_dim], [B, F], [F] or [B, F] -> [B, T*act_dim]."""
        film = cond_term + time_term
        films = iter(film.split([b.film_dim for b in self.blocks], dim=1))
        x = x_flat.unflatten(1, (self.horizon, self.act_dim)).transpose(1, 2)  # [B, A, T]
        skips = []
        for i, (first, second) in enumerate(self.down):
            x = second(first(x, next(films)), next(films))
            skips.append(x)
            if i < len(self.downsample):
                x = self.downsample[i](x)
        for layer in self.mid:
            x = layer(x, next(films))
        # As in Chi et al., the up path takes the skips of levels L-1 .. 1; the first level's
        # output (full length) is not reused.
        for (first, second), upsample in zip(self.up, self.upsample, strict=True):
            x = upsample(
                second(first(torch.cat([x, skips.pop()], dim=1), next(films)), next(films))
            )
        return self.final(x).transpose(1, 2).flatten(1)

    def forward(
        self, x_flat: torch.Tensor, obs_flat: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        return self.denoise(x_flat, self.encode_condition(obs_flat), self.encode_time(t))
