"""PreprocessConfig: one Window for its time sizes, validated there; JSON in both forms."""

from __future__ import annotations

import json

import pytest

from diffpol.contracts import Window
from diffpol.preprocess import PreprocessConfig


def test_defaults_are_chi_et_al_windows():
    assert PreprocessConfig().window == Window(n_obs_steps=2, horizon=16, n_action_steps=8)


def test_config_round_trips_through_json():
    config = PreprocessConfig(window=Window(3, 6, 2), val_fraction=0.2, seed=4, progress=False)
    raw = json.loads(json.dumps(config.to_json()))
    assert raw["window"] == {"n_obs_steps": 3, "horizon": 6, "n_action_steps": 2}
    assert PreprocessConfig.from_json(raw) == config


def test_flat_keys_of_older_configs_read_as_the_window():
    raw = PreprocessConfig(seed=3).to_json()
    del raw["window"]
    # Configs before Window had no n_action_steps: their policies executed one action.
    raw.update(n_obs_steps=4, horizon=5)
    assert PreprocessConfig.from_json(raw) == PreprocessConfig(window=Window(4, 5, 1), seed=3)


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"horizon": 0}, "horizon must be an integer >= 1"),
        ({"window": {"n_obs_steps": 2, "horizon": 4}}, "window is missing n_action_steps"),
        ({"window": {"n_obs_steps": 2, "horizon": 4, "n_action_steps": 1}, "horizon": 4}, "both"),
        ({"n_obs_step": 2}, "unknown field"),
    ],
)
def test_bad_json_is_named(raw, message):
    with pytest.raises(ValueError, match=message):
        PreprocessConfig.from_json(raw)


def test_window_must_be_a_window():
    with pytest.raises(ValueError, match=r"window must be a diffpol\.contracts\.Window"):
        PreprocessConfig(window=(2, 16, 8))
