"""``diffpol.v1.Tensor``: dense float32 arrays as plain repeated floats plus a shape."""

from __future__ import annotations

import numpy as np

from diffpol.contracts.errors import ContractError
from diffpol.v1 import sampler_pb2

# Bounds on a declared shape. Real tensors are bounded far below by the gRPC message size
# (their values must fill the shape), but an empty one ([0, 2**62]) fills any shape with
# no values, and numpy cannot represent every such shape.
MAX_TENSOR_DIMS = 32
MAX_TENSOR_ELEMENTS = 2**31 - 1  # each dimension, and the product of the non-zero ones
# Below this many values np.fromiter is the fastest copy out of a protobuf repeated field;
# above it np.asarray is (benchmarks/RESULTS.md).
_FROMITER_MAX = 64


def numpy_to_tensor(array: np.ndarray) -> sampler_pb2.Tensor:
    array = np.ascontiguousarray(array, dtype=np.float32)
    tensor = sampler_pb2.Tensor(shape=array.shape)
    tensor.values.extend(array.ravel().tolist())
    return tensor


def check_shape(shape: tuple[int, ...], count: int, name: str = "tensor") -> None:
    """Raise ContractError unless ``count`` values exactly fill a representable ``shape``."""
    if len(shape) > MAX_TENSOR_DIMS:
        raise ContractError(
            f"{name}.shape has {len(shape)} dimensions; at most {MAX_TENSOR_DIMS} are supported"
        )
    if any(d < 0 for d in shape):
        raise ContractError(f"{name}.shape {list(shape)} has a negative dimension")
    size, nonzero = 1, 1
    for d in shape:
        size *= d
        nonzero *= d or 1
        if nonzero > MAX_TENSOR_ELEMENTS:
            raise ContractError(
                f"{name}.shape {list(shape)} is too large: each dimension, and the product of "
                f"the non-zero ones, must be at most {MAX_TENSOR_ELEMENTS}"
            )
    if size != count:
        raise ContractError(f"{name}.shape {list(shape)} needs {size} values, got {count}")


def tensor_to_numpy(tensor: sampler_pb2.Tensor, name: str = "tensor") -> np.ndarray:
    """Decode a Tensor, checking that its values fill its shape exactly."""
    shape = tuple(tensor.shape)
    values = tensor.values
    count = len(values)
    check_shape(shape, count, name)
    if count <= _FROMITER_MAX:
        array = np.fromiter(values, np.float32, count)
    else:
        array = np.asarray(values, dtype=np.float32)
    return array.reshape(shape)


# -- wire encoding -----------------------------------------------------------------------
# Messages holding tensors written straight to protobuf bytes: copying an array into a
# repeated float field goes through one Python float per value, while its packed wire
# form is the array's own little-endian bytes (a single copy: benchmarks/RESULTS.md).

_LITTLE_ENDIAN_F32 = np.dtype("<f4")


def _varint(value: int) -> bytes:
    if value < 0x80:  # most tags, lengths and dimensions: one byte
        return bytes((value,))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_bytes_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (message, string, bytes or packed repeated); empty: omitted."""
    if not payload:
        return b""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def encode_varint_field(number: int, value: int) -> bytes:
    """A non-negative integer field (always written: proto3 ``optional`` fields need that)."""
    if value < 0:
        raise ValueError(f"field {number}: only non-negative integers, got {value}")
    return _varint(number << 3) + _varint(value)


def encode_tensor(array: np.ndarray) -> bytes:
    """The serialized ``diffpol.v1.Tensor`` of ``array``, byte for byte what protobuf writes
    for ``numpy_to_tensor(array)``."""
    array = np.ascontiguousarray(array, dtype=_LITTLE_ENDIAN_F32)
    shape = array.shape
    shape = bytes(shape) if max(shape) < 0x80 else b"".join(_varint(d) for d in shape)
    return encode_bytes_field(1, shape) + encode_bytes_field(2, array.tobytes())
