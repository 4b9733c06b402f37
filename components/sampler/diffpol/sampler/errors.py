"""Errors of the sampler, each naming what is wrong and what to do about it."""

from __future__ import annotations

from typing import Literal

from diffpol.contracts import ArtifactError, ContractError

__all__ = ["ArtifactError", "ExportValidationError", "SamplerInputError", "SamplerRpcError"]

# gRPC status names (grpc.StatusCode members) a bad request maps to; kept as strings so
# the runtime does not import grpc.
InputErrorCode = Literal[
    "INVALID_ARGUMENT", "NOT_FOUND", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION"
]


class SamplerInputError(ContractError):
    """A request the sampler cannot run; ``code`` is the gRPC status it is answered with."""

    def __init__(self, message: str, code: InputErrorCode = "INVALID_ARGUMENT") -> None:
        super().__init__(message)
        self.code: InputErrorCode = code


class ExportValidationError(ContractError):
    """The exported graph does not reproduce the PyTorch loop; nothing was written."""


class SamplerRpcError(RuntimeError):
    """A remote call failed for a reason other than its input (after any retries).

    ``code`` is the gRPC status name, e.g. "UNAVAILABLE" or "DEADLINE_EXCEEDED".
    """

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code
