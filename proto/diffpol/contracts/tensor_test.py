import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from diffpol.contracts import ContractError, numpy_to_tensor, tensor_to_numpy
from diffpol.contracts.tensor import (
    MAX_TENSOR_ELEMENTS,
    encode_bytes_field,
    encode_tensor,
    encode_varint_field,
)
from diffpol.v1 import sampler_pb2


@pytest.mark.parametrize("shape", [(2, 3, 4), (1, 2, 3), (40, 5, 3), (0, 2, 3), (5,)])
def test_tensor_round_trip(shape):
    array = (np.arange(int(np.prod(shape)), dtype=np.float32) / 7).reshape(shape)
    tensor = sampler_pb2.Tensor.FromString(numpy_to_tensor(array).SerializeToString())
    decoded = tensor_to_numpy(tensor)
    assert decoded.dtype == np.float32 and decoded.shape == shape
    np.testing.assert_array_equal(decoded, array)


def test_values_must_fill_the_shape():
    tensor = sampler_pb2.Tensor(shape=[2, 3], values=[1.0] * 5)
    with pytest.raises(ContractError, match=r"obs.shape \[2, 3\] needs 6 values, got 5"):
        tensor_to_numpy(tensor, "obs")


@pytest.mark.parametrize(
    "shape",
    [[0, 2**62], [2**63 - 1, 0, 3], [0, 2**31, 3], [0, 2**16, 2**16], [2**40, 2**40, 0]],
)
def test_empty_shapes_with_huge_dimensions_are_contract_errors(shape):
    # Their product is 0, so no values "fill" them, but numpy cannot represent them all.
    with pytest.raises(ContractError, match=rf"too large.*at most {MAX_TENSOR_ELEMENTS}"):
        tensor_to_numpy(sampler_pb2.Tensor(shape=shape), "obs")


def test_large_empty_shapes_within_the_bound_decode():
    shape = (0, MAX_TENSOR_ELEMENTS)
    assert tensor_to_numpy(sampler_pb2.Tensor(shape=shape)).shape == shape


def test_negative_and_too_many_dimensions_are_contract_errors():
    with pytest.raises(ContractError, match="negative dimension"):
        tensor_to_numpy(sampler_pb2.Tensor(shape=[-1, 2**62]))
    with pytest.raises(ContractError, match="40 dimensions; at most 32"):
        tensor_to_numpy(sampler_pb2.Tensor(shape=[1] * 40, values=[1.0]))


@given(
    hnp.arrays(
        np.float32,
        hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6),
        elements=st.floats(width=32, allow_nan=True),
    )
    | st.integers(65, 5000).map(lambda n: np.arange(n, dtype=np.float32) / 3)
)
def test_encode_tensor_is_what_protobuf_writes(array):
    encoded = encode_tensor(array)
    assert encoded == numpy_to_tensor(array).SerializeToString()
    decoded = tensor_to_numpy(sampler_pb2.Tensor.FromString(encoded))
    assert decoded.shape == array.shape
    assert decoded.tobytes() == array.tobytes()  # NaN payloads and -0.0 included


@given(
    obs=hnp.arrays(np.float32, hnp.array_shapes(min_dims=3, max_dims=3, max_side=5)),
    seed=st.none() | st.integers(0, 2**64 - 1),
    version=st.text(max_size=20),
)
def test_field_encoders_compose_messages_as_protobuf_does(obs, seed, version):
    encoded = encode_bytes_field(1, encode_tensor(obs))
    if seed is not None:
        encoded += encode_varint_field(2, seed)
    encoded += encode_bytes_field(3, version.encode())
    request = sampler_pb2.SampleRequest(obs=numpy_to_tensor(obs), seed=seed, model_version=version)
    assert encoded == request.SerializeToString()
