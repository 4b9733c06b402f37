"""Checkpoint files -> TorchPolicy, without Ray: loading, acting, and agreement with ONNX."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest
import torch

from diffpol.contracts import Policy, PolicySpec, Window, draw_sampler_noise
from diffpol.contracts.errors import ContractError
from diffpol.contracts.normalizer import AffineNormalizer, Normalizer
from diffpol.trainer import CheckpointError, Config, ModelConfig, load_policy
from diffpol.trainer.checkpoint import (
    POLICY_FILE,
    CheckpointMeta,
    save_policy_weights,
    write_sidecars,
)
from diffpol.trainer.modeling import EMA, build_policy_model

NORMALIZER = Normalizer(
    AffineNormalizer("standard", (0.0, 0.0, 0.0), (0.7, 0.7, 3.0)),
    AffineNormalizer("minmax", (0.0,), (2.0,)),
)


def write_checkpoint(directory, model_config: ModelConfig, seed: int = 0):
    torch.manual_seed(seed)
    config = Config(model=model_config)
    model = build_policy_model(model_config, 3, 1, NORMALIZER)
    ema = EMA(model, 0.9)
    with torch.no_grad():  # make the EMA differ from the raw weights
        for p in model.parameters():
            p.add_(0.1)
    meta = CheckpointMeta(
        epochs_completed=1,
        epochs_total=1,
        global_step=10,
        data={
            "fingerprint": "f" * 64,
            "env_id": "Pendulum-v1",
            "obs_dim": 3,
            "act_dim": 1,
            "action_low": [-2.0],
            "action_high": [2.0],
        },
        versions={"torch": torch.__version__},
        history=[{"epoch": 0, "train_loss": 1.0, "val_loss": 1.0}],
    )
    directory.mkdir(parents=True, exist_ok=True)
    save_policy_weights(directory, model, ema.averaged)
    write_sidecars(directory, config, NORMALIZER, meta)
    return directory, model, ema.averaged


CHUNKED = ModelConfig(window=Window(2, 4, 2), hidden_width=32, depth=2)


def test_policy_acts_like_the_loop_on_the_shared_noise_stream(tmp_path):
    directory, _, ema = write_checkpoint(tmp_path / "ckpt", CHUNKED)
    policy = load_policy(directory, sampler="ddim", steps=5)
    assert isinstance(policy, Policy)
    obs = np.random.default_rng(0).normal(0, 1, (6, 2, 3)).astype(np.float32)
    actions = policy.act(obs, seed=42)
    noise, step_noise = draw_sampler_noise(42, 6, 4, 1, 0)
    assert step_noise is None
    with torch.no_grad():
        expected = ema.sampling_loop("ddim", 5)(
            torch.from_numpy(NORMALIZER.obs.normalize(obs)), torch.from_numpy(noise)
        )[:, :2].numpy()
    expected = np.clip(NORMALIZER.action.unnormalize(expected), -2, 2)
    np.testing.assert_allclose(actions, expected, atol=1e-6)
    np.testing.assert_array_equal(policy.act(obs, seed=42), actions)
    assert not np.array_equal(policy.act(obs, seed=43), actions)


def test_a_checkpoint_with_the_flat_window_keys_still_loads(tmp_path):
    # config.json as written before ModelConfig held a Window: the keys sit in "model".
    directory, _, _ = write_checkpoint(tmp_path / "ckpt", CHUNKED)
    path = directory / "config.json"
    raw = json.loads(path.read_text())
    raw["model"].update(raw["model"].pop("window"))
    assert raw["model"]["n_action_steps"] == 2
    path.write_text(json.dumps(raw))
    policy = load_policy(directory, steps=5)
    assert policy.window == Window(2, 4, 2) and policy.config.model == CHUNKED
    assert policy.act(np.zeros((3, 2, 3), np.float32), seed=0).shape == (3, 2, 1)


def test_ddpm_policy_draws_step_noise_and_stays_reproducible(tmp_path):
    directory, _, _ = write_checkpoint(tmp_path / "ckpt", CHUNKED)
    policy = load_policy(directory, sampler="ddpm", steps=20)
    assert (policy.sampler, policy.steps, policy.loop.step_noise_steps) == ("ddpm", 20, 19)
    obs = np.zeros((3, 2, 3), np.float32)
    np.testing.assert_array_equal(policy.act(obs, seed=1), policy.act(obs, seed=1))


def test_raw_weights_differ_from_the_ema_weights(tmp_path):
    directory, _, _ = write_checkpoint(tmp_path / "ckpt", CHUNKED)
    obs = np.ones((2, 2, 3), np.float32)
    ema_actions = load_policy(directory).act(obs, seed=0)
    raw_actions = load_policy(directory, use_ema=False).act(obs, seed=0)
    assert not np.allclose(ema_actions, raw_actions)


@pytest.mark.parametrize("policy_type", ["bc", "seed-tutorial"])
def test_baselines_load_behind_the_same_interface(tmp_path, policy_type):
    config = ModelConfig(policy_type=policy_type, window=Window(1, 1))
    directory, _, _ = write_checkpoint(tmp_path / policy_type, config)
    policy = load_policy(directory)
    actions = policy.act(np.zeros((4, 1, 3), np.float32), seed=3)
    assert actions.shape == (4, 1, 1)
    assert np.all(np.abs(actions) <= 2)


def test_wrong_observation_shape_is_refused(tmp_path):
    directory, _, _ = write_checkpoint(tmp_path / "ckpt", CHUNKED)
    with pytest.raises(ContractError, match=r"\[B, 2, 3\]"):
        load_policy(directory).act(np.zeros((4, 3), np.float32))


def test_loading_never_unpickles_arbitrary_objects(tmp_path):
    directory, _, _ = write_checkpoint(tmp_path / "ckpt", CHUNKED)
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (directory / POLICY_FILE).write_bytes(pickle.dumps({"model": Exploit(), "ema": {}}))
    with pytest.raises(CheckpointError, match="plain tensors"):
        load_policy(directory)
    assert not marker.exists()


def test_incomplete_checkpoints_are_named(tmp_path):
    directory, _, _ = write_checkpoint(tmp_path / "ckpt", CHUNKED)
    (directory / "meta.json").unlink()
    with pytest.raises(CheckpointError, match=r"meta\.json is missing"):
        load_policy(directory)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="sampler"):
        load_policy(directory, sampler="euler")


# Chi et al.'s window (To=2, T=16, Ta=8) with a small temporal U-Net.
UNET = ModelConfig(
    window=Window(2, 16, 8),
    denoiser="unet",
    unet_down_dims=(8, 16, 32),
    unet_groups=4,
    time_embed_dim=16,
)


@pytest.mark.parametrize("config", [CHUNKED, UNET], ids=["mlp", "unet"])
def test_exported_onnx_sampler_matches_the_torch_policy(tmp_path, config, caplog):
    from diffpol.sampler import OnnxPolicy, export_onnx
    from diffpol.sampler.export import DEFAULT_ATOL

    directory, _, _ = write_checkpoint(tmp_path / "ckpt", config)
    policy = load_policy(directory, sampler="ddim", steps=5)
    with caplog.at_level("INFO", logger="diffpol.sampler.export"):
        path = export_onnx(
            policy.loop,
            policy.normalizer,
            policy.env,
            policy.window,
            tmp_path / "policy.onnx",
            model_version=policy.model_version,
        )
    # The U-Net loop is traced and slimmed (one graph); only ReLU MLPs become ReLU networks.
    graph = "relu-network" if config.denoiser == "mlp" else "optimised"
    assert f"({graph} graph)" in caplog.text
    onnx_policy = OnnxPolicy(path)
    window = config.window
    assert onnx_policy.spec == PolicySpec(3, 1, window.n_obs_steps, window.n_action_steps)
    obs = np.random.default_rng(1).normal(0, 1, (16, 2, 3)).astype(np.float32)
    actions = onnx_policy.act(obs, seed=9)
    assert actions.shape == (16, window.n_action_steps, 1)
    # Within the export's own bound, in env units (the action scale is 2).
    np.testing.assert_allclose(actions, policy.act(obs, seed=9), atol=2 * DEFAULT_ATOL)


def test_a_unet_checkpoint_acts_like_its_loop(tmp_path):
    directory, _, ema = write_checkpoint(tmp_path / "ckpt", UNET)
    policy = load_policy(directory, sampler="ddim", steps=5)
    assert policy.window == Window(2, 16, 8)
    obs = np.random.default_rng(0).normal(0, 1, (4, 2, 3)).astype(np.float32)
    noise, _ = draw_sampler_noise(3, 4, 16, 1, 0)
    with torch.no_grad():
        expected = ema.sampling_loop("ddim", 5)(
            torch.from_numpy(NORMALIZER.obs.normalize(obs)), torch.from_numpy(noise)
        )[:, :8].numpy()
    expected = np.clip(NORMALIZER.action.unnormalize(expected), -2, 2)
    np.testing.assert_allclose(policy.act(obs, seed=3), expected, atol=1e-6)


@pytest.mark.parametrize(
    "objective, sampler, steps, noisy",
    [("flow", "flow", 2, 0), ("flow", "flow-midpoint", 4, 0), ("consistency", "consistency", 2, 1)],
)
def test_few_step_policies_export_and_serve_their_family_and_step_count(
    tmp_path, objective, sampler, steps, noisy
):
    import grpc
    import onnx

    from diffpol.sampler import OnnxPolicy, export_onnx, serve
    from diffpol.v1 import sampler_pb2, sampler_pb2_grpc

    teacher = "diffusion" if objective == "consistency" else None
    config = dataclasses.replace(CHUNKED, objective=objective, teacher=teacher)
    directory, _, _ = write_checkpoint(tmp_path / "ckpt", config)
    with pytest.raises(ValueError, match="samples with"):
        load_policy(directory, sampler="ddim")
    policy = load_policy(directory, sampler=sampler, steps=steps)
    assert (policy.sampler, policy.steps, policy.loop.step_noise_steps) == (sampler, steps, noisy)
    # export_onnx validates the graph against PyTorch on random inputs before it writes.
    path = export_onnx(
        policy.loop,
        policy.normalizer,
        policy.env,
        policy.window,
        tmp_path / "policy.onnx",
        model_version=policy.model_version,
    )
    # Euler and consistency steps are StepUpdates: the ReLU-network exporter builds them.
    relu = onnx.load(path).graph.name == "diffpol_relu_sampler"
    assert relu == (sampler != "flow-midpoint")
    onnx_policy = OnnxPolicy(path)
    obs = np.random.default_rng(2).normal(0, 1, (16, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(onnx_policy.act(obs, seed=4), policy.act(obs, seed=4), atol=1e-4)
    with serve(path) as server, grpc.insecure_channel(server.address) as channel:
        info = sampler_pb2_grpc.SamplerServiceStub(channel).GetModelInfo(
            sampler_pb2.GetModelInfoRequest(), timeout=10
        )
    assert (info.sampler, info.steps) == (sampler, steps)
