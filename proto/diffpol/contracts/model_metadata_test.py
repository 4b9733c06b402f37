from __future__ import annotations

import dataclasses

import onnx
import pytest
from onnx import TensorProto, helper

from diffpol.contracts import (
    CONTRACT_VERSION,
    METADATA_KEYS,
    ArtifactError,
    ModelMetadata,
    read_model_metadata,
)

METADATA = ModelMetadata(
    env_id="Pendulum-v1",
    obs_dim=3,
    act_dim=1,
    n_obs_steps=2,
    horizon=1,
    n_action_steps=1,
    sampler="ddim",
    steps=10,
    step_noise_steps=0,
    model_version="v1",
    action_low=(-2.0,),
    action_high=(2.0,),
)


def _write_model(path, props):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph)
    helper.set_model_props(model, props)
    onnx.save(model, str(path))
    return path


def test_metadata_round_trips_through_an_onnx_file(tmp_path):
    path = _write_model(tmp_path / "m.onnx", METADATA.to_props())
    assert set(METADATA.to_props()) == set(METADATA_KEYS)
    assert read_model_metadata(path) == METADATA
    assert METADATA.contract_version == CONTRACT_VERSION


def test_a_file_that_is_not_onnx_is_named(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"not a model")
    with pytest.raises(ArtifactError, match=r"junk\.onnx.*not a readable ONNX model"):
        read_model_metadata(path)


def test_a_plain_onnx_model_is_not_a_diffpol_artifact(tmp_path):
    path = _write_model(tmp_path / "plain.onnx", {})
    with pytest.raises(ArtifactError, match=r"not a diffpol sampler artifact.*lack env_id"):
        read_model_metadata(path)


def test_another_contract_version_is_refused_with_what_to_do(tmp_path):
    props = METADATA.to_props() | {"contract_version": "diffpol.v0"}
    path = _write_model(tmp_path / "old.onnx", props)
    with pytest.raises(ArtifactError, match=r"'diffpol\.v0'.*re-export the model"):
        read_model_metadata(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"horizon": 0}, "horizon must be >= 1"),
        ({"n_action_steps": 2}, "n_action_steps .2. exceeds horizon .1."),
        ({"action_low": (3.0,)}, "must be below action_high"),
        ({"action_high": (float("nan"),)}, "action_high must be finite"),
        ({"action_low": (-1.0, -1.0)}, "action_low has 2 values, act_dim is 1"),
    ],
)
def test_inconsistent_metadata_is_refused(change, message):
    with pytest.raises(ArtifactError, match=message):
        dataclasses.replace(METADATA, **change)
