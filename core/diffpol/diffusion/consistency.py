"""Consistency distillation (Song et al. 2023, "Consistency Models", Algorithm 2) from a
DDPM-trained teacher, on the teacher's own discrete timesteps.

The teacher's probability-flow ODE is solved by deterministic DDIM (eta = 0; Song et al.
2021 eq. 13 is its discretisation) on a ladder of N sampling timesteps t_1 > ... > t_N,
then abar = 1 (the data, "t = -1"). A consistency function f(x, t) maps every point of such
a trajectory to its end. The student has the teacher's network and parametrisation: its
output m gives the x_0 estimate of the teacher's scheduler (``StepUpdate.x0_from_*``,
clipped like the teacher's), and f(x, t) is that estimate. The boundary condition
f(x, -1) = x holds by construction, because the last ladder step's target is the teacher's
own x_0 estimate (the DDIM step onto abar = 1 returns it).

Distillation loss (Song et al. eq. 7 with d = squared L2 and the target network
theta^- = stopgrad(theta), as in Song & Dhariwal 2023, "Improved Techniques for Training
Consistency Models"): for n ~ U{1..N} and x_{t_n} drawn by the forward process,

    x_hat = DDIM_teacher(x_{t_n}, t_n -> t_{n+1}),
    L = | f_theta(x_{t_n}, t_n) - stopgrad(f_theta(x_hat, t_{n+1})) |^2   (x_hat itself at the end).

Multistep sampling (Song et al. Algorithm 1): x_0 = f(noise, tau_1); for each later tau_k,
x = sqrt(abar_tau) x_0 + sqrt(1 - abar_tau) z, x_0 = f(x, tau_k). Each step is a
``StepUpdate`` (``sampling_updates``), so exporters rebuild the loop from numbers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from diffpol.diffusion.sampling_loop import StepUpdate
from diffpol.diffusion.schedulers import DDIMScheduler
from diffpol.diffusion.schedules import NoiseScheduleConfig

# The ladder is the teacher's DDIM-10 grid (leading spacing), the sampler the pipeline
# reports as its reference: the student learns where DDIM-10 trajectories end.
LADDER_STEPS = 10

Network = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class ConsistencyDistillation:
    """The ladder, the teacher's DDIM steps along it, the distillation loss and the
    few-step sampler's updates, for a model trained under ``config``."""

    def __init__(self, config: NoiseScheduleConfig, ladder_steps: int = LADDER_STEPS) -> None:
        self.config = config
        self.scheduler = DDIMScheduler(config, eta=0.0).set_timesteps(ladder_steps)
        self.ladder: list[int] = list(self.scheduler.timesteps)  # descending
        self.clip_range = self.scheduler.x0_clip_range
        updates = self.scheduler.updates()
        # Per ladder index n: the x0 estimate's and the DDIM step's coefficients.
        self._tables = {
            "t": torch.tensor(self.ladder, dtype=torch.long),
            "next_t": torch.tensor([*self.ladder[1:], 0], dtype=torch.long),
            "last": torch.tensor([n == len(self.ladder) - 1 for n in range(len(self.ladder))]),
            **{
                name: torch.tensor([getattr(u, name) for u in updates], dtype=torch.float32)
                for name in ("x0_from_output", "x0_from_sample", "x0_weight", "sample_weight")
            },
        }

    @property
    def num_ladder_steps(self) -> int:
        return len(self.ladder)

    def _table(self, name: str, index: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        values = self._tables[name].to(index.device)[index]
        if values.dtype.is_floating_point:
            return values.reshape((-1,) + (1,) * (like.dim() - 1)).to(like.dtype)
        return values

    def x0_estimate(self, output, sample, index: torch.Tensor) -> torch.Tensor:
        """f(x, t_n): the clipped x_0 estimate from a network output at ladder index n."""
        x0 = (
            self._table("x0_from_output", index, sample) * output
            + self._table("x0_from_sample", index, sample) * sample
        )
        if self.clip_range is not None:
            x0 = x0.clamp(-self.clip_range, self.clip_range)
        return x0

    def consistency(self, network: Network, sample: torch.Tensor, index: torch.Tensor):
        """f_theta(x, t_n) for per-row ladder indices ``index`` [B]."""
        return self.x0_estimate(network(sample, self._table("t", index, sample)), sample, index)

    def teacher_step(self, teacher: Network, sample: torch.Tensor, index: torch.Tensor):
        """Deterministic DDIM from t_n to t_{n+1} (to abar = 1 after the last rung)."""
        x0 = self.consistency(teacher, sample, index)
        return (
            self._table("x0_weight", index, sample) * x0
            + self._table("sample_weight", index, sample) * sample
        )

    def sample_index(
        self, batch: int, device: torch.device, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return torch.randint(0, len(self.ladder), (batch,), generator=generator, device=device)

    def loss(
        self,
        student: Network,
        teacher: Network,
        action: torch.Tensor,
        noise: torch.Tensor,
        index: torch.Tensor,
    ) -> torch.Tensor:
        """The distillation loss above, mean over every element; ``student`` and
        ``teacher`` map (x [B, ...], t [B] long) to the network output."""
        x_t = self.scheduler.add_noise(action, noise, self._table("t", index, action))
        with torch.no_grad():
            x_next = self.teacher_step(teacher, x_t, index)
            last = self._table("last", index, action)
            next_index = torch.clamp(index + 1, max=len(self.ladder) - 1)
            target = self.consistency(student, x_next, next_index)
            target = torch.where(last.reshape((-1,) + (1,) * (action.dim() - 1)), x_next, target)
        return torch.mean((self.consistency(student, x_t, index) - target) ** 2)

    def sampling_timesteps(self, steps: int) -> list[int]:
        """The K ladder timesteps a K-step sampler evaluates at: evenly spaced rungs from
        the top (K = 2 on the DDIM-10 ladder: 90 and 40 of 100)."""
        n = len(self.ladder)
        if not 1 <= steps <= n:
            raise ValueError(f"a consistency sampler takes 1 to {n} steps, got {steps}")
        return [self.ladder[i * n // steps] for i in range(steps)]

    def sampling_updates(self, steps: int) -> tuple[StepUpdate, ...]:
        """Algorithm 1 as ``StepUpdate``s: x0 = f(x, tau_k), then re-noised to tau_{k+1}
        (fresh noise z), or returned after the last step."""
        times = self.sampling_timesteps(steps)
        updates = []
        for i, t in enumerate(times):
            estimate = self.scheduler.update(t)  # its x0_from_* are f's coefficients at t
            if i + 1 < len(times):
                abar = self.scheduler.abar(times[i + 1])
                weight, std = math.sqrt(abar), math.sqrt(1.0 - abar)
            else:
                weight, std = 1.0, 0.0
            updates.append(
                StepUpdate(t, estimate.x0_from_output, estimate.x0_from_sample, weight, 0.0, std)
            )
        return tuple(updates)
