"""Ray Train end to end, small: checkpoints, outputs, re-runs that resume or return."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

from diffpol.contracts import Window
from diffpol.trainer import (
    Config,
    ModelConfig,
    OptimConfig,
    PolicyRun,
    RunMismatchError,
    TrainConfig,
    load_policy,
    train,
    train_many,
)
from diffpol.trainer.checkpoint import LIGHTNING_FILE, META_FILE, POLICY_FILE
from diffpol.trainer.faults import RecordTrainingStarts
from diffpol.trainer.synthetic import bimodal_samples, write_samples

CONFIG = Config(
    model=ModelConfig(window=Window(2, 4, 2), hidden_width=16, depth=1),
    optim=OptimConfig(warmup_steps=2),
    train=TrainConfig(epochs=2, batch_size=64, keep_checkpoints=1, max_failures=0),
)


@pytest.fixture(scope="module")
def samples_dir(tmp_path_factory):
    obs, action = bimodal_samples(600, n_obs_steps=2, horizon=4, seed=3)
    return write_samples(tmp_path_factory.mktemp("samples"), obs, action, val_fraction=0.2)


@pytest.fixture(scope="module")
def first_run(ray_local, samples_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    return train(samples_dir, out, CONFIG)


def read_rows(path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_a_run_writes_every_epoch_and_its_outputs(first_run):
    rows = read_rows(first_run.metrics_csv)
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert all(float(r["train_loss"]) > 0 and float(r["val_loss"]) > 0 for r in rows)
    steps_per_epoch = 8  # ceil(500 train rows / 64): 10 of 12 episodes of 50
    assert [int(r["global_step"]) for r in rows] == [steps_per_epoch, 2 * steps_per_epoch]
    assert first_run.epochs_completed == 2 and not first_run.already_complete
    assert first_run.metrics["epoch"] == 1
    assert first_run.loss_plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(first_run.tensorboard_dir.glob("events.out.tfevents.*"))


def test_checkpoint_holds_training_state_and_loads_without_unpickling(first_run):
    ckpt = first_run.checkpoint_dir
    state = torch.load(ckpt / LIGHTNING_FILE, map_location="cpu", weights_only=True)
    assert state["epoch"] == 1
    assert state["optimizer_states"][0]["state"], "optimizer moments are saved"
    assert state["lr_schedulers"][0]["last_epoch"] == 16
    assert any(k.startswith("ema.averaged.") for k in state["state_dict"])
    meta = json.loads((ckpt / META_FILE).read_text())
    assert meta["completed"] and meta["epochs_completed"] == 2
    assert len(meta["data"]["fingerprint"]) == 64
    assert {"torch", "lightning", "ray", "diffpol.trainer"} <= meta["versions"].keys()
    assert [row["epoch"] for row in meta["history"]] == [0, 1]


def test_loaded_policy_acts_in_bounds_and_reproducibly(first_run):
    policy = load_policy(first_run.checkpoint_dir, sampler="ddim", steps=5)
    assert policy.window == Window(n_obs_steps=2, horizon=4, n_action_steps=2)
    obs = np.random.default_rng(0).standard_normal((7, 2, 3)).astype(np.float32)
    actions = policy.act(obs, seed=11)
    assert actions.shape == (7, 2, 1) and actions.dtype == np.float32
    assert np.all(actions >= np.float32(policy.env.action_low[0]))
    assert np.all(actions <= np.float32(policy.env.action_high[0]))
    np.testing.assert_array_equal(actions, policy.act(obs, seed=11))
    assert policy.env.env_id == "Pendulum-v1" and policy.loop.steps == 5


def test_running_the_same_command_again_returns_the_finished_run(first_run, samples_dir):
    before = first_run.metrics_csv.read_text()
    again = train(samples_dir, first_run.out_dir, CONFIG)
    assert again.already_complete
    assert again.epochs_completed == 2
    assert again.metrics_csv.read_text() == before


def test_a_rerun_over_truncated_final_weights_restores_them_from_ray_storage(
    first_run, samples_dir, tmp_path
):
    victim = first_run.checkpoint_dir / POLICY_FILE
    obs = np.random.default_rng(1).standard_normal((3, 2, 3)).astype(np.float32)
    expected = load_policy(first_run.checkpoint_dir).act(obs, seed=4)
    intact = victim.read_bytes()
    victim.write_bytes(intact[: len(intact) // 2])
    starts = tmp_path / "starts"
    again = train(samples_dir, first_run.out_dir, CONFIG, callbacks=[RecordTrainingStarts(starts)])
    assert not again.already_complete  # not taken for finished on its JSON alone
    assert not starts.exists(), "the complete run was trained again"
    assert victim.read_bytes() == intact
    np.testing.assert_array_equal(load_policy(again.checkpoint_dir).act(obs, seed=4), expected)
    assert [int(r["epoch"]) for r in read_rows(again.metrics_csv)] == [0, 1]


def test_a_rerun_with_more_epochs_resumes_from_ray_storage(first_run, samples_dir, tmp_path):
    # Lose the local copy too: the run must come back from Ray Train's storage and
    # train only the new epoch, after the two already done.
    before = read_rows(first_run.metrics_csv)
    for path in first_run.checkpoint_dir.iterdir():
        path.unlink()
    first_run.checkpoint_dir.rmdir()
    starts = tmp_path / "starts"
    longer = dataclasses.replace(CONFIG, train=dataclasses.replace(CONFIG.train, epochs=3))
    extended = train(
        samples_dir, first_run.out_dir, longer, callbacks=[RecordTrainingStarts(starts)]
    )
    assert starts.read_text().split() == ["2"]
    rows = read_rows(extended.metrics_csv)
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert rows[:2] == before
    assert int(rows[2]["global_step"]) == 24
    assert extended.epochs_completed == 3 and not extended.already_complete


def test_a_different_config_under_the_same_run_is_refused(first_run, samples_dir):
    changed = dataclasses.replace(CONFIG, optim=OptimConfig(lr=5e-4))
    with pytest.raises(RunMismatchError, match="optim"):
        train(samples_dir, first_run.out_dir, changed)


def test_windows_that_do_not_match_the_model_are_refused(ray_local, samples_dir, tmp_path):
    wrong = dataclasses.replace(CONFIG, model=ModelConfig(window=Window(1, 4)))
    with pytest.raises(ValueError, match="n_obs_steps=2, horizon=4"):
        train(samples_dir, tmp_path, wrong)


def test_policies_of_one_run_must_share_its_resources(samples_dir, tmp_path):
    wider = dataclasses.replace(CONFIG, train=dataclasses.replace(CONFIG.train, workers=2))
    runs = {"a": PolicyRun(CONFIG, tmp_path / "a"), "b": PolicyRun(wider, tmp_path / "b")}
    with pytest.raises(ValueError, match="must share its workers: got workers 1 and 2"):
        train_many(samples_dir, runs)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_another_set_of_policies_under_the_same_run_is_refused(first_run, samples_dir, tmp_path):
    runs = {
        CONFIG.train.run_name: PolicyRun(CONFIG, first_run.out_dir),
        "extra": PolicyRun(CONFIG, tmp_path / "extra"),
    }
    with pytest.raises(RunMismatchError, match=r"set of policies \(extra\)"):
        train_many(samples_dir, runs)


def test_policies_of_one_run_train_each_on_their_own_samples(ray_local, samples_dir, tmp_path):
    from diffpol.trainer.checkpoint import read_checkpoint

    obs, action = bimodal_samples(300, n_obs_steps=1, horizon=2, seed=5)
    other = write_samples(tmp_path / "other", obs, action, val_fraction=0.0)
    short = dataclasses.replace(CONFIG, model=ModelConfig(window=Window(1, 2), hidden_width=16))
    runs = {
        "main": PolicyRun(CONFIG, tmp_path / "main"),
        "short": PolicyRun(short, tmp_path / "short", samples_dir=other),
    }
    results = train_many(samples_dir, runs)
    for name, expected_dir, window in (("main", samples_dir, (2, 4)), ("short", other, (1, 2))):
        contents = read_checkpoint(results[name].checkpoint_dir)
        assert contents.meta.data["path"] == str(expected_dir.resolve())
        assert (contents.meta.data["n_obs_steps"], contents.meta.data["horizon"]) == window
        assert contents.meta.epochs_completed == CONFIG.train.epochs
        # One optimizer step per batch of its own rows: 300 rows at batch 64 are 5 steps.
    rows = read_rows(results["short"].metrics_csv)
    assert [int(r["global_step"]) for r in rows] == [5, 10]
    assert load_policy(results["short"].checkpoint_dir).window.horizon == 2
    # A policy whose samples do not fit its model is refused before anything trains.
    wrong = {"short": PolicyRun(short, tmp_path / "wrong", samples_dir=samples_dir)}
    with pytest.raises(ValueError, match="n_obs_steps=2, horizon=4"):
        train_many(other, wrong)
