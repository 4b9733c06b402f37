"""diffpol's contracts: protobuf messages (``diffpol.v1``) and what every component derives from them.

Components talk to each other only through these: the Arrow schema of transitions, the
sampler's tensor encoding, the env shape and time window every artifact carries, the exported model's metadata, the shared noise stream, the
policy interface and the policy specs that name policies; and they reach Ray one way,
``ray_session``.
"""

from diffpol.contracts.arrow import (
    SCHEMA_VERSION,
    batch_from_envelope,
    batch_schema_version,
    batch_to_envelope,
    transition_schema,
    upgrade_batch,
    validate_batch,
)
from diffpol.contracts.errors import ArtifactError, ContractError
from diffpol.contracts.model_metadata import METADATA_KEYS, ModelMetadata, read_model_metadata
from diffpol.contracts.noise import derive_seed, draw_noise, draw_sampler_noise
from diffpol.contracts.policy import Policy, PolicySpec
from diffpol.contracts.policy_specs import (
    BUILTIN_POLICIES,
    PolicyRef,
    build_policy,
    parse_policy_spec,
)
from diffpol.contracts.ray_session import RaySessionConfig, ray_session
from diffpol.contracts.shapes import EnvShape, Window
from diffpol.contracts.tensor import numpy_to_tensor, tensor_to_numpy
from diffpol.contracts.version import CONTRACT_VERSION

__version__ = "0.1.0"

__all__ = [
    "BUILTIN_POLICIES",
    "CONTRACT_VERSION",
    "METADATA_KEYS",
    "SCHEMA_VERSION",
    "ArtifactError",
    "ContractError",
    "EnvShape",
    "ModelMetadata",
    "Policy",
    "PolicyRef",
    "PolicySpec",
    "RaySessionConfig",
    "Window",
    "batch_from_envelope",
    "batch_schema_version",
    "batch_to_envelope",
    "build_policy",
    "derive_seed",
    "draw_noise",
    "draw_sampler_noise",
    "numpy_to_tensor",
    "parse_policy_spec",
    "ray_session",
    "read_model_metadata",
    "tensor_to_numpy",
    "transition_schema",
    "upgrade_batch",
    "validate_batch",
]
