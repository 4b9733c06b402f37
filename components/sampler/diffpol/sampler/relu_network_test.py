from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from diffpol.contracts import EnvShape, Window
from diffpol.diffusion import NoiseScheduleConfig, SamplingLoopSpec, make_scheduler
from diffpol.diffusion.embedding import sinusoidal_embedding
from diffpol.sampler import OnnxPolicy, export_onnx
from diffpol.sampler.export import SamplerModule
from diffpol.sampler.relu_network import UnsupportedLoop, describe_relu_loop
from diffpol.sampler.testing import pendulum_like_normalizer

OBS_DIM, ACT_DIM, N_OBS, HORIZON, N_ACT = 3, 2, 2, 4, 2
LOW, HIGH = [-1.0, -2.0], [1.0, 2.0]


class _Denoiser(nn.Module):
    def __init__(self, width, depth, time_dim, activation):
        super().__init__()
        sample_dim, cond_dim = HORIZON * ACT_DIM, N_OBS * OBS_DIM
        self.in_sample = nn.Linear(sample_dim, width)
        self.in_cond = nn.Linear(cond_dim, width, bias=False)
        self.in_time = nn.Linear(time_dim, width, bias=False)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth - 1))
        self.out = nn.Linear(width, sample_dim)
        self.act = activation()

    def denoise(self, x, cond, time_term):
        h = self.act(self.in_sample(x) + cond + time_term)
        for layer in self.hidden:
            h = self.act(layer(h))
        return self.out(h)


class _Loop(nn.Module):
    """The trainer's DenoisingLoop structure over the diffusion core's scheduler."""

    def __init__(
        self,
        sampler="ddim",
        steps=10,
        train_steps=100,
        prediction_type="sample",
        clip=True,
        width=32,
        depth=3,
        activation=nn.ReLU,
        out_gain=None,
        seed=0,
    ):
        super().__init__()
        torch.manual_seed(seed)
        self.denoiser = _Denoiser(width, depth, 16, activation)
        if out_gain is None:  # x0 predictions large enough that the clip is often active
            out_gain = 20.0 if prediction_type == "sample" else 1.0
        with torch.no_grad():
            self.denoiser.out.weight.mul_(out_gain)
        schedule = NoiseScheduleConfig(
            train_steps, prediction_type=prediction_type, clip_sample=clip
        )
        self.scheduler = make_scheduler(schedule, sampler, steps)
        self.sampler, self.timesteps = sampler, self.scheduler.timesteps
        self.steps = len(self.timesteps)
        self.step_noise_steps = self.scheduler.num_stochastic_steps
        t = torch.tensor(self.timesteps, dtype=torch.float32)
        self.register_buffer("time_features", sinusoidal_embedding(t, 16))

    @property
    def spec(self) -> SamplingLoopSpec:
        return SamplingLoopSpec(
            self.denoiser,
            self.time_features,
            self.scheduler.updates(),
            self.scheduler.x0_clip_range,
        )

    def forward(self, obs_norm, noise, step_noise=None):
        cond = self.denoiser.in_cond(obs_norm.flatten(1))
        time_terms = self.denoiser.in_time(self.time_features)
        x, k = noise.flatten(1), 0
        for i, t in enumerate(self.timesteps):
            z = None
            if self.scheduler.is_stochastic(t):
                z, k = step_noise[:, k].flatten(1), k + 1
            x = self.scheduler.step(self.denoiser.denoise(x, cond, time_terms[i]), t, x, noise=z)
        return x.unflatten(1, (HORIZON, ACT_DIM))

    def x0_clip_fraction(self, obs_norm, noise, step_noise=None) -> float:
        """Share of x0 estimates, over all steps, that the clip changes."""
        cond = self.denoiser.in_cond(obs_norm.flatten(1))
        time_terms = self.denoiser.in_time(self.time_features)
        x, k, fractions = noise.flatten(1), 0, []
        with torch.no_grad():
            for i, u in enumerate(self.spec.updates):
                m = self.denoiser.denoise(x, cond, time_terms[i])
                estimate = u.x0_from_output * m + u.x0_from_sample * x
                fractions.append(float((estimate.abs() > 1.0).float().mean()))
                z = None
                if u.stochastic:
                    z, k = step_noise[:, k].flatten(1), k + 1
                x = self.scheduler.step(m, u.timestep, x, noise=z)
        return float(np.mean(fractions))


def _export(loop, path, **kwargs) -> Path:
    return export_onnx(
        loop,
        pendulum_like_normalizer(OBS_DIM, ACT_DIM),
        EnvShape("Pendulum-v1", OBS_DIM, ACT_DIM, tuple(LOW), tuple(HIGH)),
        Window(N_OBS, HORIZON, N_ACT),
        path,
        model_version="v",
        **kwargs,
    )


def _max_error(loop, policy, batch, seed, obs_scale=2.0):
    """Largest |graph - eager SamplerModule| over a batch, in normalised action units."""
    normalizer = pendulum_like_normalizer(OBS_DIM, ACT_DIM)
    module = SamplerModule(loop, normalizer, LOW, HIGH, N_ACT, HORIZON).eval()
    rng = np.random.default_rng(seed)
    obs = (obs_scale * rng.standard_normal((batch, N_OBS, OBS_DIM))).astype(np.float32)
    noise, step_noise = policy.draw_inputs(batch, seed)
    args = [torch.from_numpy(a) for a in (obs, noise, step_noise) if a is not None]
    with torch.inference_mode():
        expected = module(*args).numpy()
    actual = policy.run(obs, noise, step_noise)
    return float(np.max(np.abs(actual - expected) / np.asarray(normalizer.action.scale)))


