from __future__ import annotations

import dataclasses

import onnx
import pytest
from onnx import TensorProto, helper

from diffpol.contracts import (
    CONTRACT_VERSION,
    METADATA_KEYS,
    ArtifactError,
    EnvShape,
    ModelMetadata,
    Window,
    read_model_metadata,
)

METADATA = ModelMetadata(
    env=EnvShape("Pendulum-v1", 3, 1, (-2.0,), (2.0,)),
    window=Window(n_obs_steps=2, horizon=1, n_action_steps=1),
    sampler="ddim",
    steps=10,
    step_noise_steps=0,
    model_version="v1",
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
        ({"horizon": "0"}, "horizon must be an integer >= 1"),
        ({"n_action_steps": "2"}, r"n_action_steps \(Ta=2\) exceeds horizon \(T=1\)"),
        ({"action_low": "[3.0]"}, "must be below action_high"),
        ({"action_high": "[NaN]"}, "action_high must be finite"),
        ({"action_low": "[-1.0, -1.0]"}, "action_low has 2 values, act_dim is 1"),
        ({"obs_dim": "three"}, "malformed metadata"),
        ({"steps": "0"}, "steps must be >= 1"),
    ],
)
def test_inconsistent_metadata_is_refused_with_the_file_named(tmp_path, change, message):
    path = _write_model(tmp_path / "bad.onnx", METADATA.to_props() | change)
    with pytest.raises(ArtifactError, match=f"bad.onnx.*{message}"):
        read_model_metadata(path)


def test_metadata_props_are_flat_strings_that_older_readers_know():
    props = METADATA.to_props()
    assert props["obs_dim"] == "3" and props["horizon"] == "1"
    assert props["action_low"] == "[-2.0]" and props["env_id"] == "Pendulum-v1"
    with pytest.raises(ArtifactError, match="steps must be >= 1"):
        dataclasses.replace(METADATA, steps=0)
