from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from diffpol.contracts import CONTRACT_VERSION, ContractError, EnvShape, Window
from diffpol.contracts.model_metadata import METADATA_KEYS
from diffpol.sampler import ExportValidationError, OnnxPolicy, export_onnx
from diffpol.sampler.testing import ReferenceLoop, pendulum_like_normalizer


def _expected(loop, normalizer, obs, noise, step_noise, n_action_steps, low, high):
    """The pipeline the graph must implement, written out with numpy around the loop."""
    obs_norm = normalizer.obs.normalize(obs)
    args = [torch.from_numpy(obs_norm), torch.from_numpy(noise)]
    if step_noise is not None:
        args.append(torch.from_numpy(step_noise))
    with torch.inference_mode():
        action_norm = loop(*args).numpy()[:, :n_action_steps]
    return np.clip(normalizer.action.unnormalize(action_norm), low, high)


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_graph_matches_pytorch_pipeline_at_several_batch_sizes(models, kind):
    policy = OnnxPolicy(models[kind])
    m = policy.metadata
    seed = {"ddim": 0, "ddpm": 2}[kind]
    loop = ReferenceLoop(
        m.env.obs_dim,
        m.env.act_dim,
        m.window.n_obs_steps,
        m.window.horizon,
        sampler=kind,
        steps=m.steps,
        num_train_timesteps=100 if kind == "ddim" else 10,
        width=32,
        depth=2,
        seed=seed,
    ).eval()
    normalizer = pendulum_like_normalizer(m.env.obs_dim, m.env.act_dim)
    scale = np.asarray(normalizer.action.scale)
    rng = np.random.default_rng(42)
    for batch in (1, 7, 256):
        obs = (rng.standard_normal((batch, m.window.n_obs_steps, m.env.obs_dim)) * 2).astype(
            np.float32
        )
        noise, step_noise = policy.draw_inputs(batch, seed=batch)
        actual = policy.run(obs, noise, step_noise)
        expected = _expected(
            loop,
            normalizer,
            obs,
            noise,
            step_noise,
            m.window.n_action_steps,
            m.env.action_low,
            m.env.action_high,
        )
        assert actual.shape == (batch, m.window.n_action_steps, m.env.act_dim)
        # Same tolerance export_onnx enforces (normalised action units); see DEFAULT_ATOL.
        assert np.max(np.abs(actual - expected) / scale) < 1e-3
        # Not a vacuous comparison: many actions are not saturated at a clip limit.
        assert np.mean(np.abs(normalizer.action.normalize(actual)) < 0.99) > 0.2


def test_metadata_props_and_graph_signature(models):
    model = onnx.load(str(models["ddpm"]))
    props = {p.key: p.value for p in model.metadata_props}
    assert set(METADATA_KEYS) <= set(props)
    assert props["contract_version"] == CONTRACT_VERSION == "diffpol.v1"
    assert props["env_id"] == "Pendulum-v1"
    assert props["sampler"] == "ddpm" and props["steps"] == "10"
    assert props["step_noise_steps"] == "9"  # the last DDPM step adds no noise
    assert (props["n_obs_steps"], props["horizon"], props["n_action_steps"]) == ("2", "8", "4")
    assert (props["obs_dim"], props["act_dim"]) == ("3", "2")
    assert json.loads(props["action_low"]) == [-1.0, -2.0]
    assert json.loads(props["action_high"]) == [1.0, 2.0]
    assert props["model_version"] == "ddpm-v1"
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17

    def dims(value):
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    inputs = {i.name: dims(i) for i in model.graph.input}
    assert inputs == {
        "obs": ["batch", 2, 3],
        "noise": ["batch", 8, 2],
        "step_noise": ["batch", 9, 8, 2],
    }
    assert {o.name: dims(o) for o in model.graph.output} == {"action": ["batch", 4, 2]}
    deterministic = onnx.load(str(models["ddim"]))
    assert [i.name for i in deterministic.graph.input] == ["obs", "noise"]


@pytest.mark.parametrize("value", [1e30, -1e30, 3.4e38, -3.4e38, 1e6, 0.0])
def test_actions_stay_within_bounds_for_extreme_observations(models, value):
    for kind in ("ddim", "ddpm"):
        policy = OnnxPolicy(models[kind])
        m = policy.metadata
        obs = np.full((3, m.window.n_obs_steps, m.env.obs_dim), value, np.float32)
        obs[1, :, 0] = -value
        noise, step_noise = policy.draw_inputs(3, seed=0)
        noise[2] *= 1e20  # absurd noise too: the graph must still clip
        action = policy.run(obs, noise, step_noise)
        assert np.all(np.isfinite(action))
        assert np.all(action >= np.asarray(m.env.action_low))
        assert np.all(action <= np.asarray(m.env.action_high))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    magnitude=st.floats(min_value=0, max_value=38),
    data=st.data(),
)
def test_actions_stay_within_bounds_for_any_finite_observation(models, magnitude, data):
    policy = OnnxPolicy(models["ddim"])
    m = policy.metadata
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    obs = (rng.standard_normal((5, m.window.n_obs_steps, m.env.obs_dim)) * 10.0**magnitude).astype(
        np.float32
    )
    obs = np.nan_to_num(obs, posinf=3e38, neginf=-3e38)
    action = policy.act(obs, seed=seed)
    assert np.all(action >= np.asarray(m.env.action_low)) and np.all(
        action <= np.asarray(m.env.action_high)
    )


