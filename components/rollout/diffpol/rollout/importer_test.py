"""Importing external Parquet logs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from diffpol.contracts.dataset import data_files, read_manifest
from diffpol.rollout.importer import ImportSchemaError, import_parquet, main, parse_mapping


def _robot_log(path, episodes=3, steps=5, first_id=100, shuffle=True):
    """A log in a robot's own column names: state (list<double>), cmd (double), r."""
    rng = np.random.default_rng(first_id)
    ids = np.repeat(np.arange(first_id, first_id + episodes), steps)
    step = np.tile(np.arange(steps), episodes)
    order = rng.permutation(len(ids)) if shuffle else np.arange(len(ids))
    state = rng.uniform(-1, 1, (len(ids), 3))
    table = pa.table(
        {
            "ep": pa.array(ids[order]),
            "t": pa.array(step[order].astype(np.int16)),
            "state": pa.array(list(state[order]), pa.list_(pa.float64())),
            "cmd": pa.array(rng.uniform(-2, 2, len(ids))[order]),
            "r": pa.array(-np.ones(len(ids))),
        }
    )
    pq.write_table(table, path)
    return table


def test_mapped_log_becomes_a_dataset(tmp_path):
    _robot_log(tmp_path / "a.parquet")
    _robot_log(tmp_path / "b.parquet", episodes=2, first_id=200)
    mapping = parse_mapping("episode_id=ep,step=t,obs=state,action=cmd,reward=r")
    manifest = import_parquet(
        [tmp_path / "a.parquet", tmp_path / "b.parquet"], tmp_path / "ds", "Pendulum-v1", mapping
    )
    assert read_manifest(tmp_path / "ds") == manifest
    assert (manifest.episodes, manifest.transitions) == (5, 25)
    assert manifest.returns.mean == pytest.approx(-5.0)
    assert manifest.policy == "imported" and manifest.seed == -1
    table = pq.read_table([str(p) for p in data_files(tmp_path / "ds")])
    assert table["step"].to_pylist()[:5] == [0, 1, 2, 3, 4]  # sorted within episodes
    last = table["truncated"].to_numpy()
    assert last.sum() == 5 and last[4] and not table["terminated"].to_numpy().any()
    assert table["seed"].to_numpy().tolist() == [-1] * 25
    assert table["expert_action"].null_count == 25


def test_vectors_can_be_joined_from_scalar_columns(tmp_path):
    pq.write_table(
        pa.table(
            {
                "episode_id": [1, 1],
                "step": [0, 1],
                "pos": [0.1, 0.2],
                "vel": pa.array([0.0, 0.01], pa.float32()),
                "action": pa.array([[0.5], [0.4]], pa.list_(pa.float32(), 1)),
                "label": [0.6, 0.3],
            }
        ),
        tmp_path / "car.parquet",
    )
    manifest = import_parquet(
        [tmp_path / "car.parquet"],
        tmp_path / "ds",
        "MountainCarContinuous-v0",
        parse_mapping("obs=pos+vel,expert_action=label"),
    )
    table = pq.read_table(data_files(tmp_path / "ds")[0])
    assert table["obs"].to_pylist()[1] == pytest.approx([0.2, 0.01])
    assert table["expert_action"].to_pylist() == [pytest.approx([0.6]), pytest.approx([0.3])]
    assert manifest.provenance["label_column"] == "expert_action"


def test_every_problem_of_a_bad_file_is_listed_at_once(tmp_path):
    pq.write_table(
        pa.table(
            {
                "episode_id": ["a", "b"],  # wrong type
                "step": [0, 0],
                # "obs" missing
                "action": pa.array([[1.0, 2.0], [3.0, 4.0]]),  # 2 values, Pendulum has act_dim 1
                "reward": ["x", "y"],  # wrong type
                "terminated": [0, 1],  # not bool
            }
        ),
        tmp_path / "bad.parquet",
    )
    with pytest.raises(ImportSchemaError) as info:
        import_parquet([tmp_path / "bad.parquet"], tmp_path / "ds", "Pendulum-v1")
    problems = info.value.problems
    text = str(info.value)
    for expected in (
        "'episode_id' has type string, expected an integer",
        "column 'obs': source column(s) 'obs' not in file",
        "'action': 2 row(s) hold a number of values other than 1",
        "'reward' has type string, expected a number",
        "'terminated' has type int64, expected bool",
    ):
        assert any(expected in p for p in problems), expected
        assert expected in text
    assert len(problems) == 5
    assert not (tmp_path / "ds").exists()


def test_step_gaps_nulls_and_nan_are_reported(tmp_path):
    pq.write_table(
        pa.table(
            {
                "episode_id": [1, 1, 2],
                "step": [0, 2, 0],  # episode 1 skips step 1
                "obs": pa.array(
                    [[0.0, 1.0, 0.0], None, [1.0, 0.0, float("nan")]], pa.list_(pa.float32(), 3)
                ),
                "action": [0.0, 0.1, 0.2],
            }
        ),
        tmp_path / "gaps.parquet",
    )
    with pytest.raises(ImportSchemaError) as info:
        import_parquet([tmp_path / "gaps.parquet"], tmp_path / "ds", "Pendulum-v1")
    text = str(info.value)
    assert "'obs' has 1 null(s)" in text
    assert "steps must run 0..n-1" in text and "episode_id 1" in text


def test_mapping_text_is_checked():
    assert parse_mapping("obs=a+b+c").sources("obs") == ("a", "b", "c")
    assert parse_mapping(None).sources("action") == ("action",)
    with pytest.raises(ValueError, match=r"unknown column 'state'.*is not NAME=COLUMN"):
        parse_mapping("state=obs,action")
    with pytest.raises(ValueError, match="only vector columns"):
        parse_mapping("reward=a+b")


def test_cli_exit_codes(tmp_path, capsys):
    _robot_log(tmp_path / "a.parquet")
    assert (
        main([str(tmp_path / "a.parquet"), "--env", "Pendulum-v1", "--out", str(tmp_path / "bad")])
        == 1
    )
    assert "'episode_id': source column(s) 'episode_id' not in file" in capsys.readouterr().err
    args = [
        str(tmp_path / "a.parquet"),
        "--env",
        "Pendulum-v1",
        "--out",
        str(tmp_path / "ds"),
        "--map",
        "episode_id=ep,step=t,obs=state,action=cmd",
    ]
    assert main(args) == 0
    assert "imported 3 episodes, 15 transitions" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(args)  # --out exists
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "missing.parquet"), "--env", "Nope-v0", "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "unknown env id 'Nope-v0'" in err and "missing.parquet does not exist" in err
