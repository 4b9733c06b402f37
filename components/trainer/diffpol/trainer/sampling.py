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
from diffpol.diffusion.sampling_loop import Denoiser, StepUpdate


def require_step_noise(loop: nn.Module, step_noise: torch.Tensor | None) -> None:
    """A loop that adds fresh noise at some steps must be given it (``step_noise``)."""
    if loop.step_noise_steps and step_noise is None:
        raise ValueError(
            f"this {loop.sampler} loop adds noise at {loop.step_noise_steps} steps: "
            f"pass step_noise [B, {loop.step_noise_steps}, {loop.horizon}, {loop.act_dim}]"
        )


class DenoisingLoop(nn.Module):
    """A sampling loop given as per-step ``StepUpdate``s over one ``Denoiser`` (the MLP or
    the U-Net): step i calls the denoiser at network time ``times[i]`` and applies
    ``updates[i]``. DDPM and DDIM (``from_scheduler``), flow matching's Euler steps and
    consistency sampling are all of this form, and the loop describes itself in numbers
    (``spec``) for the sampler's exporters."""

    def __init__(
        self,
        denoiser: Denoiser,
        sampler: str,
        times: list[float],
        updates: tuple[StepUpdate, ...],
        clip_range: float | None,
        horizon: int,
        act_dim: int,
    ) -> None:
        super().__init__()
        if len(times) != len(updates):
            raise ValueError(f"{len(times)} network times for {len(updates)} updates")
        self.denoiser = denoiser
        self.sampler = sampler
        self.steps = len(updates)
        self.updates = updates
        self.clip_range = clip_range
        self.step_noise_steps = sum(u.stochastic for u in updates)
        self.horizon, self.act_dim = horizon, act_dim
        # The sinusoidal features of the (fixed) times; an exporter folds the time term
        # computed from them into constants.
        self.register_buffer(
            "time_features",
            sinusoidal_embedding(torch.tensor(times, dtype=torch.float32), denoiser.time_embed_dim),
            persistent=False,
        )

    @classmethod
    def from_scheduler(
        cls,
        denoiser: Denoiser,
        schedule: NoiseScheduleConfig,
        horizon: int,
        act_dim: int,
        sampler: str = "ddim",
        steps: int = 10,
        eta: float = 0.0,
    ) -> DenoisingLoop:
        """DDPM or DDIM sampling: the updates of ``make_scheduler(schedule, sampler, steps,
        eta)`` at its timesteps."""
        scheduler = make_scheduler(schedule, sampler, steps, eta)
        return cls(
            denoiser,
            sampler,
            [float(t) for t in scheduler.timesteps],
            scheduler.updates(),
            scheduler.x0_clip_range,
            horizon,
            act_dim,
        )

    @property
    def spec(self) -> SamplingLoopSpec:
        """This loop in numbers: the denoiser, its time features and each step's update."""
        return SamplingLoopSpec(self.denoiser, self.time_features, self.updates, self.clip_range)

    def forward(
        self,
        obs_norm: torch.Tensor,
        noise: torch.Tensor,
        step_noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        require_step_noise(self, step_noise)
        cond = self.denoiser.encode_condition(obs_norm.flatten(1))
        time_terms = self.denoiser.time_terms(self.time_features)
        x, k = noise.flatten(1), 0
        for i, update in enumerate(self.updates):
            output = self.denoiser.denoise(x, cond, time_terms[i])
            z = None
            if update.stochastic:
                z = step_noise[:, k].flatten(1)
                k += 1
            x = update.apply(output, x, self.clip_range, z)
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
