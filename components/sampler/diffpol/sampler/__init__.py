"""diffpol's sampler: export a denoising loop to one ONNX graph, run it, serve it over gRPC.

Importing this package does not import torch: ``export_onnx`` (which needs it) is loaded
on first use, so the runtime, server and client run where torch is not installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from diffpol.contracts.model_metadata import ModelMetadata
from diffpol.sampler.errors import ArtifactError, ExportValidationError, SamplerInputError
from diffpol.sampler.runtime import DEFAULT_MAX_BATCH_SIZE, OnnxPolicy

if TYPE_CHECKING:
    from diffpol.sampler.actor import (
        SamplerActor,
        SamplerReplicas,
        start_sampler_actor,
        start_sampler_replicas,
    )
    from diffpol.sampler.client import SamplerClient, SampleStream, balanced_target
    from diffpol.sampler.export import export_onnx
    from diffpol.sampler.server import SamplerServer, ServerConfig, serve

__version__ = "0.1.0"

_LAZY = {
    "export_onnx": "diffpol.sampler.export",
    "SamplerServer": "diffpol.sampler.server",
    "ServerConfig": "diffpol.sampler.server",
    "serve": "diffpol.sampler.server",
    "SamplerClient": "diffpol.sampler.client",
    "SampleStream": "diffpol.sampler.client",
    "balanced_target": "diffpol.sampler.client",
    "SamplerActor": "diffpol.sampler.actor",
    "SamplerReplicas": "diffpol.sampler.actor",
    "start_sampler_actor": "diffpol.sampler.actor",
    "start_sampler_replicas": "diffpol.sampler.actor",
}

__all__ = [
    "DEFAULT_MAX_BATCH_SIZE",
    "ArtifactError",
    "ExportValidationError",
    "ModelMetadata",
    "OnnxPolicy",
    "SampleStream",
    "SamplerActor",
    "SamplerClient",
    "SamplerInputError",
    "SamplerReplicas",
    "SamplerServer",
    "ServerConfig",
    "__version__",
    "balanced_target",
    "export_onnx",
    "serve",
    "start_sampler_actor",
    "start_sampler_replicas",
]


def __getattr__(name: str) -> Any:
    # torch (export), grpc (server, client) and ray (actor) load only when used.
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'diffpol.sampler' has no attribute {name!r}")
