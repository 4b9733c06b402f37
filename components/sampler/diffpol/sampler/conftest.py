"""Shared fixtures of the sampler's tests: exported reference models (one export per test
process) and one running server on the deterministic DDIM model."""

from __future__ import annotations

import grpc
import pytest


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    """Paths of small exported samplers: deterministic DDIM (v1, v2) and stochastic DDPM."""
    from diffpol.sampler.testing import export_reference, export_reference_ddpm

    root = tmp_path_factory.mktemp("models")
    return {
        "ddim": export_reference(root / "ddim.onnx", model_version="v1", seed=0),
        "ddim_v2": export_reference(root / "ddim_v2.onnx", model_version="v2", seed=1),
        "ddpm": export_reference_ddpm(root / "ddpm.onnx", model_version="ddpm-v1", seed=2),
    }


@pytest.fixture(scope="session")
def policy(models):
    """The DDIM model in process: what every answer of ``server`` must equal."""
    from diffpol.sampler import OnnxPolicy

    return OnnxPolicy(models["ddim"])


@pytest.fixture(scope="session")
def server(models):
    """A SamplerServer on 127.0.0.1 (free port) for the DDIM model, max_batch_size 64.
    Shared: tests that reload, stop or reconfigure a server start their own."""
    from diffpol.sampler import serve

    srv = serve(models["ddim"], max_batch_size=64)
    yield srv
    srv.stop(0)


@pytest.fixture(scope="session")
def channel(server):
    with grpc.insecure_channel(server.address) as ch:
        yield ch


@pytest.fixture(scope="session")
def stub(channel):
    from diffpol.v1 import sampler_pb2_grpc

    return sampler_pb2_grpc.SamplerServiceStub(channel)
