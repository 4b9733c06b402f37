"""Flow matching: rectified flow / conditional flow matching with a linear path.

Convention (Liu et al. 2023, "Flow Straight and Fast", eq. 1; Lipman et al. 2023,
"Flow Matching for Generative Modeling", eq. 22 with sigma_min = 0): time runs from
t = 0, the noise ``x_0 ~ N(0, I)``, to t = 1, the action chunk ``x_1``, along

    x_t = (1 - t) x_0 + t x_1,        dx_t/dt = x_1 - x_0,

and the network regresses that conditional velocity (``velocity_target``) at training times
drawn by ``sample_times``: uniform, pi0's Beta on the noisy end, or SD3's logit-normal.
Sampling integrates ``dx/dt = v(x, t)`` from the noise at t = 0 to t = 1 on a uniform grid
of K steps, with Euler (one network evaluation per step) or the explicit midpoint rule
(two). An Euler step ``x + dt * v`` is affine in the network's output and x, so it is a
``StepUpdate`` and an exporter can rebuild the loop from numbers (``FlowScheduler.updates``).

The network sees ``t * TIME_SCALE``: the sinusoidal timestep embedding is made for
timestep-sized numbers, not [0, 1].
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Literal

import torch

from diffpol.diffusion.sampling_loop import StepUpdate

FlowMethod = Literal["euler", "midpoint"]
FLOW_METHODS: tuple[str, ...] = ("euler", "midpoint")
TimeSampling = Literal["uniform", "beta", "logit-normal"]
TIME_SAMPLINGS: tuple[str, ...] = ("uniform", "beta", "logit-normal")
# pi0's Beta(1.5, 1) time density is scaled to (0, 0.999]: t = 1, the data, is never drawn.
BETA_TIME_MAX = 0.999
# As in Stable Diffusion 3's rectified-flow models: the network's time input is 1000 t.
TIME_SCALE = 1000.0


def _broadcast(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(like.dtype).reshape((-1,) + (1,) * (like.dim() - 1))


def interpolate(noise: torch.Tensor, action: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) noise + t action, t of shape [B]."""
    t = _broadcast(t, action)
    return (1.0 - t) * noise + t * action


def velocity_target(noise: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
    """The conditional velocity dx_t/dt = action - noise (independent of t)."""
    return action - noise


def flow_matching_loss(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    action: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
) -> torch.Tensor:
    """Conditional flow matching loss ``E |v(x_t, t) - (x_1 - x_0)|^2`` (Lipman et al. eq.
    9), ``velocity(x_t, t)`` given t in [0, 1]; mean over every element."""
    prediction = velocity(interpolate(noise, action, t), t)
    return torch.mean((prediction - velocity_target(noise, action)) ** 2)


def sample_times(
    batch: int,
    sampling: TimeSampling = "uniform",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Training times t [batch] in [0, 1) for the loss, each from ``generator``:

    - "uniform": t ~ U[0, 1) (Lipman et al. 2023);
    - "beta": pi0's density (Black et al. 2024, sec. IV-B: "emphasizes lower (noisier)
      timesteps"), t = s (1 - u) with u ~ Beta(1.5, 1) and s = 0.999; u is drawn by
      inversion, u = U^(1/1.5), since Beta(1.5, 1) has the CDF u^1.5;
    - "logit-normal": Stable Diffusion 3's (Esser et al. 2024, eq. 19), t = sigmoid(n) with
      n ~ N(0, 1): most weight on the middle of the path.
    """
    if sampling == "uniform":
        return torch.rand((batch,), generator=generator, device=device)
    if sampling == "beta":
        u = torch.rand((batch,), generator=generator, device=device) ** (1.0 / 1.5)
        return BETA_TIME_MAX * (1.0 - u)
    if sampling == "logit-normal":
        return torch.sigmoid(torch.randn((batch,), generator=generator, device=device))
    raise ValueError(f"time sampling must be one of {', '.join(TIME_SAMPLINGS)}, got {sampling!r}")


def time_grid(steps: int) -> list[float]:
    """The K + 1 uniform times 0, 1/K, ..., 1 that K integration steps visit."""
    if steps < 1:
        raise ValueError(f"a flow sampler needs >= 1 steps, got {steps}")
    return [k / steps for k in range(steps + 1)]


def time_label(t: float) -> int:
    """An integer name for time t (``StepUpdate.timestep``): the network's input, rounded."""
    return round(t * TIME_SCALE)


class FlowScheduler:
    """K-step integration of a learned velocity field, diffusers-style: ``set_timesteps``
    fixes the grid, ``step`` advances one Euler step; ``midpoint_step`` one midpoint step.
    Coefficients are Python floats, so an unrolled loop traces to a static graph."""

    def __init__(self, method: FlowMethod = "euler") -> None:
        if method not in FLOW_METHODS:
            raise ValueError(f"method must be one of {', '.join(FLOW_METHODS)}, got {method!r}")
        self.method = method
        self.timesteps: list[float] = []
        self.set_timesteps(10)

    def set_timesteps(self, num_inference_steps: int) -> FlowScheduler:
        grid = time_grid(num_inference_steps)
        self.timesteps = grid[:-1]
        self._dts = [b - a for a, b in itertools.pairwise(grid)]
        return self

    @property
    def evaluations_per_step(self) -> int:
        return 1 if self.method == "euler" else 2

    @property
    def num_evaluations(self) -> int:
        """Network evaluations per sample (the sampler's ``steps``)."""
        return len(self.timesteps) * self.evaluations_per_step

    def dt(self, index: int) -> float:
        return self._dts[index]

    def add_noise(self, action: torch.Tensor, noise: torch.Tensor, t: torch.Tensor):
        """The training input x_t (``interpolate``)."""
        return interpolate(noise, action, t)

    def step(self, velocity: torch.Tensor, index: int, sample: torch.Tensor) -> torch.Tensor:
        """Euler: x_{t + dt} = x_t + dt * v(x_t, t), at grid step ``index``."""
        return sample + self._dts[index] * velocity

    def midpoint_step(
        self,
        velocity: Callable[[torch.Tensor, float], torch.Tensor],
        index: int,
        sample: torch.Tensor,
    ) -> torch.Tensor:
        """Explicit midpoint: x_{t+dt} = x_t + dt * v(x_t + dt/2 v(x_t, t), t + dt/2);
        ``velocity(x, t)`` with t a float in [0, 1]."""
        t, dt = self.timesteps[index], self._dts[index]
        half = sample + (0.5 * dt) * velocity(sample, t)
        return sample + dt * velocity(half, t + 0.5 * dt)

    def updates(self) -> tuple[StepUpdate, ...]:
        """The Euler steps as ``StepUpdate``s: with m the velocity, the "x0 estimate" slot
        holds x + dt * m, which becomes the next sample (weight 1, no clip, no noise)."""
        if self.method != "euler":
            raise ValueError("only Euler steps are affine in one network output")
        return tuple(
            StepUpdate(time_label(t), dt, 1.0, 1.0, 0.0, 0.0)
            for t, dt in zip(self.timesteps, self._dts, strict=True)
        )

    def network_times(self) -> list[float]:
        """The network's time input at each evaluation, in order (``t * TIME_SCALE``)."""
        times = []
        for t, dt in zip(self.timesteps, self._dts, strict=True):
            times.append(t * TIME_SCALE)
            if self.method == "midpoint":
                times.append((t + 0.5 * dt) * TIME_SCALE)
        return times
