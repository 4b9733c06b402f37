"""Inference loops: normalised observations + noise in, normalised action chunk out.

Each loop is an ``nn.Module`` with the interface the ONNX export expects::

    forward(obs_norm [B, To, obs_dim], noise [B, T, act_dim],
            step_noise [B, K, T, act_dim] | None = None) -> action_norm [B, T, act_dim]

and the attributes ``sampler`` (str), ``steps`` (int) and ``step_noise_steps`` (K, 0 when
the loop draws no noise after the initial sample). The loops are unrolled in Python with
Python-float coefficients, so tracing them yields a static graph with constants.
"""

from __future__ import annotations

import torch
from torch import nn

from diffpol.trainer.modeling import (
    BCPolicyModel,
    DiffusionPolicyModel,
    SeedTutorialModel,
    sinusoidal_embedding,
)
from diffpol.trainer.schedulers import make_scheduler


class DenoisingLoop(nn.Module):
    """DDPM or DDIM sampling of a trained ``ConditionalMLPDenoiser``."""

    def __init__(
        self,
        model: DiffusionPolicyModel,
        sampler: str = "ddim",
        steps: int = 10,
        eta: float = 0.0,
    ) -> None:
        super().__init__()
        config = model.config
        self.denoiser = model.denoiser
        self.scheduler = make_scheduler(config.schedule, sampler, steps, eta)
        self.sampler = sampler
        self.steps = len(self.scheduler.timesteps)
        self.eta = eta
        self.step_noise_steps = self.scheduler.num_stochastic_steps
        self.horizon, self.act_dim = config.horizon, model.act_dim
        self.n_obs_steps, self.obs_dim = config.n_obs_steps, model.obs_dim
        self.timesteps: list[int] = list(self.scheduler.timesteps)
        # The sinusoidal features of the (fixed) timesteps; an exporter folds the time
        # term computed from them into constants.
        self.register_buffer(
            "time_features",
            sinusoidal_embedding(
                torch.tensor(self.timesteps, dtype=torch.float32), self.denoiser.time_embed_dim
            ),
            persistent=False,
        )

    @classmethod
    def from_model(cls, model: DiffusionPolicyModel, **kwargs) -> DenoisingLoop:
        return cls(model, **kwargs)

    def forward(
        self,
        obs_norm: torch.Tensor,
        noise: torch.Tensor,
        step_noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.step_noise_steps and step_noise is None:
            raise ValueError(
                f"this {self.sampler} loop adds noise at {self.step_noise_steps} steps: "
                f"pass step_noise [B, {self.step_noise_steps}, {self.horizon}, {self.act_dim}]"
            )
        cond = self.denoiser.encode_condition(obs_norm.flatten(1))
        time_terms = self.denoiser.in_time(self.time_features)
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

    def __init__(self, model: BCPolicyModel) -> None:
        super().__init__()
        self.model = model
        self.horizon, self.act_dim = model.config.horizon, model.act_dim

    def forward(self, obs_norm, noise, step_noise=None) -> torch.Tensor:
        mean = self.model(obs_norm.flatten(1)).unflatten(1, (self.horizon, self.act_dim))
        # Keeps `noise` a used graph input, so every exported policy has the same inputs.
        return mean + 0.0 * noise


class SeedTutorialLoop(nn.Module):
    """The seed tutorial's sampler: x = noise; 50 times x -= 0.1 * eps_hat(obs/pi, x, t)."""

    sampler = "seed-tutorial"
    step_noise_steps = 0

    def __init__(self, model: SeedTutorialModel) -> None:
        super().__init__()
        self.model = model
        self.steps = model.SAMPLING_STEPS
        self.horizon, self.act_dim = model.config.horizon, model.act_dim

    def forward(self, obs_norm, noise, step_noise=None) -> torch.Tensor:
        obs = self.model.tutorial_obs(obs_norm.flatten(1))
        x = noise.flatten(1)
        for step in reversed(range(self.steps)):
            t = torch.full((1,), float(step), device=x.device)
            x = x - self.model.STEP_SIZE * self.model(obs, x, t)
        action_norm = (x - self.model.act_center) / self.model.act_scale
        return action_norm.unflatten(1, (self.horizon, self.act_dim))
