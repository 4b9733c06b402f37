"""Windows and padding, checked against hand-computed rows (no Ray needed)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from diffpol.contracts.arrow import fixed_list_values
from diffpol.contracts.errors import ContractError
from diffpol.contracts.normalizer import AffineNormalizer
from diffpol.preprocess.synthetic import synthetic_episodes
from diffpol.preprocess.windows import build_windows, label_values

IDENTITY_OBS = AffineNormalizer("standard", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
IDENTITY_ACT = AffineNormalizer("minmax", (0.0,), (1.0,))


def windows(table: pa.Table, n_obs_steps: int = 3, horizon: int = 4, **kw) -> pa.Table:
    return build_windows(
        table,
        n_obs_steps=n_obs_steps,
        horizon=horizon,
        obs_normalizer=kw.pop("obs_normalizer", IDENTITY_OBS),
        action_normalizer=kw.pop("action_normalizer", IDENTITY_ACT),
        **kw,
    )


def rows_by_key(samples: pa.Table) -> dict[tuple[int, int], dict]:
    return {(r["episode_id"], r["step"]): r for r in samples.to_pylist()}


def test_padding_at_episode_start_and_end_matches_hand_computed_rows():
    # Episode 0 has 3 steps (shorter than the horizon), episode 1 has 1, episode 2 has 6.
    table = synthetic_episodes([3, 1, 6], obs_dim=3, act_dim=1, first_episode_id=10)
    labels = table.column("expert_action").to_pylist()
    label = {(r["episode_id"], r["step"]): labels[i][0] for i, r in enumerate(table.to_pylist())}
    noise = {(r["episode_id"], r["step"]): r["obs"][2] for r in table.to_pylist()}
    got = rows_by_key(windows(table))
    assert len(got) == 10

    def obs(ep: int, *steps: int) -> list[float]:
        # obs = [episode index, step, noise]; episode index is id - 10.
        return [v for s in steps for v in (ep - 10, s, noise[(ep, s)])]

    def act(ep: int, *steps: int) -> list[float]:
        return [label[(ep, s)] for s in steps]

    # History pads with step 0's obs; the chunk pads with the last step's label.
    assert got[(10, 0)]["obs"] == pytest.approx(obs(10, 0, 0, 0))
    assert got[(10, 0)]["action"] == pytest.approx(act(10, 0, 1, 2, 2))
    assert got[(10, 1)]["obs"] == pytest.approx(obs(10, 0, 0, 1))
    assert got[(10, 1)]["action"] == pytest.approx(act(10, 1, 2, 2, 2))
    assert got[(10, 2)]["obs"] == pytest.approx(obs(10, 0, 1, 2))
    assert got[(10, 2)]["action"] == pytest.approx(act(10, 2, 2, 2, 2))
    # A one-step episode is all padding.
    assert got[(11, 0)]["obs"] == pytest.approx(obs(11, 0, 0, 0))
    assert got[(11, 0)]["action"] == pytest.approx(act(11, 0, 0, 0, 0))
    # Interior and end of a longer episode; no leakage from the neighbouring episodes.
    assert got[(12, 3)]["obs"] == pytest.approx(obs(12, 1, 2, 3))
    assert got[(12, 3)]["action"] == pytest.approx(act(12, 3, 4, 5, 5))
    assert got[(12, 2)]["action"] == pytest.approx(act(12, 2, 3, 4, 5))
    assert got[(12, 5)]["obs"] == pytest.approx(obs(12, 3, 4, 5))
    assert got[(12, 5)]["action"] == pytest.approx(act(12, 5, 5, 5, 5))


def test_row_order_of_the_input_does_not_matter():
    table = synthetic_episodes([5, 7], first_episode_id=3)
    shuffled = table.take(pa.array(np.random.default_rng(0).permutation(table.num_rows)))
    assert rows_by_key(windows(shuffled)) == rows_by_key(windows(table))


def test_multi_dimensional_windows_are_flattened_row_major():
    table = synthetic_episodes([4], obs_dim=2, act_dim=2)
    obs_norm = AffineNormalizer("standard", (0.0, 0.0), (1.0, 1.0))
    act_norm = AffineNormalizer("minmax", (0.0, 0.0), (1.0, 1.0))
    samples = windows(table, 2, 3, obs_normalizer=obs_norm, action_normalizer=act_norm)
    assert samples.schema.field("obs").type == pa.list_(pa.float32(), 4)
    assert samples.schema.field("action").type == pa.list_(pa.float32(), 6)
    labels = fixed_list_values(table.column("expert_action"), 2)
    row = rows_by_key(samples)[(0, 2)]
    assert row["obs"] == pytest.approx([0, 1, 0, 2])  # [ep, step] at steps 1 and 2
    assert row["action"] == pytest.approx(labels[[2, 3, 3]].ravel())


def test_samples_are_normalized_with_the_given_normalizers():
    table = synthetic_episodes([3])
    obs_norm = AffineNormalizer("standard", (1.0, 2.0, 3.0), (2.0, 4.0, 8.0))
    act_norm = AffineNormalizer("minmax", (0.5,), (2.5,))
    samples = windows(table, 1, 1, obs_normalizer=obs_norm, action_normalizer=act_norm)
    raw_obs = fixed_list_values(table.column("obs"), 3)
    raw_act = fixed_list_values(table.column("expert_action"), 1)
    np.testing.assert_allclose(
        fixed_list_values(samples.column("obs"), 3), (raw_obs - [1, 2, 3]) / [2, 4, 8], rtol=1e-6
    )
    np.testing.assert_allclose(
        fixed_list_values(samples.column("action"), 1), (raw_act - 0.5) / 2.5, rtol=1e-6
    )


def test_label_is_expert_action_where_present_else_action():
    table = synthetic_episodes([2, 3], expert_label=[True, False])
    labels, from_expert = label_values(table, 1)
    action = fixed_list_values(table.column("action"), 1)
    assert from_expert.tolist() == [True, True, False, False, False]
    np.testing.assert_allclose(labels[:2], action[:2] + 0.5)
    np.testing.assert_allclose(labels[2:], action[2:])
    # Also when the nulls sit in a sliced chunk (offset != 0), as in Ray blocks.
    sliced = pa.concat_tables([table.slice(0, 1), table.slice(1)])
    np.testing.assert_allclose(label_values(sliced, 1)[0], labels)


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 12), min_size=1, max_size=6),
    n_obs_steps=st.integers(1, 4),
    horizon=st.integers(1, 6),
    seed=st.integers(0, 1000),
)
def test_windows_match_a_per_row_loop_for_any_shapes(lengths, n_obs_steps, horizon, seed):
    table = synthetic_episodes(lengths, obs_dim=2, act_dim=1, seed=seed, first_episode_id=5)
    table = table.take(pa.array(np.random.default_rng(seed).permutation(table.num_rows)))
    obs_norm = AffineNormalizer("standard", (0.0, 0.0), (1.0, 1.0))
    got = rows_by_key(
        windows(
            table, n_obs_steps, horizon, obs_normalizer=obs_norm, action_normalizer=IDENTITY_ACT
        )
    )
    labels = label_values(table, 1)[0][:, 0]
    steps = {}
    for i, r in enumerate(table.to_pylist()):
        steps[(r["episode_id"], r["step"])] = (r["obs"], labels[i])
    for (episode, t), row in got.items():
        last = lengths[episode - 5] - 1
        want_obs = [
            v for s in range(t - n_obs_steps + 1, t + 1) for v in steps[(episode, max(s, 0))][0]
        ]
        want_act = [steps[(episode, min(s, last))][1] for s in range(t, t + horizon)]
        assert row["obs"] == pytest.approx(want_obs)
        assert row["action"] == pytest.approx(want_act)
    assert len(got) == sum(lengths)


def test_missing_or_duplicated_steps_are_rejected():
    table = synthetic_episodes([4])
    with pytest.raises(ContractError, match="episode 0 is not a complete run of steps"):
        windows(table.filter(pa.array([True, False, True, True])))
    with pytest.raises(ContractError, match="not a complete run"):
        windows(pa.concat_tables([table, table.slice(2, 1)]))


def test_episode_cut_short_in_a_block_is_rejected_with_expected_lengths():
    table = synthetic_episodes([4, 2])
    expected = (np.array([0, 1]), np.array([4, 2]))
    assert windows(table, expected_lengths=expected).num_rows == 6
    with pytest.raises(ContractError, match="episode 0: 3 step"):
        windows(table.slice(0, 3), expected_lengths=expected)


def test_empty_input_gives_an_empty_table_with_the_sample_schema():
    samples = windows(synthetic_episodes([]))
    assert samples.num_rows == 0
    assert samples.schema.names == ["episode_id", "step", "obs", "action"]


def test_chi_et_al_windows_pad_the_first_obs_before_and_the_last_action_after():
    # To=2, T=16 (Chi et al.'s defaults) on a 20-step episode: the chunk starting at step
    # 10 holds the episode's last 10 labels, then the last one repeated 6 times.
    table = synthetic_episodes([20], obs_dim=3, act_dim=1)
    obs_rows = [r["obs"] for r in table.to_pylist()]
    labels = [v[0] for v in table.column("expert_action").to_pylist()]
    got = rows_by_key(windows(table, n_obs_steps=2, horizon=16))
    assert len(got) == 20
    first = got[(0, 0)]
    assert first["obs"] == pytest.approx(obs_rows[0] + obs_rows[0])
    assert first["action"] == pytest.approx(labels[:16])
    tail = got[(0, 10)]
    assert tail["obs"] == pytest.approx(obs_rows[9] + obs_rows[10])
    assert tail["action"] == pytest.approx(labels[10:] + [labels[19]] * 6)
    assert got[(0, 19)]["action"] == pytest.approx([labels[19]] * 16)
