"""``diffpol.v1.Tensor``: dense float32 arrays as plain repeated floats plus a shape."""

from __future__ import annotations

import math

import numpy as np

from diffpol.contracts.errors import ContractError
from diffpol.v1 import sampler_pb2


def numpy_to_tensor(array: np.ndarray) -> sampler_pb2.Tensor:
    array = np.ascontiguousarray(array, dtype=np.float32)
    tensor = sampler_pb2.Tensor(shape=array.shape)
    tensor.values.extend(array.ravel().tolist())
    return tensor


def tensor_to_numpy(tensor: sampler_pb2.Tensor, name: str = "tensor") -> np.ndarray:
    """Decode a Tensor, checking that its values fill its shape exactly."""
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise ContractError(f"{name}.shape {list(shape)} has a negative dimension")
    if math.prod(shape) != len(tensor.values):
        raise ContractError(
            f"{name}.shape {list(shape)} needs {math.prod(shape)} values, got {len(tensor.values)}"
        )
    return np.asarray(tensor.values, dtype=np.float32).reshape(shape)
