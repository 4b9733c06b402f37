from __future__ import annotations

import json

import pytest

from diffpol.contracts import ContractError, EnvShape, Window
from diffpol.contracts.dataset import DatasetManifest, ReturnStats

PENDULUM = EnvShape("Pendulum-v1", 3, 1, (-2,), (2,))


def test_env_shape_round_trips_through_flat_json_and_stores_floats():
    assert PENDULUM.action_low == (-2.0,) and isinstance(PENDULUM.action_low[0], float)
    raw = json.loads(json.dumps(PENDULUM.to_json()))
    assert raw == {
        "env_id": "Pendulum-v1",
        "obs_dim": 3,
        "act_dim": 1,
        "action_low": [-2.0],
        "action_high": [2.0],
    }
    assert EnvShape.from_json(raw) == PENDULUM


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"obs_dim": 0}, "obs_dim must be an integer >= 1, got 0"),
        ({"act_dim": True}, "act_dim must be an integer >= 1, got True"),
        ({"env_id": ""}, "env_id must be a non-empty string"),
        ({"action_low": (-1.0, -1.0)}, "action_low has 2 values, act_dim is 1"),
        ({"action_high": (float("inf"),)}, "action_high must be finite"),
        ({"action_low": (2.0,)}, "must be below action_high"),
    ],
)
def test_env_shape_names_what_is_wrong(kwargs, message):
    fields = PENDULUM.to_json() | kwargs
    with pytest.raises(ContractError, match=message):
        EnvShape(**fields)


def test_env_shape_from_json_names_missing_and_malformed_keys():
    with pytest.raises(ContractError, match="missing act_dim, action_low"):
        EnvShape.from_json({"env_id": "e", "obs_dim": 1, "action_high": [1]})
    with pytest.raises(ContractError, match=r"malformed.*list of numbers"):
        EnvShape.from_json(PENDULUM.to_json() | {"action_low": "-2"})


def test_check_fits_names_each_mismatched_dimension():
    PENDULUM.check_fits(EnvShape("Pendulum-v1", 3, 1, (-1,), (1,)), "model")
    with pytest.raises(ContractError, match=r"model m\.onnx does not fit Pendulum-v1: obs_dim 39"):
        PENDULUM.check_fits(EnvShape("x", 39, 4, (-1,) * 4, (1,) * 4), "model m.onnx")


def test_window_defaults_validation_and_json():
    assert Window() == Window(1, 1, 1)
    chunked = Window(n_obs_steps=2, horizon=16, n_action_steps=8)
    assert Window.from_json(chunked.to_json()) == chunked
    with pytest.raises(ContractError, match=r"n_action_steps \(Ta=9\) exceeds horizon \(T=8\)"):
        Window(2, 8, 9)
    with pytest.raises(ContractError, match="n_obs_steps must be an integer >= 1"):
        Window(0, 1, 1)
    with pytest.raises(ContractError, match="window is missing n_action_steps"):
        Window.from_json({"n_obs_steps": 1, "horizon": 1})


def test_a_manifest_keeps_its_flat_on_disk_layout():
    manifest = DatasetManifest(
        schema_version=1,
        env=PENDULUM,
        policy="expert",
        policy_params={},
        seed=0,
        episodes=1,
        transitions=200,
        returns=ReturnStats(-1.0, 0.0, -1.0, -1.0),
        fingerprint="f",
    )
    raw = manifest.to_json()
    assert "env" not in raw and raw["obs_dim"] == 3 and raw["action_low"] == [-2.0]
    assert DatasetManifest.from_json(json.loads(json.dumps(raw))) == manifest
    del raw["act_dim"]
    with pytest.raises(ContractError, match=r"manifest is missing field.*act_dim"):
        DatasetManifest.from_json(raw)
