"""Fixtures of the integration suite: a real local multi-node Ray cluster, tiny exported
samplers, and the pipeline command line."""

from __future__ import annotations

import pytest
from cluster import ClusterConfig, LocalCluster
from pipeline import PipelineRunner


def pytest_addoption(parser):
    parser.addoption(
        "--replicas",
        type=int,
        default=2,
        help="load_test.py: sampler server processes to spread the load over (default 2)",
    )


@pytest.fixture(scope="module")
def cluster(request):
    """One cluster per test module, its driver connected; a module may set
    ``CLUSTER_CONFIG = ClusterConfig(...)`` to size it."""
    config = getattr(request.module, "CLUSTER_CONFIG", ClusterConfig())
    with LocalCluster(config) as local:
        local.connect()
        yield local


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Tiny exported samplers (the sampler component's reference loop, random weights):
    deterministic DDIM and stochastic DDPM (which also takes per-step noise)."""
    from diffpol.sampler.testing import export_reference

    root = tmp_path_factory.mktemp("models")
    return {
        "ddim": export_reference(root / "ddim.onnx", model_version="ddim-v1", seed=0),
        "ddpm": export_reference(
            root / "ddpm.onnx",
            sampler="ddpm",
            steps=10,
            num_train_timesteps=10,
            model_version="ddpm-v1",
            seed=1,
        ),
    }


@pytest.fixture
def run_pipeline(tmp_path):
    """``run_pipeline(args, cwd=None, timeout=...)`` runs ``python -m diffpol.pipeline.main``
    as a subprocess (see ``pipeline.PipelineRunner``)."""
    return PipelineRunner(default_cwd=tmp_path)
