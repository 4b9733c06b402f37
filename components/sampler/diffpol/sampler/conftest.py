"""Exported reference models shared by the sampler's tests (one export per test process)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Paths of small exported samplers: deterministic DDIM (v1, v2) and stochastic DDPM."""
    from diffpol.sampler.testing import export_reference

    root = tmp_path_factory.mktemp("models")
    return {
        "ddim": export_reference(root / "ddim.onnx", model_version="v1", seed=0),
        "ddim_v2": export_reference(root / "ddim_v2.onnx", model_version="v2", seed=1),
        "ddpm": export_reference(
            root / "ddpm.onnx",
            sampler="ddpm",
            steps=10,
            num_train_timesteps=10,
            model_version="ddpm-v1",
            seed=2,
        ),
    }
