"""The in-process rollout loop: schema, episode bookkeeping, determinism, action chunks."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from diffpol.contracts import transition_schema, validate_batch
from diffpol.rollout.plan import call_seed, episode_ids, make_plan, split_shards
from diffpol.rollout.policies import make_policy
from diffpol.rollout.runner import ShardRunner


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFPOL_CACHE_DIR", str(tmp_path / "cache"))


def _rows(env_id, policy, episodes, num_envs, seed=3, backend="auto", max_steps=None, shard=None):
    runner = ShardRunner(env_id, policy, num_envs, backend)
    plan = make_plan(env_id, policy.name, episodes, seed, policy.params, max_steps)
    batches = [b for s in split_shards(plan, shard or episodes) for b in runner.run_shard(s)]
    runner.close()
    return pa.Table.from_batches(batches)


def _column(table, name):
    return np.asarray(table[name].combine_chunks().flatten()).reshape(table.num_rows, -1)


def test_pendulum_rows_follow_the_schema_and_the_plan():
    policy = make_policy("noisy-expert", "Pendulum-v1", grid=60, noise_max=1.0)
    table = _rows("Pendulum-v1", policy, episodes=5, num_envs=2, max_steps=30)
    assert table.schema.equals(transition_schema(3, 1), check_metadata=False)
    validate_batch(table, 3, 1)
    assert table.num_rows == 5 * 30
    ids = table["episode_id"].to_numpy()
    np.testing.assert_array_equal(ids, np.repeat(episode_ids(3, np.arange(5)), 30))
    np.testing.assert_array_equal(table["seed"].to_numpy(), np.repeat(3 + np.arange(5), 30))
    np.testing.assert_array_equal(table["step"].to_numpy(), np.tile(np.arange(30), 5))
    truncated = table["truncated"].to_numpy().reshape(5, 30)
    assert truncated[:, -1].all() and not truncated[:, :-1].any()
    assert not table["terminated"].to_numpy().any()
    assert table["expert_action"].null_count == 0
    # The label is the clean expert action in the recorded observation.
    obs = _column(table, "obs")
    np.testing.assert_array_equal(
        _column(table, "expert_action"), policy.expert.act(obs[:, None])[:, 0]
    )
    assert np.abs(_column(table, "action") - _column(table, "expert_action")).max() > 0.1


def test_full_length_pendulum_episodes_run_200_steps_without_labels_for_the_expert():
    table = _rows(
        "Pendulum-v1", make_policy("expert", "Pendulum-v1", grid=60), episodes=3, num_envs=3
    )
    assert table.num_rows == 600
    assert table["expert_action"].null_count == 600


def test_rows_do_not_depend_on_how_episodes_are_batched():
    policy = make_policy("noisy-expert", "Pendulum-v1", grid=60, expert="expert-dp")
    a = _rows("Pendulum-v1", policy, episodes=7, num_envs=7, max_steps=40)
    b = _rows("Pendulum-v1", policy, episodes=7, num_envs=3, max_steps=40, shard=2)
    assert a.equals(b)


@pytest.mark.parametrize("backend", ["envpool", "gymnasium"])
def test_mountain_car_episodes_end_at_the_flag_with_nothing_after(backend):
    policy = make_policy("expert", "MountainCarContinuous-v0")
    table = _rows("MountainCarContinuous-v0", policy, episodes=6, num_envs=4, backend=backend)
    ids = table["episode_id"].to_numpy()
    steps = table["step"].to_numpy()
    terminated = table["terminated"].to_numpy()
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    lengths = np.diff(np.r_[starts, len(ids)])
    assert len(starts) == 6 and (lengths < 999).all() and len(set(lengths)) > 1
    np.testing.assert_array_equal(steps, np.concatenate([np.arange(n) for n in lengths]))
    last = np.r_[starts[1:] - 1, len(ids) - 1]
    assert terminated[last].all() and terminated.sum() == 6  # only the last step
    np.testing.assert_allclose(table["reward"].to_numpy()[last], 100 - 0.1 * 0.4**2, atol=1e-5)
    positions = _column(table, "obs")[:, 0]
    assert positions[last].max() < 0.45  # the observation *before* the final step


def test_random_mountain_car_is_truncated_at_the_plans_step_limit():
    table = _rows(
        "MountainCarContinuous-v0",
        make_policy("random", "MountainCarContinuous-v0"),
        episodes=4,
        num_envs=4,
        max_steps=120,
    )
    assert table.num_rows == 4 * 120
    truncated = table["truncated"].to_numpy().reshape(4, 120)
    assert truncated[:, -1].all() and not truncated[:, :-1].any()


def test_onnx_sampler_policy_runs_with_history_and_action_chunks(tmp_path):
    pytest.importorskip("torch")
    sampler = pytest.importorskip("diffpol.sampler")
    from diffpol.contracts import EnvShape, Window
    from diffpol.contracts.normalizer import AffineNormalizer, Normalizer
    from diffpol.sampler.testing import ReferenceLoop

    loop = ReferenceLoop(
        3, 1, n_obs_steps=2, horizon=4, steps=2, num_train_timesteps=10, width=16, depth=1
    )
    normalizer = Normalizer(
        obs=AffineNormalizer("standard", (0.0, 0.0, 0.0), (1.0, 1.0, 4.0)),
        action=AffineNormalizer("minmax", (0.0,), (2.0,)),
    )
    path = sampler.export_onnx(
        loop,
        normalizer,
        EnvShape("Pendulum-v1", 3, 1, (-2.0,), (2.0,)),
        Window(n_obs_steps=2, horizon=4, n_action_steps=3),
        tmp_path / "p.onnx",
        model_version="test",
    )
    policy = make_policy(f"onnx:{path}", "Pendulum-v1")
    table = _rows("Pendulum-v1", policy, episodes=2, num_envs=2, seed=11, max_steps=7)
    validate_batch(table, 3, 1)
    obs = _column(table, "obs").reshape(2, 7, 3)
    actions = _column(table, "action").reshape(2, 7)
    # Step 0: history = first obs twice; the call's 3 actions run at steps 0, 1, 2.
    first = policy.act(np.stack([obs[:, 0], obs[:, 0]], axis=1), seed=call_seed(11, 0, 0))
    np.testing.assert_allclose(actions[:, :3], first[:, :, 0], atol=1e-6)
    # Step 3: history = observations at steps 2 and 3.
    second = policy.act(obs[:, 2:4], seed=call_seed(11, 0, 3))
    np.testing.assert_allclose(actions[:, 3:6], second[:, :, 0], atol=1e-6)
    with pytest.raises(ValueError, match="MountainCarContinuous-v0 needs 2 and 1"):
        make_policy(f"onnx:{path}", "MountainCarContinuous-v0")
