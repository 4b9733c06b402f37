"""diffpol's LeRobotDataset files against LeRobot's own code (``ledataset``), both ways.

LeRobot's library runs in an environment of its own (``diffpol.rollout.ledataset_env``).

LeRobot's side (``lerobot_compat/ledataset_side.py``) runs twice per module: once to write a
dataset with ``LeRobotDataset.create``/``add_frame``/``save_episode``/``finalize``, once to
load diffpol's exports with ``LeRobotDataset(repo_id, root=DIR)`` and iterate them.
"""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from diffpol.contracts.arrow import fixed_list_values
from diffpol.contracts.dataset import data_files, read_manifest
from diffpol.rollout import collect_local, make_plan
from diffpol.rollout.ledataset_env import READY, ledataset_python, run_ledataset
from diffpol.rollout.lerobot import export_lerobot, import_lerobot

# Three episodes of unequal lengths, two tasks, float values with full float32 precision.
LENGTHS = [5, 9, 3]
TASKS = ["swing up", "hold still"]
EPISODE_TASKS = [0, 1, 0]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Every file both sides write, with two runs of LeRobot's side."""
    tmp = tmp_path_factory.mktemp("lerobot")
    n = sum(LENGTHS)
    rng = np.random.default_rng(7)
    frames = {
        "observation.state": rng.normal(size=(n, 3)).astype(np.float32),
        "action": rng.uniform(-2, 2, size=(n, 1)).astype(np.float32),
        "next.reward": rng.normal(size=(n, 1)).astype(np.float32),
        "next.done": np.concatenate([np.arange(k) == k - 1 for k in LENGTHS]).reshape(n, 1),
        "episode_lengths": np.array(LENGTHS),
        "episode_tasks": np.array(EPISODE_TASKS),
    }
    np.savez(tmp / "frames.npz", **frames)
    spec = {
        "repo_id": "local/written-by-lerobot",
        "fps": 20,
        "robot_type": "Pendulum-v1",
        "tasks": TASKS,
        "features": {
            "observation.state": {"dtype": "float32", "shape": [3], "names": ["c", "s", "w"]},
            "action": {"dtype": "float32", "shape": [1], "names": ["torque"]},
            "next.reward": {"dtype": "float32", "shape": [1], "names": None},
            "next.done": {"dtype": "bool", "shape": [1], "names": None},
        },
    }
    (tmp / "spec.json").write_text(json.dumps(spec))
    run_ledataset("write", tmp / "frames.npz", tmp / "spec.json", tmp / "by-lerobot", tmp=tmp)

    import_lerobot(tmp / "by-lerobot", tmp / "imported")
    export_lerobot(tmp / "imported", tmp / "imported-exported")
    plan = make_plan("Pendulum-v1", "noisy-expert", 4, 11, {"expert": "expert-scripted"})
    collect_local(plan, tmp / "collected", num_envs=4)
    export_lerobot(tmp / "collected", tmp / "exported")
    run_ledataset("read", tmp / "read.npz", tmp / "imported-exported", tmp / "exported", tmp=tmp)
    return tmp, frames, dict(np.load(tmp / "read.npz"))


def _rows(root):
    return pq.read_table([str(p) for p in data_files(root)])


def _stack(column, width):
    return fixed_list_values(column, width)


def test_a_dataset_lerobot_wrote_imports_with_identical_values(work):
    tmp, frames, _ = work
    rows = _rows(tmp / "imported")
    manifest = read_manifest(tmp / "imported")
    assert (manifest.env.env_id, manifest.episodes, manifest.transitions) == ("Pendulum-v1", 3, 17)
    np.testing.assert_array_equal(_stack(rows["obs"], 3), frames["observation.state"])
    np.testing.assert_array_equal(_stack(rows["action"], 1), frames["action"])
    np.testing.assert_array_equal(rows["reward"].to_numpy(), frames["next.reward"][:, 0])
    assert rows["episode_id"].to_pylist() == np.repeat([0, 1, 2], LENGTHS).tolist()
    assert rows["step"].to_pylist() == [s for k in LENGTHS for s in range(k)]
    ends = (rows["terminated"].to_numpy() | rows["truncated"].to_numpy()).tolist()
    assert ends == frames["next.done"][:, 0].tolist()
    lerobot = manifest.provenance["lerobot"]
    assert lerobot["codebase_version"] == "v3.0" and lerobot["fps"] == 20
    assert lerobot["tasks"] == TASKS and lerobot["episode_tasks"] == EPISODE_TASKS
    assert lerobot["feature_names"]["observation.state"] == ["c", "s", "w"]


