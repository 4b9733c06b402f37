"""Meta-World data: scripted experts as data policies, rows with task and success."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from diffpol.contracts import transition_schema, validate_batch
from diffpol.rollout.plan import make_plan, split_shards
from diffpol.rollout.policies import make_policy
from diffpol.rollout.runner import ShardRunner


def _rows(env_id, policy, episodes, num_envs, seed, max_steps):
    runner = ShardRunner(env_id, policy, num_envs)
    plan = make_plan(env_id, policy.name, episodes, seed, policy.params, max_steps)
    batches = [b for s in split_shards(plan, episodes) for b in runner.run_shard(s)]
    runner.close()
    return pa.Table.from_batches(batches)


def test_mt10_expert_rows_carry_task_and_success_and_end_at_success():
    policy = make_policy("expert", "metaworld/MT10")
    assert policy.name == "expert-metaworld"
    # Seeds 40..42: reach, push, pick-place (task = seed % 10).
    table = _rows("metaworld/MT10", policy, episodes=3, num_envs=3, seed=40, max_steps=200)
    assert table.schema.equals(transition_schema(49, 4), check_metadata=False)
    validate_batch(table, 49, 4)
    tasks = table["task"].to_numpy(zero_copy_only=False)
    seeds = table["seed"].to_numpy()
    assert set(zip(seeds.tolist(), tasks.tolist(), strict=True)) == {
        (40, "reach-v3"),
        (41, "push-v3"),
        (42, "pick-place-v3"),
    }
    obs = np.asarray(table["obs"].combine_chunks().flatten()).reshape(-1, 49)
    hot = {"reach-v3": 0, "push-v3": 1, "pick-place-v3": 2}
    np.testing.assert_array_equal(obs[:, 39:].argmax(1), [hot[t] for t in tasks])
    success = table["success"].to_numpy(zero_copy_only=False)
    assert table["success"].null_count == 0
    for seed in (40, 41, 42):
        rows = seeds == seed
        ep_success = success[rows]
        terminated = table["terminated"].to_numpy()[rows]
        # The experts succeed within 200 steps here; the episode ends on that step.
        assert ep_success[-1] and terminated[-1] and not ep_success[:-1].any()


def test_policies_rebuild_from_their_name_and_params_as_actors_do():
    for spec in ("expert", "noisy-expert"):
        policy = make_policy(spec, "metaworld/MT10")
        rebuilt = make_policy(policy.name, "metaworld/MT10", **policy.params)
        assert (rebuilt.name, rebuilt.params) == (policy.name, policy.params)


def test_noisy_expert_labels_rows_with_the_clean_expert_action():
    policy = make_policy("noisy-expert", "metaworld/reach-v3", noise_max=0.3)
    table = _rows("metaworld/reach-v3", policy, episodes=2, num_envs=2, seed=5, max_steps=30)
    assert table["expert_action"].null_count == 0
    action = np.asarray(table["action"].combine_chunks().flatten()).reshape(-1, 4)
    label = np.asarray(table["expert_action"].combine_chunks().flatten()).reshape(-1, 4)
    assert np.abs(action - label).max() > 0.01
    obs = np.asarray(table["obs"].combine_chunks().flatten()).reshape(-1, 39)
    np.testing.assert_allclose(label, policy.expert.act(obs[:, None])[:, 0], atol=1e-6)


def test_pendulum_rows_have_no_task_and_null_success():
    policy = make_policy("random", "Pendulum-v1")
    table = _rows("Pendulum-v1", policy, episodes=1, num_envs=1, seed=0, max_steps=5)
    assert table["task"].to_pylist() == [""] * 5
    assert table["success"].null_count == 5


def test_a_metaworld_expert_is_refused_for_another_env():
    with pytest.raises(ValueError, match=r"expert-metaworld drives Meta-World envs.*Pendulum-v1"):
        make_policy("expert-metaworld", "Pendulum-v1")
    with pytest.raises(ValueError, match="takes no parameters"):
        make_policy("expert-metaworld", "metaworld/reach-v3", force=1.0)
    with pytest.raises(ValueError, match=r"no 'expert-dp' for metaworld/reach-v3"):
        make_policy("expert-dp", "metaworld/reach-v3")
