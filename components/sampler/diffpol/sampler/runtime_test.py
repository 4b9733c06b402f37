from __future__ import annotations

import numpy as np
import onnx
import pytest

from diffpol.contracts import Policy, draw_sampler_noise
from diffpol.sampler import ArtifactError, OnnxPolicy, SamplerInputError
from diffpol.sampler.providers import ProviderError, cuda_device_present, default_providers


@pytest.fixture(scope="module")
def ddim(models):
    return OnnxPolicy(models["ddim"], max_batch_size=64)


@pytest.fixture(scope="module")
def ddpm(models):
    return OnnxPolicy(models["ddpm"])


def _obs(policy, batch, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, *policy._obs_shape)).astype(np.float32)


def test_is_a_policy_with_the_exported_spec(ddim, ddpm):
    assert isinstance(ddim, Policy)
    assert (
        ddim.spec.obs_dim,
        ddim.spec.act_dim,
        ddim.spec.n_obs_steps,
        ddim.spec.n_action_steps,
    ) == (3, 2, 2, 4)
    assert ddim.model_version == "v1" and ddim.metadata.sampler == "ddim"
    assert ddpm.metadata.step_noise_steps == 9
    assert ddim.providers == ["CPUExecutionProvider"]  # this machine has no GPU


@pytest.mark.parametrize("name", ["ddim", "ddpm"])
def test_act_is_seeded_and_equals_run_with_the_shared_noise_stream(models, name):
    policy = OnnxPolicy(models[name])
    m = policy.metadata
    obs = _obs(policy, 5)
    first = policy.act(obs, seed=123)
    assert first.shape == (5, 4, 2) and first.dtype == np.float32
    np.testing.assert_array_equal(policy.act(obs, seed=123), first)
    noise, step_noise = draw_sampler_noise(
        123, 5, m.window.horizon, m.env.act_dim, m.step_noise_steps
    )
    np.testing.assert_array_equal(policy.run(obs, noise, step_noise), first)
    assert not np.array_equal(policy.act(obs, seed=124), first)
    assert not np.array_equal(policy.act(obs), policy.act(obs))  # unseeded: fresh noise


def test_float64_observations_are_accepted_as_float32(ddim):
    obs = _obs(ddim, 3)
    np.testing.assert_array_equal(ddim.act(obs.astype(np.float64), seed=1), ddim.act(obs, seed=1))


@pytest.mark.parametrize(
    ("obs", "code", "message"),
    [
        (np.zeros((2, 3), np.float32), "INVALID_ARGUMENT", r"shape \[B, 2, 3\].*got \[2, 3\]"),
        (np.zeros((2, 2, 4), np.float32), "INVALID_ARGUMENT", r"got \[2, 2, 4\]"),
        (np.zeros((2, 3, 3), np.float32), "INVALID_ARGUMENT", r"got \[2, 3, 3\]"),
        (np.zeros((2, 2, 3), np.int64), "INVALID_ARGUMENT", "floating-point.*int64"),
        (np.zeros((0, 2, 3), np.float32), "INVALID_ARGUMENT", "empty batch"),
        (
            np.zeros((65, 2, 3), np.float32),
            "RESOURCE_EXHAUSTED",
            "65 rows exceeds max_batch_size 64",
        ),
    ],
)
def test_bad_observations_get_an_error_with_a_code(ddim, obs, code, message):
    with pytest.raises(SamplerInputError, match=message) as info:
        ddim.act(obs)
    assert info.value.code == code


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e300])
def test_non_finite_observations_are_rejected(ddim, bad):
    obs = _obs(ddim, 2)
    obs64 = obs.astype(np.float64)
    obs64[1, 0, 2] = bad
    with pytest.raises(SamplerInputError, match=r"1 non-finite value.*index \[1, 0, 2\]") as info:
        ddim.act(obs64)
    assert info.value.code == "INVALID_ARGUMENT"


