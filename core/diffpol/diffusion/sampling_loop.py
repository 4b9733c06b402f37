"""The interface of a sampling loop, and the typed description of a denoising loop.

A *sampling loop* is an ``nn.Module`` that maps normalised observations and noise to a
normalised action chunk (``SamplingLoop``). The trainer builds them; the sampler exports
them to ONNX. A *denoising* loop also describes itself (``SamplingLoopSpec``): its
denoiser and, per step, the affine update the scheduler applies (``StepUpdate``), so an
exporter can rebuild the loop from numbers the scheduler computed, without re-deriving or
measuring them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn


class SamplingLoop(Protocol):
    """What the ONNX export expects of a loop::

        forward(obs_norm [B, To, obs_dim], noise [B, T, act_dim],
                step_noise [B, K, T, act_dim] | None = None) -> action_norm [B, T, act_dim]

    ``sampler`` names the sampler ('ddim', 'ddpm', 'bc', ...), ``steps`` counts its denoiser
    calls and ``step_noise_steps`` (K) the steps that add fresh noise (0: ``step_noise`` is
    not used). Loops unroll in Python with Python-float coefficients, so tracing one yields
    a static graph with constants. A denoising loop also has ``spec`` (``SamplingLoopSpec``).
    """

    sampler: str
    steps: int
    step_noise_steps: int

    def __call__(
        self, obs_norm: torch.Tensor, noise: torch.Tensor, step_noise: torch.Tensor | None = None
    ) -> torch.Tensor: ...


class Denoiser(Protocol):
    """A conditional denoiser split by input, so that a sampler computes the observation's
    term once per call and each step's timestep term from constants::

        denoise(x [B, T*act_dim], encode_condition(obs [B, To*obs_dim]) [B, C],
                time_terms(time_features [S, time_embed_dim])[i] [C]) -> [B, T*act_dim]

    where x is the flat sample (the noisy action chunk, time-major), C the denoiser's own
    conditioning width and ``time_features`` the sinusoidal embedding of S timesteps.
    Both the trainer's MLP and its temporal U-Net have this form."""

    time_embed_dim: int

    def encode_condition(self, obs_flat: torch.Tensor) -> torch.Tensor: ...

    def time_terms(self, time_features: torch.Tensor) -> torch.Tensor: ...

    def denoise(
        self, x_flat: torch.Tensor, cond_term: torch.Tensor, time_term: torch.Tensor
    ) -> torch.Tensor: ...


class MlpDenoiser(Denoiser, Protocol):
    """An MLP denoiser whose first layer is split by input (a sum of three ``nn.Linear``):
    ``out(act(...act(in_sample(x) + in_cond(obs) + in_time(emb_t))...))`` over the flat
    sample x [B, T*act_dim], the flat normalised observations obs [B, To*obs_dim] and the
    timestep embedding emb_t, with ``hidden`` the layers between first and ``out``."""

    in_sample: nn.Linear
    in_cond: nn.Linear
    in_time: nn.Linear
    hidden: nn.ModuleList
    out: nn.Linear
    act: nn.Module

    def denoise(
        self, x_flat: torch.Tensor, cond_term: torch.Tensor, time_term: torch.Tensor
    ) -> torch.Tensor: ...


@dataclass(frozen=True)
class StepUpdate:
    """One reverse step from timestep ``timestep``, as an affine map of the denoiser's
    output m and the sample x, with z the step's fresh noise::

        x0_estimate = x0_from_output * m + x0_from_sample * x   (clipped if the loop clips)
        x_next = x0_weight * x0_estimate + sample_weight * x + noise_std * z

    DDPM and DDIM with epsilon or sample prediction all have this form
    (``schedulers.DDPMScheduler``, ``schedulers.DDIMScheduler``)."""

    timestep: int
    x0_from_output: float
    x0_from_sample: float
    x0_weight: float
    sample_weight: float
    noise_std: float

    def __post_init__(self) -> None:
        if not self.noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")

    @property
    def stochastic(self) -> bool:
        """Whether the step adds fresh noise (takes one slice of ``step_noise``)."""
        return self.noise_std > 0

    def apply(
        self,
        output: torch.Tensor,
        sample: torch.Tensor,
        clip_range: float | None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The step itself: the next sample from the denoiser's output and the sample
        (``noise`` is z, needed when the step is stochastic)."""
        x0 = self.x0_from_output * output + self.x0_from_sample * sample
        if clip_range is not None:
            x0 = x0.clamp(-clip_range, clip_range)
        x_next = self.x0_weight * x0 + self.sample_weight * sample
        if self.stochastic:
            if noise is None:
                raise ValueError(f"the step at timestep {self.timestep} needs its noise z")
            x_next = x_next + self.noise_std * noise
        return x_next


# eq=False: fields hold a module and a tensor, which have no value equality.
@dataclass(frozen=True, eq=False)
class SamplingLoopSpec:
    """A denoising loop in numbers: step i computes ``m = denoiser.denoise(x,
    denoiser.encode_condition(obs), denoiser.time_terms(time_features)[i])`` and then
    ``updates[i]``; the last step's x is the action chunk (normalised, flat). The denoiser
    is any ``Denoiser``; exporters that need more (the ReLU-network builder needs an
    ``MlpDenoiser`` with ReLU) check for it."""

    denoiser: Denoiser
    time_features: torch.Tensor  # [steps, time_embed_dim]: each step's timestep embedded
    updates: tuple[StepUpdate, ...]
    clip_range: float | None  # x0 estimate clipped to [-r, r], or not clipped

    def __post_init__(self) -> None:
        if not self.updates:
            raise ValueError("a sampling loop needs at least one step")
        if self.time_features.dim() != 2 or self.time_features.shape[0] != len(self.updates):
            raise ValueError(
                f"time_features must be [steps, dim] with steps = {len(self.updates)}, got "
                f"{list(self.time_features.shape)}"
            )
        if self.clip_range is not None and not self.clip_range > 0:
            raise ValueError(f"clip_range must be > 0 or None, got {self.clip_range}")

    @property
    def timesteps(self) -> tuple[int, ...]:
        return tuple(u.timestep for u in self.updates)

    @property
    def step_noise_steps(self) -> int:
        return sum(u.stochastic for u in self.updates)
