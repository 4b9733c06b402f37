"""A small, real denoising loop for the sampler's tests and benchmarks.

The trainer owns the production ``DenoisingLoop``; the export only relies on the
``diffpol.diffusion.SamplingLoop`` interface. This module builds an untrained loop with
that interface from the same diffusion core the trainer uses: an epsilon-predicting MLP
and the core's DDIM or DDPM scheduler, whose coefficients are Python floats, so the
export sees constants. Weights are random, so actions are meaningless; shapes, numerics
and speed are real.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from diffpol.diffusion import NoiseScheduleConfig, make_scheduler
from diffpol.diffusion.activations import FastMish
from diffpol.diffusion.embedding import sinusoidal_embedding

Activation = Literal["mish", "mish_fast", "silu", "relu"]


def _activation(name: Activation) -> nn.Module:
    modules = {"mish": nn.Mish, "mish_fast": FastMish, "silu": nn.SiLU, "relu": nn.ReLU}
    if name not in modules:
        raise ValueError(f"unknown activation {name!r}: use one of {sorted(modules)}")
    return modules[name]()


class MlpDenoiser(nn.Module):
    """eps_hat = MLP([x_t, obs, emb(t)]), the shape of the seed tutorial's model."""

    def __init__(
        self,
        sample_features: int,
        obs_features: int,
        width: int = 256,
        depth: int = 3,
        time_dim: int = 64,
        activation: Activation = "mish",
    ) -> None:
        super().__init__()
        self.time_dim = time_dim
        layers: list[nn.Module] = []
        features = sample_features + obs_features + time_dim
        for _ in range(depth):
            layers += [nn.Linear(features, width), _activation(activation)]
            features = width
        layers.append(nn.Linear(features, sample_features))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, obs: torch.Tensor, t: int) -> torch.Tensor:
        emb = sinusoidal_embedding(torch.tensor([float(t)]), self.time_dim)
        emb = emb.expand(x.shape[0], self.time_dim)
        return self.net(torch.cat([x, obs, emb], dim=1))


class ReferenceLoop(nn.Module):
    """Unrolled DDIM (eta = 0, deterministic) or DDPM (stochastic) sampling loop.

    Follows diffusers' conventions: DDIM uses "leading" timestep spacing (T=100, 10 steps:
    90, 80, ..., 0), epsilon prediction, and clips the predicted x0 to [-1, 1].
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        n_obs_steps: int,
        horizon: int,
        *,
        sampler: Literal["ddim", "ddpm"] = "ddim",
        steps: int = 10,
        num_train_timesteps: int = 100,
        width: int = 256,
        depth: int = 3,
        activation: Activation = "mish",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if sampler not in ("ddim", "ddpm"):
            raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")
        if sampler == "ddpm" and steps != num_train_timesteps:
            raise ValueError(
                "DDPM runs every training timestep: steps must equal num_train_timesteps"
            )
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.n_obs_steps, self.horizon = n_obs_steps, horizon
        self.sampler, self.steps = sampler, steps
        torch.manual_seed(seed)
        self.denoiser = MlpDenoiser(
            horizon * act_dim, n_obs_steps * obs_dim, width, depth, activation=activation
        ).eval()
        schedule = NoiseScheduleConfig(num_train_timesteps, "cosine", prediction_type="epsilon")
        scheduler = make_scheduler(schedule, sampler, steps)
        self.timesteps = list(scheduler.timesteps)
        self._updates = scheduler.updates()
        # DDIM's eq. 12 with the model's eps itself in the direction term (the scheduler
        # uses the eps consistent with the clipped x0): a loop of another form than the
        # trainer's, which the export must reproduce too.
        self._ddim_weights = [
            (c.c_x0, c.c_xt) for c in (scheduler.coefficients(t) for t in self.timesteps)
        ]
        self.step_noise_steps = scheduler.num_stochastic_steps

    def forward(
        self, obs_norm: torch.Tensor, noise: torch.Tensor, step_noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        batch = noise.shape[0]
        obs = obs_norm.reshape(batch, self.n_obs_steps * self.obs_dim)
        x = noise.reshape(batch, self.horizon * self.act_dim)
        k = 0
        for i, u in enumerate(self._updates):
            eps = self.denoiser(x, obs, u.timestep)
            x0 = torch.clamp(u.x0_from_sample * x + u.x0_from_output * eps, -1.0, 1.0)
            if self.sampler == "ddim":
                to_x0, to_eps = self._ddim_weights[i]
                x = to_x0 * x0 + to_eps * eps
            else:
                x = u.x0_weight * x0 + u.sample_weight * x
                if u.stochastic:
                    assert step_noise is not None, "DDPM needs step_noise"
                    x = x + u.noise_std * step_noise[:, k].reshape(batch, -1)
                    k += 1
        return x.reshape(batch, self.horizon, self.act_dim)


def pendulum_like_normalizer(obs_dim: int = 3, act_dim: int = 2):
    """A normaliser with distinct per-dimension centres and scales (catches mixed-up axes)."""
    from diffpol.contracts.normalizer import AffineNormalizer, Normalizer

    obs = AffineNormalizer(
        "standard",
        tuple(0.1 * (i + 1) for i in range(obs_dim)),
        tuple(1.0 + i for i in range(obs_dim)),
    )
    # Normalised [-1, 1] maps inside the bounds [-(i+1), i+1] used by export_reference.
    action = AffineNormalizer(
        "minmax",
        tuple(0.1 * (i + 1) for i in range(act_dim)),
        tuple(0.8 * (i + 1) for i in range(act_dim)),
    )
    return Normalizer(obs, action)


def export_reference(
    path,
    *,
    sampler: Literal["ddim", "ddpm"] = "ddim",
    steps: int = 10,
    num_train_timesteps: int = 100,
    obs_dim: int = 3,
    act_dim: int = 2,
    n_obs_steps: int = 2,
    horizon: int = 8,
    n_action_steps: int = 4,
    width: int = 32,
    depth: int = 2,
    activation: Activation = "mish",
    model_version: str = "v1",
    seed: int = 0,
    env_id: str = "Pendulum-v1",
):
    """Export a ReferenceLoop with ``pendulum_like_normalizer`` and bounds [-(i+1), i+1]."""
    from diffpol.contracts import EnvShape, Window
    from diffpol.sampler.export import export_onnx

    loop = ReferenceLoop(
        obs_dim,
        act_dim,
        n_obs_steps,
        horizon,
        sampler=sampler,
        steps=steps,
        num_train_timesteps=num_train_timesteps,
        width=width,
        depth=depth,
        activation=activation,
        seed=seed,
    )
    bounds = [float(i + 1) for i in range(act_dim)]
    return export_onnx(
        loop,
        pendulum_like_normalizer(obs_dim, act_dim),
        EnvShape(env_id, obs_dim, act_dim, tuple(-b for b in bounds), tuple(bounds)),
        Window(n_obs_steps, horizon, n_action_steps),
        path,
        model_version=model_version,
    )


def export_reference_ddpm(path, **kwargs):
    """``export_reference`` of a stochastic sampler: DDPM over 10 training timesteps (so
    the graph also takes per-step noise)."""
    return export_reference(
        path, **{"sampler": "ddpm", "steps": 10, "num_train_timesteps": 10, **kwargs}
    )


def reference_obs(batch: int, seed: int = 0, n_obs_steps: int = 2, obs_dim: int = 3):
    """Random float32 observations [batch, n_obs_steps, obs_dim] (export_reference's shape
    by default)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, n_obs_steps, obs_dim)).astype(np.float32)
