"""The trainer's checks on a preprocess output."""

from __future__ import annotations

import pytest

from diffpol.contracts import Window
from diffpol.contracts.errors import ContractError
from diffpol.trainer.config import ModelConfig
from diffpol.trainer.data import check_model_matches, open_training_data
from diffpol.trainer.synthetic import bimodal_samples, write_samples


@pytest.fixture
def samples(tmp_path):
    obs, action = bimodal_samples(300, n_obs_steps=2, horizon=3)
    return write_samples(tmp_path / "samples", obs, action)


def test_synthetic_samples_follow_the_preprocess_contract(samples):
    data = open_training_data(samples)
    assert (data.info.window.n_obs_steps, data.info.window.horizon) == (2, 3)
    assert data.info.train.rows + data.info.val.rows == 300
    described = data.describe()
    assert described["fingerprint"] == data.fingerprint and described["env_id"] == "Pendulum-v1"


def test_fingerprint_changes_with_the_data(samples):
    before = open_training_data(samples).fingerprint
    assert open_training_data(samples).fingerprint == before
    obs, action = bimodal_samples(300, n_obs_steps=2, horizon=3, seed=1)
    write_samples(samples, obs, action)
    assert open_training_data(samples).fingerprint != before


def test_model_windows_must_match_the_samples(samples):
    data = open_training_data(samples)
    check_model_matches(ModelConfig(window=Window(2, 3)), data)
    with pytest.raises(ValueError, match="horizon=3"):
        check_model_matches(ModelConfig(window=Window(2, 1)), data)


def test_a_directory_without_samples_is_refused(tmp_path):
    with pytest.raises(ContractError, match=r"samples\.json is missing"):
        open_training_data(tmp_path)
