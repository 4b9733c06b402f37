"""diffpol's contracts: protobuf messages (``diffpol.v1``) and what every component derives from them.

Components talk to each other only through these: the Arrow schema of transitions, the
sampler's tensor encoding, the shared noise stream and the policy interface; and they
reach Ray one way, ``ray_session``.
"""

from diffpol.contracts.arrow import (
    SCHEMA_VERSION,
    batch_from_envelope,
    batch_to_envelope,
    transition_schema,
    validate_batch,
)
from diffpol.contracts.errors import ContractError
from diffpol.contracts.noise import draw_noise, draw_sampler_noise
from diffpol.contracts.policy import Policy, PolicySpec
from diffpol.contracts.ray_session import RaySessionConfig, ray_session
from diffpol.contracts.tensor import numpy_to_tensor, tensor_to_numpy

__version__ = "0.1.0"
CONTRACT_VERSION = "diffpol.v1"

__all__ = [
    "CONTRACT_VERSION",
    "SCHEMA_VERSION",
    "ContractError",
    "Policy",
    "PolicySpec",
    "RaySessionConfig",
    "batch_from_envelope",
    "batch_to_envelope",
    "draw_noise",
    "draw_sampler_noise",
    "numpy_to_tensor",
    "ray_session",
    "tensor_to_numpy",
    "transition_schema",
    "validate_batch",
]