def test_lerobot_reads_back_what_diffpol_imported_from_it(work):
    _, frames, read = work
    assert str(read["codebase_version"]) == "v3.0"
    assert (int(read["0/num_episodes"]), int(read["0/num_frames"])) == (3, 17)
    for name in ("observation.state", "action", "next.reward", "next.done"):
        np.testing.assert_array_equal(read[f"0/{name}"].reshape(frames[name].shape), frames[name])
    assert read["0/task"].tolist() == [
        TASKS[t] for t, k in zip(EPISODE_TASKS, LENGTHS, strict=True) for _ in range(k)
    ]
    assert read["0/episodes/tasks"].tolist() == [TASKS[t] for t in EPISODE_TASKS]
    assert read["0/episodes/length"].tolist() == LENGTHS


def test_lerobot_loads_and_iterates_a_diffpol_rollout_with_identical_values(work):
    tmp, _, read = work
    rows = _rows(tmp / "collected")
    n = rows.num_rows
    assert (int(read["1/num_episodes"]), int(read["1/num_frames"]), int(read["1/fps"])) == (
        4,
        n,
        20,
    )
    np.testing.assert_array_equal(read["1/observation.state"], _stack(rows["obs"], 3))
    np.testing.assert_array_equal(read["1/action"].reshape(n, 1), _stack(rows["action"], 1))
    np.testing.assert_array_equal(
        read["1/diffpol.expert_action"].reshape(n, 1), _stack(rows["expert_action"], 1)
    )
    np.testing.assert_array_equal(read["1/next.reward"], rows["reward"].to_numpy())
    np.testing.assert_array_equal(read["1/diffpol.episode_id"], rows["episode_id"].to_numpy())
    np.testing.assert_array_equal(read["1/frame_index"], rows["step"].to_numpy())
    np.testing.assert_array_equal(read["1/episode_index"], np.repeat(np.arange(4), 200))
    np.testing.assert_array_equal(read["1/index"], np.arange(n))
    np.testing.assert_allclose(read["1/timestamp"], np.tile(np.arange(200), 4) / 20, atol=1e-6)
    assert read["1/next.done"].tolist() == rows["truncated"].to_pylist()
    assert set(read["1/task"].tolist()) == {"Pendulum-v1"}
    assert read["1/episodes/dataset_from_index"].tolist() == [0, 200, 400, 600]
    assert read["1/episodes/dataset_to_index"].tolist() == [200, 400, 600, 800]
    obs = _stack(rows["obs"], 3).astype(np.float64)
    for stat, expected in (("min", obs.min(0)), ("max", obs.max(0)), ("mean", obs.mean(0))):
        np.testing.assert_allclose(read[f"1/stats/observation.state/{stat}"], expected, rtol=1e-6)
    assert read["1/stats/observation.state/count"].tolist() == [n]
    np.testing.assert_allclose(read["1/stats/observation.state/q50"], np.median(obs, 0))


def test_lerobots_stats_of_its_own_dataset_match_ours_where_exact(work):
    """LeRobot's quantiles are histogram estimates; min, max, mean, std and count are exact."""
    tmp, _, _ = work
    theirs = json.loads((tmp / "by-lerobot/meta/stats.json").read_text())
    ours = json.loads((tmp / "imported-exported/meta/stats.json").read_text())
    for feature in ("observation.state", "action", "next.reward"):
        for stat in ("min", "max", "mean", "std", "count"):
            np.testing.assert_allclose(ours[feature][stat], theirs[feature][stat], rtol=1e-5)
        for stat in ("q01", "q10", "q50", "q90", "q99"):
            assert stat in ours[feature]


def test_the_cached_environment_is_reused(work):
    python = ledataset_python()
    ready = python.parent.parent / READY
    built = ready.stat()
    # Asked again: the same environment, its marker untouched (not rebuilt).
    assert ledataset_python() == python
    again = ready.stat()
    assert (again.st_ino, again.st_mtime_ns) == (built.st_ino, built.st_mtime_ns)
    with contextlib.suppress(FileNotFoundError):
        assert not list(python.parents[2].glob(f".{python.parents[1].name}.*.partial"))
