"""The temporal U-Net denoiser: shapes, conditioning, and that chunk positions keep their
order (a position-dependent target is learned)."""

from __future__ import annotations

import pytest
import torch

from diffpol.contracts import Window
from diffpol.diffusion import NoiseScheduleConfig
from diffpol.trainer.config import ModelConfig
from diffpol.trainer.modeling import DiffusionPolicyModel, build_policy_model
from diffpol.trainer.unet import ConditionalUnet1D

OBS_DIM, ACT_DIM = 5, 3


def small_unet(horizon: int = 16, down_dims=(8, 16, 32)) -> ConditionalUnet1D:
    torch.manual_seed(0)
    return ConditionalUnet1D(
        ACT_DIM, horizon, 2 * OBS_DIM, 16, down_dims, kernel_size=5, groups=4
    ).eval()


@pytest.mark.parametrize("horizon, down_dims", [(16, (8, 16, 32)), (8, (8, 16)), (1, (8,))])
def test_output_has_the_chunks_shape(horizon, down_dims):
    net = small_unet(horizon, down_dims)
    x = torch.randn(7, horizon * ACT_DIM)
    out = net(x, torch.randn(7, 2 * OBS_DIM), torch.randint(0, 100, (7,)))
    assert out.shape == (7, horizon * ACT_DIM) and torch.isfinite(out).all()


def test_the_split_conditioning_equals_the_forward_pass():
    net = small_unet()
    x, obs, t = torch.randn(4, 48), torch.randn(4, 10), torch.tensor([3, 3, 3, 3])
    with torch.no_grad():
        split = net.denoise(x, net.encode_condition(obs), net.encode_time(t[:1])[0])
        np_forward = net(x, obs, t)
    torch.testing.assert_close(split, np_forward)


def test_observation_and_timestep_change_the_output_and_rows_stay_apart():
    net = small_unet()
    x, obs, t = torch.randn(3, 48), torch.randn(3, 10), torch.tensor([10, 10, 10])
    with torch.no_grad():
        base = net(x, obs, t)
        other_obs = obs.clone()
        other_obs[1] += 1.0
        moved = net(x, other_obs, t)
        later = net(x, obs, torch.tensor([60, 60, 60]))
    # Only row 1's observation changed: only row 1's prediction does (GroupNorm
    # normalises per sample, never across the batch).
    assert (moved[1] - base[1]).abs().max() > 1e-3
    torch.testing.assert_close(moved[[0, 2]], base[[0, 2]])
    assert (later - base).abs().max() > 1e-3


def test_a_position_dependent_chunk_is_learned_in_order():
    # Every chunk is the same ramp over time (action k = -1 + 2k/(T-1), in all dimensions),
    # whatever the observation: a denoiser that shuffled or pooled positions could not
    # return it; a temporal U-Net fits it in a few hundred steps.
    horizon = 8
    config = ModelConfig(
        window=Window(2, horizon, 4),
        denoiser="unet",
        unet_down_dims=(8, 16),
        unet_groups=4,
        time_embed_dim=16,
        schedule=NoiseScheduleConfig(num_train_timesteps=50, prediction_type="sample"),
    )
    torch.manual_seed(0)
    # Many tiny ops: one thread is several times faster than an OpenMP team here.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model = build_policy_model(config, OBS_DIM, ACT_DIM, None)
    assert isinstance(model, DiffusionPolicyModel)
    ramp = torch.linspace(-1, 1, horizon).repeat_interleave(ACT_DIM)  # time-major, flat
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        obs = torch.randn(32, 2 * OBS_DIM, generator=generator)
        loss = model.compute_loss(obs, ramp.expand(32, -1), generator)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    loop = model.sampling_loop("ddim", 10)
    with torch.no_grad():
        chunk = loop(torch.randn(16, 2, OBS_DIM), torch.randn(16, horizon, ACT_DIM))
    torch.set_num_threads(threads)
    assert chunk.shape == (16, horizon, ACT_DIM)
    expected = torch.linspace(-1, 1, horizon)[None, :, None].expand_as(chunk)
    assert (chunk - expected).abs().max() < 0.15
    # In order: each action above the previous one, in every sample and dimension.
    assert (chunk.diff(dim=1) > 0).all()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"window": Window(2, 6, 2)}, "must be divisible by 4"),
        ({"unet_down_dims": (12, 16)}, "must divide every"),
        ({"unet_kernel_size": 4}, "odd"),
        ({"denoiser": "transformer"}, "denoiser must be one of"),
    ],
)
def test_bad_unet_configs_are_named(changes, message):
    base = dict(window=Window(2, 16, 8), denoiser="unet", unet_down_dims=(16, 32, 64))
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{**base, **changes})
