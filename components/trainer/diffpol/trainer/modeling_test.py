"""Networks, sampling loops and EMA; a diffusion policy keeps two modes that BC averages."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from diffpol.contracts import Window
from diffpol.contracts.normalizer import AffineNormalizer, Normalizer
from diffpol.diffusion import NoiseScheduleConfig, make_scheduler
from diffpol.diffusion.embedding import sinusoidal_embedding
from diffpol.trainer.config import ModelConfig
from diffpol.trainer.modeling import (
    EMA,
    ConditionalMLPDenoiser,
    SeedTutorialModel,
    build_policy_model,
)
from diffpol.trainer.synthetic import bimodal_samples

NORMALIZER = Normalizer(
    AffineNormalizer("standard", (0.0, 0.5, 0.0), (1.0, 1.0, 4.0)),
    AffineNormalizer("minmax", (0.0,), (2.0,)),
)


def small_config(**kw) -> ModelConfig:
    base = dict(window=Window(2, 4, 2), hidden_width=32, depth=2)
    return ModelConfig(**{**base, **kw})


def test_the_split_first_layer_is_one_linear_map_over_the_concatenation():
    torch.manual_seed(0)
    net = ConditionalMLPDenoiser(4, 6, width=16, depth=2, time_embed_dim=8, activation="relu")
    concat = nn.Linear(4 + 6 + 8, 16)
    with torch.no_grad():
        concat.weight.copy_(
            torch.cat([net.in_sample.weight, net.in_cond.weight, net.in_time.weight], 1)
        )
        concat.bias.copy_(net.in_sample.bias)
    x, obs, t = torch.randn(5, 4), torch.randn(5, 6), torch.randint(0, 100, (5,))
    h = net.act(concat(torch.cat([x, obs, sinusoidal_embedding(t, 8)], 1)))
    for layer in net.hidden:
        h = net.act(layer(h))
    torch.testing.assert_close(net(x, obs, t), net.out(h))


@pytest.mark.parametrize(
    "sampler, steps, eta", [("ddim", 10, 0.0), ("ddim", 4, 1.0), ("ddpm", 100, 0.0)]
)
def test_denoising_loop_equals_the_scheduler_driven_reference(sampler, steps, eta):
    torch.manual_seed(0)
    model = build_policy_model(small_config(), 3, 1, NORMALIZER).eval()
    loop = model.sampling_loop(sampler, steps, eta=eta)
    scheduler = make_scheduler(model.config.schedule, sampler, steps, eta)
    assert loop.step_noise_steps == scheduler.num_stochastic_steps
    obs, noise = torch.randn(3, 2, 3), torch.randn(3, 4, 1)
    step_noise = torch.randn(3, loop.step_noise_steps, 4, 1) if loop.step_noise_steps else None
    x, k = noise.flatten(1), 0
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = model.denoiser(x, obs.flatten(1), torch.full((3,), t))
            z = None
            if scheduler.is_stochastic(t):
                z, k = step_noise[:, k].flatten(1), k + 1
            x = scheduler.step(out, t, x, noise=z)
        actual = loop(obs, noise, step_noise)
    assert actual.shape == (3, 4, 1)
    torch.testing.assert_close(actual, x.unflatten(1, (4, 1)), atol=1e-5, rtol=1e-5)


def test_a_stochastic_loop_needs_step_noise():
    loop = build_policy_model(small_config(), 3, 1, NORMALIZER).sampling_loop("ddpm", 10)
    assert loop.step_noise_steps == 9
    with pytest.raises(ValueError, match="step_noise"):
        loop(torch.zeros(1, 2, 3), torch.zeros(1, 4, 1))


def test_bc_loop_ignores_the_noise_values():
    loop = build_policy_model(small_config(policy_type="bc"), 3, 1, NORMALIZER).sampling_loop()
    obs = torch.randn(4, 2, 3)
    torch.testing.assert_close(loop(obs, torch.randn(4, 4, 1)), loop(obs, torch.randn(4, 4, 1)))
    assert (loop.sampler, loop.step_noise_steps) == ("bc", 0)


def test_seed_tutorial_loop_is_the_tutorials_sampler():
    torch.manual_seed(0)
    config = ModelConfig(policy_type="seed-tutorial", window=Window(1, 1, 1))
    model = build_policy_model(config, 3, 1, NORMALIZER).eval()
    assert isinstance(model, SeedTutorialModel)
    raw_obs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 3.0]])
    obs_norm = (raw_obs - torch.tensor([0.0, 0.5, 0.0])) / torch.tensor([1.0, 1.0, 4.0])
    noise = torch.randn(2, 1, 1)
    # The tutorial's sample_action, in its own units: obs / pi, raw torque.
    x = noise.flatten(1).clone()
    with torch.no_grad():
        for step in reversed(range(50)):
            t = torch.full((2, 1), step / 1000.0)
            x = x - 0.1 * model.net(torch.cat([raw_obs / np.pi, x, t], 1))
        actual = model.sampling_loop()(obs_norm.unsqueeze(1), noise)
    torch.testing.assert_close(actual.flatten(1), x / 2.0, atol=1e-5, rtol=1e-5)


def test_seed_tutorial_objective_ignores_the_timestep_in_the_noise():
    model = build_policy_model(
        ModelConfig(policy_type="seed-tutorial", window=Window(1, 1)), 3, 1, NORMALIZER
    )
    # The best predictor of eps from (action + eps) with action known is exact; the
    # tutorial's loss is an MSE against unit-variance noise whatever t: finite and ~1 at init.
    loss = model.compute_loss(
        torch.zeros(256, 3), torch.zeros(256, 1), torch.Generator().manual_seed(0)
    )
    assert 0.5 < loss.item() < 3


def test_ema_follows_the_model_with_the_warmup_decay():
    model = nn.Linear(2, 1)
    ema = EMA(model, decay=0.9)
    start = ema.averaged.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)  # n = 0: decay min(0.9, 1/10) = 0.1
    torch.testing.assert_close(ema.averaged.weight, 0.1 * start + 0.9 * model.weight)
    for _ in range(100):
        ema.update(model)
    assert ema.current_decay() == 0.9
    torch.testing.assert_close(ema.averaged.weight, model.weight, atol=1e-4, rtol=0)
    assert not any(p.requires_grad for p in ema.averaged.parameters())
    ema.train()
    assert not ema.averaged.training


def _fit(model: nn.Module, obs: torch.Tensor, action: torch.Tensor, steps: int) -> EMA:
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ema = EMA(model, decay=0.99)
    for _ in range(steps):
        idx = torch.randint(0, len(obs), (256,))
        loss = model.compute_loss(obs[idx], action[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        ema.update(model)
    return ema


def test_diffusion_keeps_both_modes_where_bc_collapses_to_the_mean():
    torch.set_num_threads(1)
    obs_np, action_np = bimodal_samples(4096, obs_dim=3, seed=0)
    obs = torch.tensor(obs_np).flatten(1)
    action = torch.tensor(action_np).flatten(1) / 1.2  # into [-1, 1]
    config = ModelConfig(
        window=Window(1, 1, 1),
        hidden_width=64,
        depth=2,
        schedule=NoiseScheduleConfig(num_train_timesteps=50),
    )
    diffusion = _fit(build_policy_model(config, 3, 1, NORMALIZER), obs, action, steps=1500)
    bc = _fit(
        build_policy_model(
            ModelConfig(policy_type="bc", window=Window(1, 1), hidden_width=64, depth=2),
            3,
            1,
            NORMALIZER,
        ),
        obs,
        action,
        steps=500,
    )

    query = torch.zeros(2000, 1, 3)  # one observation, many samples
    generator = torch.Generator().manual_seed(1)
    noise = torch.randn(2000, 1, 1, generator=generator)
    with torch.no_grad():
        sampled = diffusion.averaged.sampling_loop("ddim", 10)(query, noise).flatten() * 1.2
        regressed = bc.averaged.sampling_loop()(query, noise).flatten() * 1.2
    near_plus = (sampled - 1).abs() < 0.25
    near_minus = (sampled + 1).abs() < 0.25
    assert 0.3 < near_plus.float().mean() < 0.7, "diffusion lost the +1 mode"
    assert 0.3 < near_minus.float().mean() < 0.7, "diffusion lost the -1 mode"
    assert (near_plus | near_minus).float().mean() > 0.9
    assert sampled.mean().abs() < 0.2
    # BC predicts one action, the mean of the two modes, which neither mode contains.
    assert regressed.std() < 1e-6
    assert regressed.mean().abs() < 0.3


def test_ema_warmup_continues_from_a_loaded_state():
    ema = EMA(nn.Linear(2, 1), decay=0.999)
    for _ in range(5):
        ema.update(nn.Linear(2, 1))
    restored = EMA(nn.Linear(2, 1), decay=0.999)
    restored.current_decay()  # reads the fresh counter before the load
    restored.load_state_dict(ema.state_dict())
    assert restored.current_decay() == ema.current_decay() == pytest.approx(6 / 15)


@pytest.mark.parametrize("sampler, steps, eta", [("ddim", 10, 0.0), ("ddpm", 100, 0.0)])
def test_a_denoising_loop_describes_itself_with_its_schedulers_updates(sampler, steps, eta):
    model = build_policy_model(small_config(), 3, 1, NORMALIZER)
    loop = model.sampling_loop(sampler, steps, eta=eta)
    spec = loop.spec
    assert spec.denoiser is model.denoiser
    scheduler = make_scheduler(model.config.schedule, sampler, steps, eta)
    assert list(spec.timesteps) == list(scheduler.timesteps)
    assert spec.step_noise_steps == loop.step_noise_steps == scheduler.num_stochastic_steps
    assert spec.updates == scheduler.updates()
    assert spec.clip_range == model.config.schedule.clip_sample_range