class _SelfNoisingLoop(torch.nn.Module):
    """A buggy loop that draws its own noise: its graph cannot reproduce the module."""

    sampler, steps, step_noise_steps = "ddim", 1, 0

    def forward(self, obs_norm, noise, step_noise=None):
        return noise + torch.randn_like(noise) + 0.0 * obs_norm.mean()


class _BlindLoop(torch.nn.Module):
    """A buggy loop that ignores its observations."""

    sampler, steps, step_noise_steps = "ddim", 1, 0

    def forward(self, obs_norm, noise, step_noise=None):
        return noise * 0.5


class _ReshapingLoop(torch.nn.Module):
    """Returns act_dim 2 whatever it is given."""

    sampler, steps, step_noise_steps = "ddim", 1, 0

    def forward(self, obs_norm, noise, step_noise=None):
        return noise[..., :2] + obs_norm.mean()


def _env(obs_dim=3, act_dim=2, low=(-1, -2), high=(1, 2)):
    return EnvShape("Pendulum-v1", obs_dim, act_dim, low, high)


def _window(horizon=8):
    return Window(n_obs_steps=2, horizon=horizon, n_action_steps=4)


def test_refuses_to_write_a_graph_that_does_not_match_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous artifact")
    with pytest.raises(ExportValidationError, match="differs from the PyTorch loop"):
        export_onnx(
            _SelfNoisingLoop(),
            pendulum_like_normalizer(),
            _env(),
            _window(),
            target,
            model_version="bad",
        )
    assert target.read_bytes() == b"previous artifact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temp files left


def test_refuses_a_loop_that_ignores_its_observations(tmp_path):
    with pytest.raises(ExportValidationError, match=r"no input\(s\) \['obs'\]"):
        export_onnx(
            _BlindLoop(),
            pendulum_like_normalizer(),
            _env(),
            _window(),
            tmp_path / "m.onnx",
            model_version="bad",
        )
    assert not (tmp_path / "m.onnx").exists()


def test_rejects_inconsistent_arguments(tmp_path):
    loop = ReferenceLoop(3, 2, 2, 8, steps=2, width=8, depth=1)
    norm = pendulum_like_normalizer()
    target = tmp_path / "m.onnx"
    with pytest.raises(ValueError, match=r"normalizer\.obs has 3 dimensions, env\.obs_dim is 4"):
        export_onnx(loop, norm, _env(obs_dim=4), _window(), target, model_version="v")
    with pytest.raises(ContractError, match="action_low has 1 values, act_dim is 2"):
        export_onnx(loop, norm, _env(low=(-1,)), _window(), target, model_version="v")
    with pytest.raises(ContractError, match="must be below action_high"):
        export_onnx(
            loop, norm, _env(low=(1, -2), high=(-1, 2)), _window(), target, model_version="v"
        )
    with pytest.raises(ContractError, match=r"n_action_steps \(Ta=4\) exceeds horizon \(T=3\)"):
        export_onnx(loop, norm, _env(), _window(horizon=3), target, model_version="v")
    with pytest.raises(ValueError, match=r"the loop fails on inputs shaped.*noise \[2, 10, 2\]"):
        export_onnx(loop, norm, _env(), _window(horizon=10), target, model_version="v")
    with pytest.raises(ValueError, match=r"loop returned shape \[2, 8, 2\].*\[2, 8, 3\]"):
        export_onnx(
            _ReshapingLoop(),
            pendulum_like_normalizer(3, 3),
            _env(act_dim=3, low=(-1, -2, -3), high=(1, 2, 3)),
            _window(),
            target,
            model_version="v",
        )
    with pytest.raises(TypeError, match="lacks sampler, steps, step_noise_steps"):
        export_onnx(torch.nn.Identity(), norm, _env(), _window(), target, model_version="v")
    assert not target.exists()


def test_export_restores_the_loops_mode_and_torch_threads(tmp_path):
    loop = ReferenceLoop(3, 2, 2, 8, steps=2, width=8, depth=1).train()
    threads = torch.get_num_threads()
    export_onnx(
        loop,
        pendulum_like_normalizer(),
        _env(),
        _window(),
        tmp_path / "m.onnx",
        model_version="v",
        validate_batch_sizes=(1, 3),
    )
    assert loop.training
    assert torch.get_num_threads() == threads


def test_runtime_server_and_client_do_not_import_torch():
    code = (
        "import sys\n"
        "import diffpol.sampler, diffpol.sampler.runtime, diffpol.sampler.server, "
        "diffpol.sampler.client\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_optimised_graph_is_smaller_and_agrees_with_the_plain_one(tmp_path):
    loop = ReferenceLoop(3, 2, 2, 8, steps=4, width=16, depth=2, activation="mish")
    paths = {}
    for slim in (True, False):
        paths[slim] = export_onnx(
            loop,
            pendulum_like_normalizer(),
            _env(),
            _window(),
            tmp_path / f"{slim}.onnx",
            model_version="v",
            slim=slim,
        )
    nodes = {slim: len(onnx.load(str(p)).graph.node) for slim, p in paths.items()}
    assert nodes[True] < 0.7 * nodes[False], nodes
    obs = np.random.default_rng(0).standard_normal((64, 2, 3)).astype(np.float32)
    optimised, plain = OnnxPolicy(paths[True]), OnnxPolicy(paths[False])
    np.testing.assert_allclose(optimised.act(obs, seed=3), plain.act(obs, seed=3), atol=2e-3)
