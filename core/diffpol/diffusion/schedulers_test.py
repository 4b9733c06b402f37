"""The schedulers against the papers' formulas, computed independently in numpy float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from diffpol.diffusion.schedulers import DDIMScheduler, DDPMScheduler, make_scheduler
from diffpol.diffusion.schedules import NoiseScheduleConfig, make_timesteps

T = 100


def paper_betas(kind: str, steps: int = T, start: float = 1e-4, end: float = 0.02) -> np.ndarray:
    if kind == "linear":  # Ho et al. 2020, section 4
        return np.linspace(start, end, steps)
    # Nichol & Dhariwal 2021, eq. 17: abar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2)
    s = 0.008
    t = np.arange(steps + 1) / steps
    f = np.cos((t + s) / (1 + s) * np.pi / 2) ** 2
    abar = f / f[0]
    return np.minimum(1 - abar[1:] / abar[:-1], 0.999)


def config(kind="cosine", **kw) -> NoiseScheduleConfig:
    return NoiseScheduleConfig(num_train_timesteps=T, beta_schedule=kind, **kw)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_betas_alphas_and_cumulative_products_follow_the_definitions(kind):
    scheduler = DDPMScheduler(config(kind))
    betas = paper_betas(kind)
    np.testing.assert_allclose(scheduler.betas, betas, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(scheduler.alphas, 1 - betas, rtol=1e-12)
    np.testing.assert_allclose(scheduler.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-12)


def test_cosine_schedule_clips_the_last_beta_at_0_999():
    betas = DDPMScheduler(config("cosine")).betas
    assert betas.max() == pytest.approx(0.999)
    assert betas[-1] == pytest.approx(0.999)
    assert np.all(np.diff(betas) >= 0)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddpm_posterior_variance_and_mean_coefficients_match_ho_et_al(kind):
    scheduler = DDPMScheduler(config(kind))
    betas = paper_betas(kind)
    alphas = 1 - betas
    abar = np.cumprod(alphas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    # Ho et al. eq. 7
    variance = (1 - abar_prev) / (1 - abar) * betas
    coef_x0 = np.sqrt(abar_prev) * betas / (1 - abar)
    coef_xt = np.sqrt(alphas) * (1 - abar_prev) / (1 - abar)
    for t in range(T):
        c = scheduler.coefficients(t)
        assert c.prev_t == t - 1
        assert scheduler.posterior_variance(t) == pytest.approx(variance[t], rel=1e-9, abs=1e-15)
        assert c.c_x0 == pytest.approx(coef_x0[t], rel=1e-9)
        assert c.c_xt == pytest.approx(coef_xt[t], rel=1e-9, abs=1e-15)
    assert scheduler.posterior_variance(0) == 0.0


def test_step_coefficients_are_python_floats():
    for scheduler in (DDPMScheduler(config()), DDIMScheduler(config())):
        for t in scheduler.timesteps:
            c = scheduler.coefficients(t)
            for value in (c.sqrt_abar, c.sqrt_one_minus_abar, c.c_x0, c.c_xt, c.std):
                assert type(value) is float
        assert all(type(t) is int for t in scheduler.timesteps)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_add_noise_matches_the_closed_form(kind):
    scheduler = DDPMScheduler(config(kind))
    abar = np.cumprod(1 - paper_betas(kind))
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, (64, 4, 2))
    noise = rng.standard_normal((64, 4, 2))
    t = rng.integers(0, T, 64)
    expected = np.sqrt(abar[t])[:, None, None] * x0 + np.sqrt(1 - abar[t])[:, None, None] * noise
    actual = scheduler.add_noise(
        torch.tensor(x0, dtype=torch.float32),
        torch.tensor(noise, dtype=torch.float32),
        torch.tensor(t),
    )
    np.testing.assert_allclose(actual.numpy(), expected, atol=1e-6)


def test_ddpm_step_is_the_posterior_mean_plus_scaled_noise():
    scheduler = DDPMScheduler(config(clip_sample=False))
    betas = paper_betas("cosine")
    abar = np.cumprod(1 - betas)
    rng = np.random.default_rng(1)
    x_t = rng.standard_normal((16, 3))
    eps = rng.standard_normal((16, 3))
    z = rng.standard_normal((16, 3))
    t = 40
    x0 = (x_t - np.sqrt(1 - abar[t]) * eps) / np.sqrt(abar[t])
    mean = (
        np.sqrt(abar[t - 1]) * betas[t] / (1 - abar[t]) * x0
        + np.sqrt(1 - betas[t]) * (1 - abar[t - 1]) / (1 - abar[t]) * x_t
    )
    std = np.sqrt((1 - abar[t - 1]) / (1 - abar[t]) * betas[t])
    as_tensor = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    out = scheduler.step(as_tensor(eps), t, as_tensor(x_t), noise=as_tensor(z))
    np.testing.assert_allclose(out.numpy(), mean + std * z, rtol=1e-9, atol=1e-12)


def _epsilon_oracle(x0: torch.Tensor, scheduler):
    """The exact noise a sample x_t at step t carries, given the true x0."""

    def predict(x_t: torch.Tensor, t: int) -> torch.Tensor:
        abar = scheduler.abar(t)
        return (x_t - math.sqrt(abar) * x0) / math.sqrt(1 - abar)

    return predict


@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("steps", [1, 5, 10])
def test_ddim_with_a_perfect_epsilon_oracle_recovers_x0(clip, steps):
    scheduler = DDIMScheduler(config(clip_sample=clip), eta=0.0).set_timesteps(steps)
    x0 = torch.rand(32, 4, dtype=torch.float64) * 1.8 - 0.9
    oracle = _epsilon_oracle(x0, scheduler)
    x = torch.randn(32, 4, dtype=torch.float64)
    for t in scheduler.timesteps:
        x = scheduler.step(oracle(x, t), t, x)
    torch.testing.assert_close(x, x0, rtol=0, atol=1e-9)


def test_ddim_with_a_sample_oracle_recovers_x0():
    scheduler = DDIMScheduler(config(prediction_type="sample"), eta=0.0).set_timesteps(10)
    x0 = torch.rand(8, 2, dtype=torch.float64) - 0.5
    x = torch.randn(8, 2, dtype=torch.float64)
    for t in scheduler.timesteps:
        x = scheduler.step(x0, t, x)
    torch.testing.assert_close(x, x0, rtol=0, atol=1e-12)


def test_ddpm_with_an_oracle_and_no_step_noise_recovers_x0():
    scheduler = DDPMScheduler(config(clip_sample=False))
    x0 = torch.rand(16, 3, dtype=torch.float64) - 0.5
    oracle = _epsilon_oracle(x0, scheduler)
    x = torch.randn(16, 3, dtype=torch.float64)
    for t in scheduler.timesteps:
        x = scheduler.step(oracle(x, t), t, x, noise=torch.zeros_like(x))
    torch.testing.assert_close(x, x0, rtol=0, atol=1e-9)


def test_ddim_eta_0_is_deterministic_and_draws_no_noise():
    torch.manual_seed(0)
    scheduler = DDIMScheduler(config(), eta=0.0).set_timesteps(10)
    assert scheduler.num_stochastic_steps == 0
    x = torch.randn(64, 4)
    out = torch.randn(64, 4)
    first = scheduler.step(out, 90, x)
    torch.manual_seed(123)  # a different global RNG state must not matter
    second = scheduler.step(out, 90, x)
    assert torch.equal(first, second)


def test_ddim_eta_1_has_the_ddpm_posterior_std_for_consecutive_steps():
    ddim = DDIMScheduler(config(), eta=1.0).set_timesteps(T)
    ddpm = DDPMScheduler(config())
    for t in range(1, T):
        assert ddim.coefficients(t).std == pytest.approx(ddpm.coefficients(t).std, rel=1e-9)
    assert ddim.num_stochastic_steps == T - 1


def test_the_last_step_of_each_sampler_adds_no_noise():
    for scheduler in (
        make_scheduler(config(), "ddpm", 100),
        make_scheduler(config(), "ddim", 10, eta=1.0),
    ):
        assert scheduler.coefficients(scheduler.timesteps[-1]).std == 0.0
        assert scheduler.num_stochastic_steps == len(scheduler.timesteps) - 1


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize(
    ("sampler", "steps", "eta"), [("ddim", 10, 0.0), ("ddim", 10, 1.0), ("ddpm", 100, 0.0)]
)
def test_each_update_is_the_affine_map_step_applies(prediction_type, clip, sampler, steps, eta):
    scheduler = make_scheduler(
        config(prediction_type=prediction_type, clip_sample=clip), sampler, steps, eta
    )
    rng = np.random.default_rng(0)
    m, x, z = (torch.from_numpy(3.0 * rng.standard_normal((64, 4))) for _ in range(3))
    updates = scheduler.updates()
    assert [u.timestep for u in updates] == scheduler.timesteps
    assert sum(u.stochastic for u in updates) == scheduler.num_stochastic_steps
    for u in updates:
        estimate = u.x0_from_output * m + u.x0_from_sample * x
        if clip:
            estimate = estimate.clamp(-1.0, 1.0)
        expected = u.x0_weight * estimate + u.sample_weight * x + u.noise_std * z
        actual = scheduler.step(m, u.timestep, x, noise=z)
        torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-9)
    assert scheduler.x0_clip_range == (1.0 if clip else None)


def test_timestep_spacings():
    assert make_timesteps(100, 10, "leading") == [90, 80, 70, 60, 50, 40, 30, 20, 10, 0]
    assert make_timesteps(100, 10, "trailing") == [99, 89, 79, 69, 59, 49, 39, 29, 19, 9]
    assert make_timesteps(100, 100, "leading") == list(range(99, -1, -1))
    assert make_timesteps(100, 3, "linspace") == [99, 50, 0]


def test_leading_spacing_avoids_the_ill_conditioned_start():
    scheduler = DDIMScheduler(config()).set_timesteps(10)
    first = scheduler.timesteps[0]
    assert 1 / math.sqrt(scheduler.abar(first)) < 10
    assert 1 / math.sqrt(scheduler.abar(T - 1)) > 1000  # what "trailing" would start with


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_train_timesteps": 0}, "num_train_timesteps"),
        ({"beta_schedule": "sigmoid"}, "beta_schedule"),
        ({"prediction_type": "v"}, "prediction_type"),
        ({"beta_start": 0.1, "beta_end": 0.01}, "beta_start"),
    ],
)
def test_invalid_schedule_configs_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NoiseScheduleConfig(**kwargs)


def test_bad_sampling_requests_are_rejected():
    with pytest.raises(ValueError, match="sampling steps"):
        DDIMScheduler(config()).set_timesteps(101)
    with pytest.raises(ValueError, match="not one of the sampling timesteps"):
        DDIMScheduler(config()).set_timesteps(10).step(torch.zeros(1), 55, torch.zeros(1))
    with pytest.raises(ValueError, match="sampler"):
        make_scheduler(config(), "euler", 10)
