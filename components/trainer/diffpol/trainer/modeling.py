"""Policy networks: the conditional denoiser of a diffusion policy, and two baselines.

All three take flattened, normalised inputs, ``obs`` [B, To*obs_dim] and ``action``
[B, T*act_dim], expose ``compute_loss(obs, action, generator=None)`` for training and
``sampling_loop(...)`` for inference (a ``diffpol.diffusion.SamplingLoop`` from
``diffpol.trainer.sampling``).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.nn import functional as F

from diffpol.contracts.normalizer import Normalizer
from diffpol.diffusion import DDPMScheduler
from diffpol.diffusion.activations import FastMish
from diffpol.diffusion.embedding import sinusoidal_embedding, sinusoidal_frequencies
from diffpol.trainer.config import ModelConfig
from diffpol.trainer.sampling import DenoisingLoop, RegressionLoop, SeedTutorialLoop
from diffpol.trainer.unet import ConditionalUnet1D


def make_activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "silu":
        return nn.SiLU()
    if name == "mish":
        return FastMish()
    raise ValueError(f"unknown activation {name!r}: use relu, silu or mish")


class ConditionalMLPDenoiser(nn.Module):
    """MLP over [x_t, obs, t_emb] -> noise (or clean-sample) prediction.

    The first layer over the concatenation is kept as three matrices, one per input, whose
    sum is the same linear map. A sampler then computes the observation term once per
    call and the timestep term from constants, and each denoising step multiplies only the
    small x_t (see ``sampling.DenoisingLoop``).
    """

    def __init__(
        self,
        sample_dim: int,
        cond_dim: int,
        width: int,
        depth: int,
        time_embed_dim: int,
        activation: str,
    ) -> None:
        super().__init__()
        self.time_embed_dim = time_embed_dim
        self.register_buffer("time_freqs", sinusoidal_frequencies(time_embed_dim), persistent=False)
        self.in_sample = nn.Linear(sample_dim, width)
        self.in_cond = nn.Linear(cond_dim, width, bias=False)
        self.in_time = nn.Linear(time_embed_dim, width, bias=False)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.out = nn.Linear(width, sample_dim)
        self.act = make_activation(activation)

    def encode_condition(self, obs_flat: torch.Tensor) -> torch.Tensor:
        return self.in_cond(obs_flat)

    def time_terms(self, time_features: torch.Tensor) -> torch.Tensor:
        return self.in_time(time_features)

    def encode_time(self, t: torch.Tensor) -> torch.Tensor:
        return self.time_terms(sinusoidal_embedding(t, self.time_embed_dim, self.time_freqs))

    def denoise(
        self, x_flat: torch.Tensor, cond_term: torch.Tensor, time_term: torch.Tensor
    ) -> torch.Tensor:
        h = self.act(self.in_sample(x_flat) + cond_term + time_term)
        for layer in self.hidden:
            h = self.act(layer(h))
        return self.out(h)

    def forward(self, x_flat: torch.Tensor, obs_flat: torch.Tensor, t: torch.Tensor):
        return self.denoise(x_flat, self.encode_condition(obs_flat), self.encode_time(t))


def build_denoiser(
    config: ModelConfig, cond_dim: int, act_dim: int
) -> ConditionalMLPDenoiser | ConditionalUnet1D:
    """The diffusion policy's denoiser that ``config.denoiser`` names."""
    horizon = config.window.horizon
    if config.denoiser == "unet":
        return ConditionalUnet1D(
            act_dim,
            horizon,
            cond_dim,
            config.time_embed_dim,
            config.unet_down_dims,
            config.unet_kernel_size,
            config.unet_groups,
        )
    return ConditionalMLPDenoiser(
        horizon * act_dim,
        cond_dim,
        config.hidden_width,
        config.depth,
        config.time_embed_dim,
        config.activation,
    )