def test_run_checks_noise_inputs(ddim, ddpm):
    obs = _obs(ddim, 2)
    noise, _ = ddim.draw_inputs(2, seed=0)
    with pytest.raises(SamplerInputError, match="noise has 1 rows but obs has 2"):
        ddim.run(obs, noise[:1])
    with pytest.raises(SamplerInputError, match="deterministic"):
        ddim.run(obs, noise, np.zeros((2, 9, 8, 2), np.float32))
    with pytest.raises(SamplerInputError, match=r"needs step_noise \[B, 9, 8, 2\]"):
        ddpm.run(obs, noise)
    bad = noise.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(SamplerInputError, match="noise has 1 non-finite"):
        ddim.run(obs, bad)
    with pytest.raises(SamplerInputError, match="seed must be a non-negative integer"):
        ddim.act(obs, seed=-1)


def test_missing_or_garbage_files_are_artifact_errors(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        OnnxPolicy(tmp_path / "missing.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    with pytest.raises(ArtifactError, match="not a loadable ONNX model"):
        OnnxPolicy(tmp_path / "garbage.onnx")
    with pytest.raises(ArtifactError, match="is a directory"):
        OnnxPolicy(tmp_path)


def _rewrite(src, dst, edit):
    model = onnx.load(str(src))
    edit(model)
    onnx.save(model, str(dst))
    return dst


def test_models_without_valid_metadata_are_rejected(models, tmp_path):
    def drop_metadata(model):
        del model.metadata_props[:]

    def set_prop(key, value):
        def edit(model):
            for prop in model.metadata_props:
                if prop.key == key:
                    prop.value = value

        return edit

    path = _rewrite(models["ddim"], tmp_path / "a.onnx", drop_metadata)
    with pytest.raises(ArtifactError, match=r"not a diffpol sampler artifact.*lack env_id"):
        OnnxPolicy(path)
    path = _rewrite(models["ddim"], tmp_path / "b.onnx", set_prop("contract_version", "diffpol.v0"))
    with pytest.raises(ArtifactError, match=r"follows contract 'diffpol\.v0'"):
        OnnxPolicy(path)
    path = _rewrite(models["ddim"], tmp_path / "c.onnx", set_prop("obs_dim", "4"))
    with pytest.raises(ArtifactError, match=r"does not match its own metadata.*obs has shape"):
        OnnxPolicy(path)
    path = _rewrite(models["ddim"], tmp_path / "d.onnx", set_prop("step_noise_steps", "3"))
    with pytest.raises(ArtifactError, match=r"inputs are \['noise', 'obs'\]"):
        OnnxPolicy(path)
    path = _rewrite(models["ddim"], tmp_path / "e.onnx", set_prop("action_low", "[1, 2]"))
    with pytest.raises(ArtifactError, match="must be below action_high"):
        OnnxPolicy(path)
    path = _rewrite(models["ddim"], tmp_path / "f.onnx", set_prop("horizon", "eight"))
    with pytest.raises(ArtifactError, match="malformed metadata"):
        OnnxPolicy(path)


def test_provider_choice(models, monkeypatch):
    with pytest.raises(ProviderError, match="not in this onnxruntime build"):
        OnnxPolicy(models["ddim"], providers=["NoSuchExecutionProvider"])
    assert OnnxPolicy(models["ddim"], providers=["CPUExecutionProvider"]).providers == [
        "CPUExecutionProvider"
    ]
    assert default_providers()[-1] == "CPUExecutionProvider"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert not cuda_device_present()
    assert default_providers() == ["CPUExecutionProvider"]


def test_session_threads_are_validated(models):
    with pytest.raises(ValueError, match="intra_op_threads must be >= 1"):
        OnnxPolicy(models["ddim"], intra_op_threads=0)
    two = OnnxPolicy(models["ddim"], intra_op_threads=2)
    one = OnnxPolicy(models["ddim"])
    obs = _obs(one, 300)
    np.testing.assert_allclose(two.act(obs, seed=5), one.act(obs, seed=5), atol=1e-5)
