"""Inference loops: normalised observations + noise in, normalised action chunk out.

Each loop is a ``diffpol.diffusion.SamplingLoop`` (the interface the ONNX export expects);
``DenoisingLoop`` also describes itself as a ``SamplingLoopSpec`` (``spec``). The loops
take the networks they run, not the policy models, so ``modeling`` can build them.
"""

from __future__ import annotations

import torch
from torch import nn

from diffpol.diffusion import NoiseScheduleConfig, SamplingLoopSpec, make_scheduler
from diffpol.diffusion.embedding import sinusoidal_embedding
from diffpol.diffusion.sampling_loop import Denoiser


def require_step_noise(loop: nn.Module, step_noise: torch.Tensor | None) -> None:
    """A loop that adds fresh noise at some steps must be given it (``step_noise``)."""
    if loop.step_noise_steps and step_noise is None:
        raise ValueError(
            f"this {loop.sampler} loop adds noise at {loop.step_noise_steps} steps: "
            f"pass step_noise [B, {loop.step_noise_steps}, {loop.horizon}, {loop.act_dim}]"
        )


class DenoisingLoop(nn.Module):
    """DDPM or DDIM sampling of a trained denoiser (``diffpol.diffusion.Denoiser``: the
    MLP or the U-Net)."""

    def __init__(
        self,
        denoiser: Denoiser,
        schedule: NoiseScheduleConfig,
        horizon: int,
        act_dim: int,
        sampler: str = "ddim",
        steps: int = 10,
        eta: float = 0.0,
    ) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.scheduler = make_scheduler(schedule, sampler, steps, eta)
        self.sampler = sampler
        self.steps = len(self.scheduler.timesteps)
        self.eta = eta
        self.step_noise_steps = self.scheduler.num_stochastic_steps
        self.horizon, self.act_dim = horizon, act_dim
        self.timesteps: list[int] = list(self.scheduler.timesteps)
        # The sinusoidal features of the (fixed) timesteps; an exporter folds the time
        # term computed from them into constants.
        self.register_buffer(
            "time_features",
            sinusoidal_embedding(
                torch.tensor(self.timesteps, dtype=torch.float32), denoiser.time_embed_dim
            ),
            persistent=False,
        )

    @property
    def spec(self) -> SamplingLoopSpec:
        """This loop in numbers: the denoiser and each step's update, from the scheduler."""
        return SamplingLoopSpec(
            denoiser=self.denoiser,
            time_features=self.time_features,
            updates=self.scheduler.updates(),
            clip_range=self.scheduler.x0_clip_range,
        )

    def forward(
        self,
        obs_norm: torch.Tensor,
        noise: torch.Tensor,
        step_noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        require_step_noise(self, step_noise)
        cond = self.denoiser.encode_condition(obs_norm.flatten(1))
        time_terms = self.denoiser.time_terms(self.time_features)
        x = noise.flatten(1)
        k = 0
        for i, t in enumerate(self.timesteps):
            model_output = self.denoiser.denoise(x, cond, time_terms[i])
            z = None
            if self.scheduler.is_stochastic(t):
                z = step_noise[:, k].flatten(1)
                k += 1
            x = self.scheduler.step(model_output, t, x, noise=z)
        return x.unflatten(1, (self.horizon, self.act_dim))


class RegressionLoop(nn.Module):
    """BC baseline behind the same interface: the noise inputs do not change the output."""

    sampler = "bc"
    steps = 0
    step_noise_steps = 0

    def __init__(self, model: nn.Module, horizon: int, act_dim: int) -> None:
        """``model`` maps obs [B, To*obs_dim] to the action chunk [B, T*act_dim]."""
        super().__init__()
        self.model = model
        self.horizon, self.act_dim = horizon, act_dim

    def forward(self, obs_norm, noise, step_noise=None) -> torch.Tensor:
        mean = self.model(obs_norm.flatten(1)).unflatten(1, (self.horizon, self.act_dim))
        # Keeps `noise` a used graph input, so every exported policy has the same inputs.
        return mean + 0.0 * noise


class SeedTutorialLoop(nn.Module):
    """The seed tutorial's sampler (``SeedTutorialModel.sample``) behind the same interface."""

    sampler = "seed-tutorial"
    step_noise_steps = 0

    def __init__(self, model: nn.Module, steps: int, horizon: int, act_dim: int) -> None:
        """``model.sample(obs [B, To*obs_dim], noise [B, T*act_dim])`` gives the normalised
        action chunk [B, T*act_dim] in ``steps`` denoiser calls."""
        super().__init__()
        self.model = model
        self.steps = steps
        self.horizon, self.act_dim = horizon, act_dim

    def forward(self, obs_norm, noise, step_noise=None) -> torch.Tensor:
        action_norm = self.model.sample(obs_norm.flatten(1), noise.flatten(1))
        return action_norm.unflatten(1, (self.horizon, self.act_dim))