def _mlp(in_dim: int, out_dim: int, width: int, depth: int, activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(depth):
        layers += [nn.Linear(in_dim if i == 0 else width, width), make_activation(activation)]
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


class _PolicyModel(nn.Module):
    def __init__(self, config: ModelConfig, obs_dim: int, act_dim: int) -> None:
        super().__init__()
        self.config = config
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.cond_dim = config.window.n_obs_steps * obs_dim
        self.sample_dim = config.window.horizon * act_dim


class DiffusionPolicyModel(_PolicyModel):
    """Epsilon- (or sample-) prediction DDPM objective over the normalised action chunk."""

    def __init__(self, config: ModelConfig, obs_dim: int, act_dim: int) -> None:
        super().__init__(config, obs_dim, act_dim)
        self.denoiser = build_denoiser(config, self.cond_dim, act_dim)
        self.noise_scheduler = DDPMScheduler(config.schedule)

    def compute_loss(
        self, obs: torch.Tensor, action: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        batch = action.shape[0]
        noise = torch.randn(action.shape, generator=generator, device=action.device)
        t = torch.randint(
            0,
            self.noise_scheduler.num_train_timesteps,
            (batch,),
            generator=generator,
            device=action.device,
        )
        noisy = self.noise_scheduler.add_noise(action, noise, t)
        prediction = self.denoiser(noisy, obs, t)
        return F.mse_loss(prediction, self.noise_scheduler.training_target(action, noise))

    def sampling_loop(self, sampler: str = "ddim", steps: int = 10, eta: float = 0.0):
        return DenoisingLoop.from_scheduler(
            self.denoiser,
            self.config.schedule,
            self.config.window.horizon,
            self.act_dim,
            sampler=sampler,
            steps=steps,
            eta=eta,
        )


class BCPolicyModel(_PolicyModel):
    """Behaviour cloning: MSE regression of the action chunk. Averages modes by design."""

    def __init__(self, config: ModelConfig, obs_dim: int, act_dim: int) -> None:
        super().__init__(config, obs_dim, act_dim)
        self.net = _mlp(
            self.cond_dim, self.sample_dim, config.hidden_width, config.depth, config.activation
        )

    def forward(self, obs_flat: torch.Tensor) -> torch.Tensor:
        return self.net(obs_flat)

    def compute_loss(self, obs, action, generator=None) -> torch.Tensor:
        return F.mse_loss(self(obs), action)

    def sampling_loop(self, sampler: str = "ddim", steps: int = 10, eta: float = 0.0):
        return RegressionLoop(self, self.config.window.horizon, self.act_dim)


class SeedTutorialModel(_PolicyModel):
    """The seed tutorial's objective, kept faithfully as a baseline (it learns little).

    In the tutorial's units: observations are raw env values divided by pi, actions raw
    torques. ``noisy = action + N(0, 1)`` whatever the timestep, the network (one hidden
    ReLU layer of 128) sees ``t / max_t`` and regresses the noise; sampling is 50 steps of
    ``x -= 0.1 * eps_hat``. Our rows hold normalised values, so the normaliser's affine
    maps (buffers) undo that first.
    """

    MAX_T = 1000
    SAMPLING_STEPS = 50
    STEP_SIZE = 0.1

    def __init__(
        self, config: ModelConfig, obs_dim: int, act_dim: int, normalizer: Normalizer
    ) -> None:
        super().__init__(config, obs_dim, act_dim)
        self.net = nn.Sequential(
            nn.Linear(self.cond_dim + self.sample_dim + 1, 128),
            nn.ReLU(),
            nn.Linear(128, self.sample_dim),
        )
        to, t = config.window.n_obs_steps, config.window.horizon

        def flat(values: tuple[float, ...], repeat: int) -> torch.Tensor:
            return torch.tensor([float(v) for v in values] * repeat, dtype=torch.float32)

        self.register_buffer("obs_center", flat(normalizer.obs.center, to))
        self.register_buffer("obs_scale", flat(normalizer.obs.scale, to))
        self.register_buffer("act_center", flat(normalizer.action.center, t))
        self.register_buffer("act_scale", flat(normalizer.action.scale, t))

    def tutorial_obs(self, obs_norm_flat: torch.Tensor) -> torch.Tensor:
        return (obs_norm_flat * self.obs_scale + self.obs_center) / math.pi

    def forward(self, obs_scaled, noisy_action, timestep: torch.Tensor) -> torch.Tensor:
        t = timestep.reshape(-1, 1).float() / self.MAX_T
        return self.net(torch.cat([obs_scaled, noisy_action, t.expand(obs_scaled.shape[0], 1)], 1))

    def compute_loss(self, obs, action, generator=None) -> torch.Tensor:
        raw_action = action * self.act_scale + self.act_center
        noise = torch.randn(raw_action.shape, generator=generator, device=action.device)
        t = torch.randint(0, self.MAX_T, (action.shape[0],), generator=generator, device=obs.device)
        prediction = self(self.tutorial_obs(obs), raw_action + noise, t)
        return F.mse_loss(prediction, noise)

    def sample(self, obs_norm_flat: torch.Tensor, noise_flat: torch.Tensor) -> torch.Tensor:
        """The tutorial's sampler: x = noise; 50 times x -= 0.1 * eps_hat(obs/pi, x, t);
        the normalised action chunk [B, T*act_dim]."""
        obs = self.tutorial_obs(obs_norm_flat)
        x = noise_flat
        for step in reversed(range(self.SAMPLING_STEPS)):
            t = torch.full((1,), float(step), device=x.device)
            x = x - self.STEP_SIZE * self(obs, x, t)
        return (x - self.act_center) / self.act_scale

    def sampling_loop(self, sampler: str = "ddim", steps: int = 10, eta: float = 0.0):
        return SeedTutorialLoop(self, self.SAMPLING_STEPS, self.config.window.horizon, self.act_dim)


# DiffusionPolicyModel includes its few-step subclasses (diffpol.trainer.fewstep).
PolicyModel = DiffusionPolicyModel | BCPolicyModel | SeedTutorialModel


def build_policy_model(
    config: ModelConfig, obs_dim: int, act_dim: int, normalizer: Normalizer
) -> PolicyModel:
    if config.policy_type == "diffusion":
        if config.objective != "ddpm":
            from diffpol.trainer import fewstep  # it builds on this module

            few_step = {
                "flow": fewstep.FlowPolicyModel,
                "consistency": fewstep.ConsistencyPolicyModel,
            }
            return few_step[config.objective](config, obs_dim, act_dim)
        return DiffusionPolicyModel(config, obs_dim, act_dim)
    if config.policy_type == "bc":
        return BCPolicyModel(config, obs_dim, act_dim)
    if config.policy_type == "seed-tutorial":
        return SeedTutorialModel(config, obs_dim, act_dim, normalizer)
    raise ValueError(f"unknown policy_type {config.policy_type!r}")


class EMA(nn.Module):
    """Exponential moving average of a model's parameters (buffers are copied).

    The average, not the raw weights, is what gets evaluated and exported. Decay warms up
    as ``min(decay, (1 + n) / (10 + n))`` after n updates.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        self.decay = decay
        self.averaged = copy.deepcopy(model)
        self.averaged.requires_grad_(False)
        self.averaged.eval()
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
        # A host-side copy of num_updates (reading the buffer on a GPU would synchronise
        # every step); None until first needed, and after a state dict was loaded.
        self._count: int | None = None

    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._count = None

    def current_decay(self) -> float:
        if self._count is None:
            self._count = int(self.num_updates)
        n = self._count
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = self.current_decay()
        averaged, current = list(self.averaged.parameters()), list(model.parameters())
        averaged_buffers, current_buffers = list(self.averaged.buffers()), list(model.buffers())
        if len(averaged) != len(current) or len(averaged_buffers) != len(current_buffers):
            raise ValueError("EMA.update: the model does not match the averaged copy")
        torch._foreach_lerp_(averaged, [p.detach() for p in current], 1.0 - decay)
        if averaged_buffers:
            torch._foreach_copy_(averaged_buffers, current_buffers)
        self.num_updates.add_(1)
        self._count += 1

    def train(self, mode: bool = True):
        # The average is never in training mode, whatever its parent is.
        super().train(mode)
        self.averaged.eval()
        return self
