"""DDPM (Ho et al. 2020) and DDIM (Song et al. 2021) noise schedulers, in the style of diffusers.

Every coefficient an update uses is precomputed as a Python float when the sampling
timesteps are set, so an unrolled sampling loop traces to ONNX with those numbers as graph
constants (no ``sqrt`` of a symbolic timestep, no table lookups), and each step can be
described as a ``StepUpdate`` (``update``) for exporters that build the graph themselves.

Notation (Ho et al.): ``beta_t``, ``alpha_t = 1 - beta_t``, ``abar_t = prod_{s<=t} alpha_s``,
forward process ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (eq. 4). Schedules and
timestep spacing: ``diffpol.diffusion.schedules``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from diffpol.diffusion.sampling_loop import StepUpdate
from diffpol.diffusion.schedules import (
    NoiseScheduleConfig,
    TimestepSpacing,
    make_betas,
    make_timesteps,
)


@dataclass(frozen=True)
class _StepCoefficients:
    """Python-float coefficients of one reverse step from ``t`` to ``prev_t``."""

    prev_t: int
    sqrt_abar: float
    sqrt_one_minus_abar: float
    # DDPM posterior q(x_prev | x_t, x_0): mean = c_x0 * x_0 + c_xt * x_t, std.
    # DDIM: x_prev = sqrt_abar_prev * x_0 + direction * eps + std * z.
    c_x0: float
    c_xt: float
    std: float


class _SchedulerBase:
    """Schedule tables shared by DDPM and DDIM."""

    def __init__(self, config: NoiseScheduleConfig | None = None) -> None:
        self.config = config or NoiseScheduleConfig()
        self.betas = make_betas(self.config)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = np.cumprod(self.alphas)
        self.num_train_timesteps = self.config.num_train_timesteps
        self.timesteps: list[int] = []
        self._coefficients: dict[int, _StepCoefficients] = {}
        # float32 tables for training-time add_noise on any device.
        self._sqrt_abar = torch.tensor(np.sqrt(self.alphas_cumprod), dtype=torch.float32)
        self._sqrt_one_minus_abar = torch.tensor(
            np.sqrt(1.0 - self.alphas_cumprod), dtype=torch.float32
        )

    def abar(self, t: int) -> float:
        """abar_t, with abar_{-1} = 1 (the data itself)."""
        return 1.0 if t < 0 else float(self.alphas_cumprod[t])

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Forward process q(x_t | x_0) (Ho et al. eq. 4):
        ``sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``, t of shape [B]."""
        if self._sqrt_abar.device != x0.device:  # move once, not at every training step
            self._sqrt_abar = self._sqrt_abar.to(x0.device)
            self._sqrt_one_minus_abar = self._sqrt_one_minus_abar.to(x0.device)
        t = t.long()
        shape = (-1,) + (1,) * (x0.dim() - 1)
        a = self._sqrt_abar[t].reshape(shape)
        s = self._sqrt_one_minus_abar[t].reshape(shape)
        return a * x0 + s * noise

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """What the model regresses onto: the noise or the clean sample."""
        return noise if self.config.prediction_type == "epsilon" else x0

    def _prev_t(self, index: int) -> int:
        return self.timesteps[index + 1] if index + 1 < len(self.timesteps) else -1

    def set_timesteps(self, num_inference_steps: int, spacing: TimestepSpacing = "leading"):
        """Sample with these many steps (``schedules.make_timesteps``); returns self."""
        self.timesteps = make_timesteps(self.num_train_timesteps, num_inference_steps, spacing)
        self._coefficients = {
            t: self._make_coefficients(t, self._prev_t(i)) for i, t in enumerate(self.timesteps)
        }
        return self

    def _make_coefficients(self, t: int, prev_t: int) -> _StepCoefficients:
        raise NotImplementedError

    @property
    def num_stochastic_steps(self) -> int:
        """How many of the set timesteps add fresh noise (K of the sampler's step_noise)."""
        return sum(1 for t in self.timesteps if self._coefficients[t].std > 0)

    def is_stochastic(self, t: int) -> bool:
        return self.coefficients(t).std > 0

    def coefficients(self, t: int) -> _StepCoefficients:
        try:
            return self._coefficients[int(t)]
        except KeyError:
            raise ValueError(
                f"timestep {t} is not one of the sampling timesteps {self.timesteps}: "
                "call set_timesteps first"
            ) from None

    @property
    def x0_clip_range(self) -> float | None:
        """r when every x_0 estimate is clipped to [-r, r], else None."""
        return self.config.clip_sample_range if self.config.clip_sample else None

    def update(self, t: int) -> StepUpdate:
        """The step at ``t`` as the affine map ``step`` applies (see ``StepUpdate``)."""
        c = self.coefficients(t)
        if self.config.prediction_type == "epsilon":  # Ho et al. eq. 15, see _predict_x0
            from_output, from_sample = -c.sqrt_one_minus_abar / c.sqrt_abar, 1.0 / c.sqrt_abar
        else:
            from_output, from_sample = 1.0, 0.0
        x0_weight, sample_weight = self._update_weights(c)
        return StepUpdate(int(t), from_output, from_sample, x0_weight, sample_weight, c.std)

    def updates(self) -> tuple[StepUpdate, ...]:
        """``update`` of each sampling timestep, in sampling order."""
        return tuple(self.update(t) for t in self.timesteps)

    def step(
        self,
        model_output: torch.Tensor,
        t: int,
        sample: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x at the next sampling timestep from x_t (``sample``) and the model's output;
        ``noise`` is the step's z (drawn if None and the step is stochastic)."""
        c = self.coefficients(t)
        if self._epsilon_unclipped():
            on_sample, on_output = self._folded_weights(c)
            prev = _linear(on_sample, sample, on_output, model_output)
        else:
            x0 = self._predict_x0(model_output, c, sample)
            a, b = self._update_weights(c)
            prev = _linear(a, x0, b, sample)
        return self._add_step_noise(prev, c.std, noise)

    def _update_weights(self, c: _StepCoefficients) -> tuple[float, float]:
        """(a, b) of the step's mean ``a * x_0 + b * x_t`` given the (clipped) x_0 estimate."""
        raise NotImplementedError

    def _folded_weights(self, c: _StepCoefficients) -> tuple[float, float]:
        """The same mean as coefficients of (x_t, eps) when x_0 is an unclipped epsilon
        estimate: x_0 need not be formed."""
        raise NotImplementedError

    def _predict_x0(self, model_output: torch.Tensor, c: _StepCoefficients, sample):
        if self.config.prediction_type == "epsilon":
            # Ho et al. eq. 15: (x_t - sqrt(1 - abar) eps) / sqrt(abar)
            x0 = (sample - c.sqrt_one_minus_abar * model_output) * (1.0 / c.sqrt_abar)
        else:
            x0 = model_output
        if self.config.clip_sample:
            r = self.config.clip_sample_range
            x0 = x0.clamp(-r, r)
        return x0

    def _epsilon_unclipped(self) -> bool:
        """Then the update is linear in (x_t, model output) and x_0 need not be formed."""
        return self.config.prediction_type == "epsilon" and not self.config.clip_sample

    def _add_step_noise(self, prev: torch.Tensor, std: float, noise: torch.Tensor | None):
        if std <= 0:
            return prev
        if noise is None:
            noise = torch.randn_like(prev)
        return prev + std * noise


class DDPMScheduler(_SchedulerBase):
    """Ancestral sampling from the posterior q(x_{t-1} | x_t, x_0) (Ho et al. eq. 6-7):
    mean ``c_x0 x_0 + c_xt x_t`` with ``c_x0 = sqrt(abar_prev) beta_t / (1 - abar_t)``,
    ``c_xt = sqrt(alpha_t) (1 - abar_prev) / (1 - abar_t)``, variance
    ``beta_tilde_t = (1 - abar_prev) / (1 - abar_t) beta_t`` (the sigma^2 of section 3.2).

    With fewer sampling steps than training steps, a step from t to ``prev_t`` uses the
    same formulas with ``alpha = abar_t / abar_prev`` (the composed forward process).
    """

    def __init__(self, config: NoiseScheduleConfig | None = None) -> None:
        super().__init__(config)
        self.set_timesteps(self.num_train_timesteps)

    def _make_coefficients(self, t: int, prev_t: int) -> _StepCoefficients:
        abar_t, abar_prev = self.abar(t), self.abar(prev_t)
        # One training step apart this is exactly alpha_t; further apart, the composed one.
        alpha = float(self.alphas[t]) if prev_t == t - 1 else abar_t / abar_prev
        beta = 1.0 - alpha
        variance = (1.0 - abar_prev) / (1.0 - abar_t) * beta
        return _StepCoefficients(
            prev_t=prev_t,
            sqrt_abar=math.sqrt(abar_t),
            sqrt_one_minus_abar=math.sqrt(1.0 - abar_t),
            c_x0=math.sqrt(abar_prev) * beta / (1.0 - abar_t),
            c_xt=math.sqrt(alpha) * (1.0 - abar_prev) / (1.0 - abar_t),
            std=math.sqrt(max(variance, 0.0)),
        )

    def posterior_variance(self, t: int) -> float:
        return self.coefficients(t).std ** 2

    def _update_weights(self, c: _StepCoefficients) -> tuple[float, float]:
        return c.c_x0, c.c_xt

    def _folded_weights(self, c: _StepCoefficients) -> tuple[float, float]:
        # mean = c_x0 (x_t - s1m eps) / s + c_xt x_t
        s, s1m = c.sqrt_abar, c.sqrt_one_minus_abar
        return c.c_x0 / s + c.c_xt, -c.c_x0 * s1m / s


class DDIMScheduler(_SchedulerBase):
    """DDIM (Song et al. eq. 12): ``x_prev = sqrt(abar_prev) x_0 + sqrt(1 - abar_prev -
    sigma^2) eps + sigma z`` with ``sigma = eta sqrt((1 - abar_prev) / (1 - abar_t))
    sqrt(1 - abar_t / abar_prev)`` (eq. 16): eta = 0 is a deterministic map, eta = 1 matches
    DDPM's variance. The last step lands on abar = 1, so it returns the x_0 estimate itself."""

    def __init__(self, config: NoiseScheduleConfig | None = None, eta: float = 0.0) -> None:
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.eta = float(eta)
        super().__init__(config)
        self.set_timesteps(min(10, self.num_train_timesteps))

    def _make_coefficients(self, t: int, prev_t: int) -> _StepCoefficients:
        abar_t, abar_prev = self.abar(t), self.abar(prev_t)
        std = (
            self.eta
            * math.sqrt((1.0 - abar_prev) / (1.0 - abar_t))
            * math.sqrt(1.0 - abar_t / abar_prev)
        )
        direction = math.sqrt(max(1.0 - abar_prev - std**2, 0.0))
        return _StepCoefficients(
            prev_t=prev_t,
            sqrt_abar=math.sqrt(abar_t),
            sqrt_one_minus_abar=math.sqrt(1.0 - abar_t),
            c_x0=math.sqrt(abar_prev),
            c_xt=direction,
            std=std,
        )

    def _update_weights(self, c: _StepCoefficients) -> tuple[float, float]:
        # The noise direction consistent with the (clipped) x_0 estimate,
        # eps = (x_t - s x_0) / s1m, substituted: prev is linear in (x_0, x_t).
        s, s1m = c.sqrt_abar, c.sqrt_one_minus_abar
        return c.c_x0 - c.c_xt * s / s1m, c.c_xt / s1m

    def _folded_weights(self, c: _StepCoefficients) -> tuple[float, float]:
        # prev = c_x0 (x_t - s1m eps) / s + direction * eps
        s, s1m = c.sqrt_abar, c.sqrt_one_minus_abar
        return c.c_x0 / s, c.c_xt - c.c_x0 * s1m / s


def _linear(a: float, x: torch.Tensor, b: float, y: torch.Tensor) -> torch.Tensor:
    """a * x + b * y with constant coefficients; zero terms and unit factors are left out,
    so a traced graph holds only the operations that matter."""
    terms = [v if k == 1.0 else k * v for k, v in ((a, x), (b, y)) if k != 0.0]
    if not terms:
        return torch.zeros_like(x)
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]


def make_scheduler(
    config: NoiseScheduleConfig, sampler: str, steps: int, eta: float = 0.0
) -> DDPMScheduler | DDIMScheduler:
    """A scheduler with its sampling timesteps set; ``sampler`` is 'ddpm' or 'ddim'."""
    if sampler == "ddpm":
        scheduler: DDPMScheduler | DDIMScheduler = DDPMScheduler(config)
    elif sampler == "ddim":
        scheduler = DDIMScheduler(config, eta=eta)
    else:
        raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
    return scheduler.set_timesteps(steps)
