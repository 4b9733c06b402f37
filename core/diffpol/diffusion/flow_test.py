"""Flow matching against its definitions: the path, the loss, and K-step integration."""

from __future__ import annotations

import pytest
import torch

from diffpol.diffusion.flow import (
    BETA_TIME_MAX,
    TIME_SCALE,
    FlowScheduler,
    flow_matching_loss,
    interpolate,
    sample_times,
    time_grid,
    velocity_target,
)
from diffpol.diffusion.sampling_loop import StepUpdate


def test_the_path_runs_from_the_noise_to_the_action_at_the_target_velocity():
    torch.manual_seed(0)
    noise, action = torch.randn(5, 3), torch.randn(5, 3)
    torch.testing.assert_close(interpolate(noise, action, torch.zeros(5)), noise)
    torch.testing.assert_close(interpolate(noise, action, torch.ones(5)), action)
    t = torch.rand(5)
    h = 1e-3
    finite_difference = (interpolate(noise, action, t + h) - interpolate(noise, action, t)) / h
    torch.testing.assert_close(finite_difference, velocity_target(noise, action), atol=2e-3, rtol=0)


def test_the_loss_is_the_mean_squared_velocity_error():
    torch.manual_seed(1)
    noise, action, t = torch.randn(64, 2), torch.randn(64, 2), torch.rand(64)
    # The conditional velocity itself, handed the pair, scores zero ...
    exact = flow_matching_loss(lambda x, tt: action - noise, action, noise, t)
    assert exact.item() == 0.0
    # ... and a constant offset c scores exactly c^2.
    offset = flow_matching_loss(lambda x, tt: action - noise + 0.5, action, noise, t)
    assert offset.item() == pytest.approx(0.25, rel=1e-6)


def _normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / 2**0.5))


# Each time density's CDF, F(a) = P(t <= a), from its definition.
TIME_CDFS = {
    "uniform": lambda a: a,
    # t = s (1 - u), u ~ Beta(1.5, 1) with CDF u^1.5: P(t <= a) = P(u >= 1 - a/s).
    "beta": lambda a: 1.0 - (1.0 - a / BETA_TIME_MAX).clamp(min=0.0) ** 1.5,
    # t = sigmoid(n), n ~ N(0, 1): P(t <= a) = Phi(logit(a)).
    "logit-normal": lambda a: _normal_cdf(torch.logit(a)),
}


@pytest.mark.parametrize("sampling", sorted(TIME_CDFS))
def test_training_times_follow_their_densities(sampling):
    generator = torch.Generator().manual_seed(3)
    t = sample_times(200_000, sampling, generator)
    assert t.shape == (200_000,) and t.min() >= 0.0 and t.max() < 1.0
    grid = torch.linspace(0.01, 0.99, 99)
    empirical = (t[None, :] <= grid[:, None]).float().mean(1)
    # Kolmogorov-Smirnov distance: about 1.36 / sqrt(n) = 0.003 at the 5% level.
    assert (empirical - TIME_CDFS[sampling](grid)).abs().max() < 0.006
    # The generator alone decides the draw.
    torch.testing.assert_close(t, sample_times(200_000, sampling, torch.Generator().manual_seed(3)))


def test_an_unknown_time_sampling_is_rejected():
    with pytest.raises(ValueError, match="time sampling must be one of"):
        sample_times(4, "cosine")


@pytest.mark.parametrize("method", ["euler", "midpoint"])
@pytest.mark.parametrize("steps", [1, 2, 4, 10])
def test_the_straight_flow_to_a_point_is_integrated_exactly(method, steps):
    # Data a point mass at a: the marginal velocity is (a - x) / (1 - t), a straight line
    # from every noise sample, which any K-step Euler or midpoint rule follows exactly.
    a = torch.tensor([[0.7, -0.3]])
    scheduler = FlowScheduler(method).set_timesteps(steps)
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(2))

    def velocity(x, t):
        return (a - x) / (1.0 - t)

    for i, t in enumerate(scheduler.timesteps):
        if method == "euler":
            x = scheduler.step(velocity(x, t), i, x)
        else:
            x = scheduler.midpoint_step(velocity, i, x)
    torch.testing.assert_close(x, a.expand(8, 2), atol=1e-6, rtol=0)


def test_euler_on_a_time_linear_field_is_the_left_riemann_sum():
    # dx/dt = t from x(0) = 0 is x(1) = 1/2; K Euler steps give sum_k k/K^2 = (K-1)/(2K),
    # and the midpoint rule integrates a linear field exactly.
    for steps in (1, 3, 8):
        euler = FlowScheduler("euler").set_timesteps(steps)
        midpoint = FlowScheduler("midpoint").set_timesteps(steps)
        x, y = torch.zeros(1), torch.zeros(1)
        for i, t in enumerate(euler.timesteps):
            x = euler.step(torch.full((1,), t), i, x)
            y = midpoint.midpoint_step(lambda _, s: torch.full((1,), s), i, y)
        assert x.item() == pytest.approx((steps - 1) / (2 * steps), abs=1e-7)
        assert y.item() == pytest.approx(0.5, abs=1e-7)


def test_euler_steps_are_step_updates_that_apply_the_same_map():
    scheduler = FlowScheduler("euler").set_timesteps(4)
    updates = scheduler.updates()
    assert [u.timestep for u in updates] == [0, 250, 500, 750]
    assert all(not u.stochastic for u in updates)
    x, v = torch.randn(3, 2), torch.randn(3, 2)
    for i, update in enumerate(updates):
        torch.testing.assert_close(update.apply(v, x, None), scheduler.step(v, i, x))
    assert updates[0] == StepUpdate(0, 0.25, 1.0, 1.0, 0.0, 0.0)


def test_the_network_sees_scaled_times_and_counts_midpoint_evaluations():
    assert time_grid(2) == [0.0, 0.5, 1.0]
    euler = FlowScheduler("euler").set_timesteps(2)
    midpoint = FlowScheduler("midpoint").set_timesteps(2)
    assert euler.network_times() == [0.0, 0.5 * TIME_SCALE]
    assert midpoint.network_times() == [0.0, 0.25 * TIME_SCALE, 0.5 * TIME_SCALE, 0.75 * TIME_SCALE]
    assert (euler.num_evaluations, midpoint.num_evaluations) == (2, 4)
    with pytest.raises(ValueError, match="only Euler"):
        midpoint.updates()
    with pytest.raises(ValueError, match=">= 1 steps"):
        time_grid(0)
    with pytest.raises(ValueError, match="method must be"):
        FlowScheduler("rk4")
