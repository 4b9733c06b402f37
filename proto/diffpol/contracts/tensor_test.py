import numpy as np
import pytest

from diffpol.contracts import ContractError, numpy_to_tensor, tensor_to_numpy
from diffpol.v1 import sampler_pb2


def test_tensor_round_trip():
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    tensor = sampler_pb2.Tensor.FromString(numpy_to_tensor(array).SerializeToString())
    np.testing.assert_array_equal(tensor_to_numpy(tensor), array)


def test_values_must_fill_the_shape():
    tensor = sampler_pb2.Tensor(shape=[2, 3], values=[1.0] * 5)
    with pytest.raises(ContractError, match=r"obs.shape \[2, 3\] needs 6 values, got 5"):
        tensor_to_numpy(tensor, "obs")