def _is_relu_network(path: Path) -> bool:
    return onnx.load(str(path)).graph.name == "diffpol_relu_sampler"


CASES = {
    "ddim-sample-clip (trainer default)": {},
    "ddim-epsilon-clip": {"prediction_type": "epsilon"},
    "ddim-epsilon-noclip": {"prediction_type": "epsilon", "clip": False},
    "ddim-sample-noclip-depth1": {"clip": False, "depth": 1},
    "ddim-sample-clip-width128 (side Gemm)": {"width": 128},
    "ddim-epsilon-clip-width128 (side Gemm)": {"width": 128, "prediction_type": "epsilon"},
    "ddpm-sample-clip": {"sampler": "ddpm", "steps": 10, "train_steps": 10},
    "ddpm-sample-clip-width128 (side Gemm)": {
        "sampler": "ddpm",
        "steps": 10,
        "train_steps": 10,
        "width": 128,
    },
    "ddpm-epsilon-clip-depth2": {
        "sampler": "ddpm",
        "steps": 10,
        "train_steps": 10,
        "prediction_type": "epsilon",
        "depth": 2,
    },
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_relu_network_reproduces_the_loop(tmp_path, case):
    loop = _Loop(**CASES[case]).eval()
    if loop.scheduler.config.clip_sample:
        rng = np.random.default_rng(1)
        inputs = [
            torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
            for shape in [(256, N_OBS, OBS_DIM), (256, HORIZON, ACT_DIM)]
            + [(256, loop.step_noise_steps, HORIZON, ACT_DIM)] * bool(loop.step_noise_steps)
        ]
        assert 0.05 < loop.x0_clip_fraction(*inputs) < 0.95  # both sides of the clip used
    path = _export(loop, tmp_path / "p.onnx")
    assert _is_relu_network(path)
    policy = OnnxPolicy(path)
    for batch, seed in ((1, 0), (5, 1), (300, 2)):
        # float32 rounding of the same sums in another order (the products are formed in
        # float64): ~1e-7 measured; a wrong coefficient or channel shows up as 1e-2..1.
        assert _max_error(loop, policy, batch, seed) < 2e-5


@pytest.mark.parametrize(("clip", "width"), [(True, 32), (True, 128), (False, 32)])
def test_each_step_is_a_few_fused_gemms(tmp_path, clip, width):
    depth, steps = 3, 10
    loop = _Loop(depth=depth, steps=steps, clip=clip, width=width)
    path = _export(loop, tmp_path / "p.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    with tempfile.TemporaryDirectory() as tmp:
        options.optimized_model_filepath = str(Path(tmp) / "optimised.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert "Relu" not in ops  # every Gemm+Relu fused
    # per step: the denoiser's layers, and with a clipped x0 the clip layer (fed the
    # sample by a small Gemm at width 128); once: the obs projection and the last update
    side_gemms = clip and width >= 128
    assert ops.count("FusedGemm") == steps * (depth + clip)
    assert ops.count("Gemm") == steps * side_gemms + 2
    fixed = ["Flatten", "Flatten", "IsNaN", "Where", "Max", "Min", "Reshape"]
    assert sorted(op for op in ops if "Gemm" not in op) == sorted(fixed)


@pytest.mark.parametrize("value", [1e30, -1e30, 3e38, -3e38])
def test_actions_stay_within_bounds_for_extreme_observations(tmp_path, value):
    for kwargs in ({}, {"sampler": "ddpm", "steps": 10, "train_steps": 10}):
        path = _export(_Loop(**kwargs), tmp_path / "p.onnx")
        assert _is_relu_network(path)
        policy = OnnxPolicy(path)
        obs = np.full((3, N_OBS, OBS_DIM), value, np.float32)
        obs[1, :, 0] = 0.0  # mixed magnitudes too
        actions = policy.act(obs, seed=0)
        assert np.all(np.isfinite(actions))
        assert np.all(actions >= np.asarray(LOW, np.float32))
        assert np.all(actions <= np.asarray(HIGH, np.float32))


def test_other_loops_are_traced_instead(tmp_path):
    with pytest.raises(UnsupportedLoop, match="not ReLU"):
        describe_relu_loop(_Loop(activation=nn.SiLU))
    silu = _export(_Loop(activation=nn.SiLU), tmp_path / "silu.onnx")
    assert not _is_relu_network(silu)
    traced = _export(_Loop(), tmp_path / "traced.onnx", relu_network=False)
    assert not _is_relu_network(traced)

    class Undescribed(_Loop):
        spec = None

    with pytest.raises(UnsupportedLoop, match="describes no SamplingLoopSpec"):
        describe_relu_loop(Undescribed())


def test_a_relu_network_that_disagrees_with_the_loop_is_not_written(tmp_path):
    """The builder reads the loop's spec, not forward(): a loop that does more than its
    spec describes gets a wrong ReLU network, which validation rejects; the traced
    graph is exported instead."""

    class ShiftedLoop(_Loop):
        def forward(self, obs_norm, noise, step_noise=None):
            return super().forward(obs_norm, noise, step_noise) * 0.5

    loop = ShiftedLoop().eval()
    path = _export(loop, tmp_path / "p.onnx")
    assert not _is_relu_network(path)
    assert _max_error(loop, OnnxPolicy(path), 64, 0) < 1e-3
