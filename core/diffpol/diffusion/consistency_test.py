"""Consistency distillation against its definition, with an exact teacher.

The data is a two-component Gaussian mixture, whose denoiser E[x_0 | x_t] has a closed
form, so the teacher is the exact x_0-predictor and its DDIM-10 trajectories are known. A
small student distilled for a few seconds must map noise to where those trajectories end
in one step (and two) within the stated tolerance.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from diffpol.diffusion.consistency import LADDER_STEPS, ConsistencyDistillation
from diffpol.diffusion.embedding import sinusoidal_embedding
from diffpol.diffusion.schedulers import DDIMScheduler
from diffpol.diffusion.schedules import NoiseScheduleConfig

CONFIG = NoiseScheduleConfig(num_train_timesteps=100, prediction_type="sample")
MEANS, STD = (-0.6, 0.6), 0.1
# Mean absolute gap between the student's 1-step sample and the teacher's DDIM-10 sample
# from the same noise, in action units (modes 1.2 apart, each 0.1 wide). The teacher's own
# one-step estimate, its x_0 prediction at t = 90, is about 0.5 away (it lands between the
# modes); distilled students in this setting land 0.04-0.08 away.
TOLERANCE = 0.1


def exact_teacher(abar: torch.Tensor):
    """E[x_0 | x_t] of an equal mixture of N(mu_k, STD^2) under the forward process."""

    def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = abar[t].reshape(-1, 1)
        var = a * STD**2 + (1 - a)
        log_w, means = [], []
        for mu in MEANS:
            log_w.append(-((x - a.sqrt() * mu) ** 2) / (2 * var))
            means.append(mu + a.sqrt() * STD**2 / var * (x - a.sqrt() * mu))
        w = torch.softmax(torch.stack(log_w), dim=0)
        return (w * torch.stack(means)).sum(0)

    return predict


class Student(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1 + 16, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU())
        self.out = nn.Linear(64, 1)

    def forward(self, x, t):
        return self.out(self.net(torch.cat([x, sinusoidal_embedding(t.float(), 16)], 1)))


def draw_data(n: int, generator: torch.Generator) -> torch.Tensor:
    mode = torch.randint(0, 2, (n, 1), generator=generator).float()
    return (mode * 1.2 - 0.6) + STD * torch.randn(n, 1, generator=generator)


def ddim_sample(teacher, noise: torch.Tensor) -> torch.Tensor:
    scheduler = DDIMScheduler(CONFIG).set_timesteps(LADDER_STEPS)
    x = noise
    for t in scheduler.timesteps:
        x = scheduler.step(teacher(x, torch.full((len(x),), t)), t, x)
    return x


def sample(student, distillation: ConsistencyDistillation, noise, steps: int, generator):
    x = noise
    for update in distillation.sampling_updates(steps):
        t = torch.full((len(x),), update.timestep)
        z = torch.randn(x.shape, generator=generator) if update.stochastic else None
        x = update.apply(student(x, t), x, distillation.clip_range, z)
    return x


def test_the_teacher_step_is_ddim_and_the_last_rung_returns_the_x0_estimate():
    distillation = ConsistencyDistillation(CONFIG)
    scheduler = DDIMScheduler(CONFIG).set_timesteps(LADDER_STEPS)
    teacher = exact_teacher(torch.tensor(scheduler.alphas_cumprod, dtype=torch.float32))
    x = torch.randn(6, 1)
    for n, t in enumerate(distillation.ladder):
        index = torch.full((6,), n)
        expected = scheduler.step(teacher(x, torch.full((6,), t)), t, x)
        torch.testing.assert_close(distillation.teacher_step(teacher, x, index), expected)
    last = torch.full((6,), len(distillation.ladder) - 1)
    torch.testing.assert_close(
        distillation.teacher_step(teacher, x, last), distillation.consistency(teacher, x, last)
    )


def test_sampling_updates_follow_algorithm_1():
    distillation = ConsistencyDistillation(CONFIG)
    assert distillation.ladder == [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    assert distillation.sampling_timesteps(1) == [90]
    assert distillation.sampling_timesteps(2) == [90, 40]
    one, two = distillation.sampling_updates(1), distillation.sampling_updates(2)
    assert (one[0].x0_from_output, one[0].x0_weight, one[0].noise_std) == (1.0, 1.0, 0.0)
    abar_40 = distillation.scheduler.abar(40)
    assert two[0].x0_weight == pytest.approx(math.sqrt(abar_40))
    assert two[0].noise_std == pytest.approx(math.sqrt(1 - abar_40))
    assert two[1].noise_std == 0.0
    with pytest.raises(ValueError, match="1 to 10 steps"):
        distillation.sampling_timesteps(11)


def test_a_distilled_student_lands_where_the_teachers_ddim_trajectories_end():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    distillation = ConsistencyDistillation(CONFIG)
    teacher = exact_teacher(
        torch.tensor(distillation.scheduler.alphas_cumprod, dtype=torch.float32)
    )
    student = Student()
    steps = 1500
    optimizer = torch.optim.Adam(student.parameters(), lr=5e-3)
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        action = draw_data(256, generator)
        noise = torch.randn(action.shape, generator=generator)
        index = distillation.sample_index(256, action.device, generator)
        loss = distillation.loss(student, teacher, action, noise, index)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        decay.step()

    noise = torch.randn(2000, 1, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = ddim_sample(teacher, noise)
        one_step = sample(student, distillation, noise, 1, generator)
        two_step = sample(student, distillation, noise, 2, torch.Generator().manual_seed(2))
        first = torch.zeros(len(noise), dtype=torch.long)
        teacher_one_step = distillation.consistency(teacher, noise, first)
    assert (teacher_one_step - reference).abs().mean().item() > 4 * TOLERANCE
    gap = (one_step - reference).abs().mean().item()
    assert gap < TOLERANCE, f"1-step output {gap:.3f} from the teacher's DDIM-10 output"
    # Both modes survive in one step, as in the teacher (BC would give their mean, 0).
    assert 0.4 < (one_step > 0).float().mean().item() < 0.6
    # Noise near the boundary between the basins lands between the modes more often than
    # in the teacher's 10 steps (about 10% against 3%).
    assert ((reference.abs() - 0.6).abs() < 0.3).float().mean().item() > 0.95
    assert ((one_step.abs() - 0.6).abs() < 0.3).float().mean().item() > 0.85
    # Two steps re-noise in between: not the same map, the same distribution.
    assert (two_step > 0).float().mean().item() == pytest.approx(0.5, abs=0.06)
    assert ((two_step.abs() - 0.6).abs() < 0.3).float().mean().item() > 0.85
