"""LeRobotDataset v3.0 import and export on diffpol's side: round trips, bad input, CLIs.

LeRobot's own reader and writer check the same files in ``lerobot_compat_test.py``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from diffpol.contracts.dataset import data_files, read_manifest
from diffpol.rollout import collect_local, make_plan
from diffpol.rollout.export import main as export_main
from diffpol.rollout.importer import import_parquet, parse_mapping
from diffpol.rollout.importer import main as import_main
from diffpol.rollout.lerobot import (
    CODEBASE_VERSION,
    LeRobotFormatError,
    export_lerobot,
    import_lerobot,
)


def _rows(root):
    return pq.read_table([str(p) for p in data_files(root)])


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    """Six noisy-expert Pendulum episodes (labelled with the clean action), collected here."""
    out = tmp_path_factory.mktemp("collected") / "ds"
    plan = make_plan("Pendulum-v1", "noisy-expert", 6, 3, {"expert": "expert-scripted"})
    collect_local(plan, out, num_envs=4)
    return out


def test_diffpol_to_lerobot_to_diffpol_is_exact(collected, tmp_path):
    info = export_lerobot(collected, tmp_path / "lr")
    assert info["codebase_version"] == CODEBASE_VERSION == "v3.0"
    assert (info["fps"], info["total_episodes"], info["total_frames"]) == (20, 6, 1200)
    assert info["splits"] == {"train": "0:6"}
    assert info["features"]["observation.state"]["names"] == ["cos_theta", "sin_theta", "theta_dot"]
    manifest = import_lerobot(tmp_path / "lr", tmp_path / "back")
    original = read_manifest(collected)
    assert _rows(tmp_path / "back").equals(_rows(collected))
    assert (manifest.env.env_id, manifest.policy, manifest.seed) == (
        "Pendulum-v1",
        "noisy-expert",
        3,
    )
    assert manifest.returns == original.returns
    assert manifest.provenance["label_column"] == "expert_action"
    assert manifest.provenance["lerobot"]["fps"] == 20


def test_export_writes_lerobots_layout_stats_and_episode_ranges(collected, tmp_path):
    export_lerobot(collected, tmp_path / "lr", task="swing up")
    root = tmp_path / "lr"
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert files == [
        "data/chunk-000/file-000.parquet",
        "meta/episodes/chunk-000/file-000.parquet",
        "meta/info.json",
        "meta/stats.json",
        "meta/tasks.parquet",
    ]
    frames = pq.read_table(root / "data/chunk-000/file-000.parquet")
    obs = np.stack(frames["observation.state"].to_numpy(zero_copy_only=False))
    stats = json.loads((root / "meta/stats.json").read_text())
    assert set(stats["action"]) == {
        "min",
        "max",
        "mean",
        "std",
        "count",
        "q01",
        "q10",
        "q50",
        "q90",
        "q99",
    }
    np.testing.assert_allclose(stats["observation.state"]["mean"], obs.astype(np.float64).mean(0))
    np.testing.assert_allclose(stats["observation.state"]["std"], obs.astype(np.float64).std(0))
    np.testing.assert_allclose(
        stats["observation.state"]["q90"], np.quantile(obs.astype(np.float64), 0.9, axis=0)
    )
    assert stats["observation.state"]["count"] == [1200]
    assert stats["next.done"]["max"] == [True]
    episodes = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet")
    assert episodes["dataset_from_index"].to_pylist() == [0, 200, 400, 600, 800, 1000]
    assert episodes["dataset_to_index"].to_pylist() == [200, 400, 600, 800, 1000, 1200]
    assert episodes["tasks"].to_pylist() == [["swing up"]] * 6
    first = frames.slice(0, 200)
    np.testing.assert_allclose(
        episodes["stats/action/mean"].to_pylist()[0],
        [np.mean(first["action"].to_numpy().astype(np.float64))],
    )
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks.to_pylist() == [{"task_index": 0, "__index_level_0__": "swing up"}]
    assert frames["timestamp"].to_numpy()[:3].tolist() == pytest.approx([0.0, 0.05, 0.1])


def _write_lerobot(root, *, episodes=3, steps=4, tasks=("reach",), env_state=False, info_edit=None):
    """A small LeRobotDataset v3.0 written by hand in LeRobot's layout (see the compat test
    for one written by LeRobot itself)."""
    n = episodes * steps
    rng = np.random.default_rng(0)
    state_dim = 2 if env_state else 3
    columns = {
        "observation.state": pa.FixedSizeListArray.from_arrays(
            pa.array(rng.normal(size=n * state_dim).astype(np.float32)), state_dim
        ),
        "action": pa.array(rng.normal(size=n).astype(np.float32)),
        "next.reward": pa.array(rng.normal(size=n).astype(np.float32)),
        "next.done": pa.array(np.tile(np.arange(steps) == steps - 1, episodes)),
        "next.success": pa.array(np.arange(n) == n - 1),
        "timestamp": pa.array((np.tile(np.arange(steps), episodes) / 10).astype(np.float32)),
        "frame_index": pa.array(np.tile(np.arange(steps), episodes)),
        "episode_index": pa.array(np.repeat(np.arange(episodes), steps)),
        "index": pa.array(np.arange(n)),
        "task_index": pa.array(np.repeat(np.arange(episodes) % len(tasks), steps)),
    }
    features = {
        "observation.state": {"dtype": "float32", "shape": [state_dim], "names": None},
        "action": {"dtype": "float32", "shape": [1], "names": ["u"]},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "next.done": {"dtype": "bool", "shape": [1], "names": None},
        "next.success": {"dtype": "bool", "shape": [1], "names": None},
        "observation.images.top": {"dtype": "video", "shape": [8, 8, 3], "names": None},
    }
    if env_state:
        columns["observation.environment_state"] = pa.FixedSizeListArray.from_arrays(
            pa.array(rng.normal(size=n).astype(np.float32)), 1
        )
        features["observation.environment_state"] = {
            "dtype": "float32",
            "shape": [1],
            "names": None,
        }
    for name in ("timestamp", "frame_index", "episode_index", "index", "task_index"):
        features[name] = {
            "dtype": "float32" if name == "timestamp" else "int64",
            "shape": [1],
            "names": None,
        }
    info = {
        "codebase_version": "v3.0",
        "robot_type": "Pendulum-v1",
        "total_episodes": episodes,
        "total_frames": n,
        "total_tasks": len(tasks),
        "fps": 10,
        "splits": {"train": f"0:{episodes}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "features": features,
    }
    if info_edit:
        info_edit(info)
    (root / "data/chunk-000").mkdir(parents=True)
    (root / "meta/episodes/chunk-000").mkdir(parents=True)
    pq.write_table(pa.table(columns), root / "data/chunk-000/file-000.parquet")
    (root / "meta/info.json").write_text(json.dumps(info))
    pq.write_table(
        pa.table({"task_index": list(range(len(tasks))), "__index_level_0__": list(tasks)}),
        root / "meta/tasks.parquet",
    )
    pq.write_table(
        pa.table({"episode_index": list(range(episodes)), "length": [steps] * episodes}),
        root / "meta/episodes/chunk-000/file-000.parquet",
    )
    return columns


def test_lerobot_import_keeps_values_episodes_tasks_and_says_what_was_left_out(tmp_path, capsys):
    columns = _write_lerobot(tmp_path / "lr", tasks=("reach", "lift"))
    code = import_main(["--format", "lerobot", str(tmp_path / "lr"), "--out", str(tmp_path / "ds")])
    assert code == 0
    assert (
        "left out (diffpol learns from state, not images): observation.images.top"
        in capsys.readouterr().out
    )
    manifest = read_manifest(tmp_path / "ds")
    rows = _rows(tmp_path / "ds")
    assert manifest.env.env_id == "Pendulum-v1"  # from robot_type
    assert (manifest.episodes, manifest.transitions) == (3, 12)
    np.testing.assert_array_equal(
        np.stack(rows["obs"].to_numpy(zero_copy_only=False)),
        np.stack(columns["observation.state"].to_numpy(zero_copy_only=False)),
    )
    np.testing.assert_array_equal(rows["reward"].to_numpy(), columns["next.reward"].to_numpy())
    assert rows["episode_id"].to_pylist() == np.repeat([0, 1, 2], 4).tolist()
    assert rows["step"].to_pylist() == [0, 1, 2, 3] * 3
    # Short episodes ending with next.done ended in the env, not at its 200-step limit.
    assert rows["terminated"].to_pylist() == [False, False, False, True] * 3
    assert not any(rows["truncated"].to_pylist())
    lerobot = manifest.provenance["lerobot"]
    assert lerobot["tasks"] == ["reach", "lift"] and lerobot["episode_tasks"] == [0, 1, 0]
    assert lerobot["fps"] == 10 and lerobot["success_episodes"] == 1
    assert lerobot["left_out"] == ["observation.images.top"]
    # ...and back out with the same tasks per episode.
    export_lerobot(tmp_path / "ds", tmp_path / "again")
    episodes = pq.read_table(tmp_path / "again/meta/episodes/chunk-000/file-000.parquet")
    assert episodes["tasks"].to_pylist() == [["reach"], ["lift"], ["reach"]]


def test_frames_out_of_order_import_as_episode_major_rows(tmp_path):
    _write_lerobot(tmp_path / "lr", episodes=3, steps=4)
    import_lerobot(tmp_path / "lr", tmp_path / "in-order")
    path = tmp_path / "lr/data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    shuffled = np.random.default_rng(1).permutation(table.num_rows)
    pq.write_table(table.take(shuffled), path)
    import_lerobot(tmp_path / "lr", tmp_path / "shuffled")
    assert _rows(tmp_path / "shuffled").equals(_rows(tmp_path / "in-order"))


def test_environment_state_completes_the_observation(tmp_path):
    columns = _write_lerobot(tmp_path / "lr", env_state=True)
    import_lerobot(tmp_path / "lr", tmp_path / "ds", "Pendulum-v1")
    obs = np.stack(_rows(tmp_path / "ds")["obs"].to_numpy(zero_copy_only=False))
    state = np.stack(columns["observation.state"].to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(obs[:, :2], state)
    np.testing.assert_array_equal(
        obs[:, 2], columns["observation.environment_state"].flatten().to_numpy()
    )
    export_lerobot(tmp_path / "ds", tmp_path / "out")
    features = json.loads((tmp_path / "out/meta/info.json").read_text())["features"]
    assert features["observation.state"]["shape"] == [2]
    assert features["observation.environment_state"]["shape"] == [1]


def _drop_state_from_data(root):
    path = root / "data/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["observation.state"]), path)


def _task_indices(*values):
    """Rows 3, 4, ... point at task indices that meta/tasks.parquet does not hold."""

    def edit(root):
        path = root / "data/chunk-000/file-000.parquet"
        table = pq.read_table(path)
        task = table["task_index"].to_numpy().copy()
        task[3 : 3 + len(values)] = values
        column = table.schema.get_field_index("task_index")
        pq.write_table(table.set_column(column, "task_index", pa.array(task)), path)

    return edit


def _version(version):
    return lambda info: info.update(codebase_version=version)


def _wider_state(info):
    info["features"]["observation.state"]["shape"] = [4]


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda root: (root / "meta/info.json").unlink(), "meta/info.json is missing"),
        (_drop_state_from_data, "lacks feature(s) named in meta/info.json: observation.state"),
        ("wider", "does not make Pendulum-v1's observation of 3 values (shape mismatch)"),
        (_task_indices(7), "task_index value(s) [7] are not in meta/tasks.parquet"),
        (_task_indices(-1, 2**40), f"task_index value(s) [-1, {2**40}] are not in meta/tasks"),
        ("v9.1", "unknown codebase_version 'v9.1'"),
        ("v2.1", "codebase_version is 'v2.1' (the v2.x layout); diffpol reads v3.0 only: convert"),
    ],
)
def test_bad_lerobot_input_is_a_clear_error_and_writes_nothing(tmp_path, break_it, message):
    edit = {"wider": _wider_state, "v9.1": _version("v9.1"), "v2.1": _version("v2.1")}
    _write_lerobot(
        tmp_path / "lr", info_edit=edit.get(break_it) if isinstance(break_it, str) else None
    )
    if callable(break_it):
        break_it(tmp_path / "lr")
    with pytest.raises(LeRobotFormatError) as info:
        import_lerobot(tmp_path / "lr", tmp_path / "ds", "Pendulum-v1")
    assert message in str(info.value)
    assert not (tmp_path / "ds").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["lr"]  # no staging directory left


def test_a_v2_layout_is_named_with_how_to_convert_it(tmp_path):
    (tmp_path / "old/data/chunk-000").mkdir(parents=True)
    (tmp_path / "old/meta").mkdir()
    (tmp_path / "old/meta/episodes.jsonl").write_text('{"episode_index": 0}\n')
    pq.write_table(pa.table({"x": [1]}), tmp_path / "old/data/chunk-000/episode_000000.parquet")
    with pytest.raises(LeRobotFormatError, match=r"v2\.x layout.*convert_dataset_v21_to_v30"):
        import_lerobot(tmp_path / "old", tmp_path / "ds", "Pendulum-v1")


def test_lerobot_episode_metadata_that_disagrees_with_the_data_is_refused(tmp_path):
    _write_lerobot(tmp_path / "lr")
    pq.write_table(
        pa.table({"episode_index": [0, 1, 2], "length": [4, 5, 4]}),
        tmp_path / "lr/meta/episodes/chunk-000/file-000.parquet",
    )
    with pytest.raises(
        LeRobotFormatError, match="episode_index 1: length 5 in meta/episodes, 4 frames"
    ):
        import_lerobot(tmp_path / "lr", tmp_path / "ds")


def test_export_refuses_a_non_empty_directory_without_overwrite(collected, tmp_path, capsys):
    out = tmp_path / "lr"
    out.mkdir()
    export_lerobot(collected, out)  # an empty directory is fine
    before = (out / "meta/info.json").read_bytes()
    with pytest.raises(FileExistsError, match="not empty; pass --overwrite"):
        export_lerobot(collected, out)
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--format", "lerobot", str(collected), "--out", str(out)])
    assert exit_info.value.code == 2 and "pass --overwrite" in capsys.readouterr().err
    assert (out / "meta/info.json").read_bytes() == before
    assert (
        export_main(
            ["--format", "lerobot", str(collected), "--out", str(out), "--overwrite", "--fps", "50"]
        )
        == 0
    )
    assert json.loads((out / "meta/info.json").read_text())["fps"] == 50


def test_export_of_a_damaged_dataset_fails_and_leaves_nothing(collected, tmp_path):
    damaged = tmp_path / "damaged"
    shutil.copytree(collected, damaged)
    with open(data_files(damaged)[0], "ab") as f:
        f.write(b"x")
    with pytest.raises(Exception, match="do not match the manifest"):
        export_lerobot(damaged, tmp_path / "lr")
    assert not (tmp_path / "lr").exists()


def test_terminated_and_truncated_episodes_survive_a_round_trip(tmp_path):
    n = 7
    pq.write_table(
        pa.table(
            {
                "episode_id": [5, 5, 5, 9, 9, 9, 9],
                "step": [0, 1, 2, 0, 1, 2, 3],
                "obs": pa.array(
                    list(np.arange(n * 3, dtype=np.float32).reshape(n, 3)), pa.list_(pa.float32())
                ),
                "action": pa.array(np.linspace(-1, 1, n).astype(np.float32)),
                "terminated": [False, False, True, False, False, False, False],
            }
        ),
        tmp_path / "log.parquet",
    )
    import_parquet([tmp_path / "log.parquet"], tmp_path / "ds", "Pendulum-v1", parse_mapping(None))
    export_lerobot(tmp_path / "ds", tmp_path / "lr")
    import_lerobot(tmp_path / "lr", tmp_path / "back")
    assert _rows(tmp_path / "back").equals(_rows(tmp_path / "ds"))
    assert _rows(tmp_path / "back")["truncated"].to_pylist() == [False] * 6 + [True]
