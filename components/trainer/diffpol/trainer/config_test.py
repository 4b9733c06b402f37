"""Config validation and its JSON round trip (how checkpoints store it)."""

from __future__ import annotations

import json

import pytest

from diffpol.contracts import Window
from diffpol.diffusion import NoiseScheduleConfig
from diffpol.trainer.config import Config, ModelConfig, OptimConfig, TrainConfig


def test_config_round_trips_through_json():
    config = Config(
        model=ModelConfig(
            policy_type="bc", hidden_width=64, schedule=NoiseScheduleConfig(beta_schedule="linear")
        ),
        optim=OptimConfig(lr=3e-4, betas=(0.95, 0.99)),
        train=TrainConfig(epochs=7, storage_path="s3://bucket/runs", gpus=1),
    )
    assert Config.from_json(json.loads(json.dumps(config.to_json()))) == config


def test_defaults_are_the_measured_pendulum_choice():
    model = ModelConfig()
    assert model.window == Window(n_obs_steps=2, horizon=1, n_action_steps=1)
    assert model.schedule.prediction_type == "sample"
    assert model.schedule.num_train_timesteps == 100 and model.schedule.beta_schedule == "cosine"


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ModelConfig(policy_type="gan"), "policy_type"),
        (lambda: ModelConfig(window=Window(horizon=2, n_action_steps=3)), "n_action_steps"),
        (lambda: ModelConfig(window=(2, 1, 1)), "window must be"),
        (lambda: ModelConfig(time_embed_dim=7), "time_embed_dim"),
        (lambda: ModelConfig(activation="gelu"), "activation"),
        (lambda: ModelConfig(flow_time_sampling="cosine"), "flow_time_sampling"),
        (lambda: OptimConfig(lr=0), "lr"),
        (lambda: OptimConfig(ema_decay=1.0), "ema_decay"),
        (lambda: TrainConfig(epochs=0), "epochs"),
        (lambda: TrainConfig(run_name="a/b"), "run_name"),
        (lambda: TrainConfig(gpus=-1), "gpus"),
    ],
)
def test_invalid_values_are_named(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_flat_window_keys_of_older_checkpoints_read_as_the_window():
    raw = Config(model=ModelConfig(window=Window(3, 8, 4))).to_json()
    assert raw["model"]["window"] == {"n_obs_steps": 3, "horizon": 8, "n_action_steps": 4}
    raw["model"].update(raw["model"].pop("window"))
    assert Config.from_json(raw).model.window == Window(3, 8, 4)
    # Both forms at once are ambiguous.
    raw["model"]["window"] = {"n_obs_steps": 3, "horizon": 8, "n_action_steps": 4}
    with pytest.raises(ValueError, match="both a window and flat"):
        Config.from_json(raw)


def test_an_invalid_window_in_json_is_named():
    raw = Config().to_json()
    raw["model"]["window"]["n_action_steps"] = 5
    with pytest.raises(ValueError, match=r"n_action_steps \(Ta=5\) exceeds horizon"):
        Config.from_json(raw)


def test_unknown_json_fields_are_refused():
    raw = Config().to_json()
    raw["train"]["learning_rate"] = 1.0
    with pytest.raises(ValueError, match="learning_rate"):
        Config.from_json(raw)
