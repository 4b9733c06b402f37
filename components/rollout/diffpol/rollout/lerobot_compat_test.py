"""diffpol's LeRobotDataset files against LeRobot's own code (``ledataset``), both ways.

LeRobot's library needs torch and torchvision builds that cannot share the default resolve,
so it runs in an environment of its own, built once from the pinned
``components/rollout/lerobot_compat/requirements.txt`` and cached under
``$DIFFPOL_CACHE_DIR`` (default ``~/.cache/diffpol``) by that file's hash. The build is
atomic (staging directory, then a rename; a killed build is never reused) and serialised by
a file lock. Where it cannot be built (no package index), the tests fail saying so.

LeRobot's side (``lerobot_compat/ledataset_side.py``) runs twice per module: once to write a
dataset with ``LeRobotDataset.create``/``add_frame``/``save_episode``/``finalize``, once to
load diffpol's exports with ``LeRobotDataset(repo_id, root=DIR)`` and iterate them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from diffpol.contracts.arrow import fixed_list_values
from diffpol.contracts.dataset import data_files, read_manifest
from diffpol.rollout import collect_local, make_plan
from diffpol.rollout.lerobot import export_lerobot, import_lerobot

COMPAT = Path(__file__).resolve().parents[2] / "lerobot_compat"
REQUIREMENTS = COMPAT / "requirements.txt"
SCRIPT = COMPAT / "ledataset_side.py"
READY = "diffpol-ready"


def _cache_dir() -> Path:
    return Path(os.environ.get("DIFFPOL_CACHE_DIR") or Path.home() / ".cache" / "diffpol")


def _base_python() -> str:
    # A venv's (e.g. the test runner's) python makes venvs from its base interpreter.
    return getattr(sys, "_base_executable", None) or sys.executable


def _ca_bundle() -> list[str]:
    """``--cert`` as the ./pants launcher chooses it: pip's own bundle does not hold the CA
    of a TLS-inspecting proxy, the system's does."""
    for bundle in (os.environ.get("SSL_CERT_FILE"), ssl.get_default_verify_paths().cafile):
        if bundle and Path(bundle).is_file():
            return ["--cert", bundle]
    return []


def ledataset_python() -> Path:
    """The cached environment's python, building the environment on first use."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    key = hashlib.sha256(REQUIREMENTS.read_bytes() + version.encode()).hexdigest()[:16]
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    venv = cache / f"ledataset-venv-{key}"
    if (venv / READY).is_file():
        return venv / "bin" / "python"
    with open(cache / f"ledataset-venv-{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / READY).is_file():
            return venv / "bin" / "python"
        staging = Path(tempfile.mkdtemp(dir=cache, prefix=f".{venv.name}.", suffix=".partial"))
        try:
            start = time.perf_counter()
            for command in (
                [_base_python(), "-m", "venv", "--clear", str(staging)],
                [str(staging / "bin" / "python"), "-m", "pip", "install", "--no-input",
                 "--disable-pip-version-check", *_ca_bundle(), "-r", str(REQUIREMENTS)],
            ):  # fmt: skip
                # The pins decide the versions; the machine's pip configuration decides where
                # they come from (a wheel mirror for the large torch wheels, or the index).
                env = dict(os.environ)
                result = subprocess.run(command, capture_output=True, text=True, env=env)
                if result.returncode:
                    pytest.fail(
                        f"could not build LeRobot's environment from {REQUIREMENTS.name} "
                        f"(needs the package index): {' '.join(command[-4:])} failed:\n"
                        + (result.stdout + result.stderr)[-3000:]
                    )
            (staging / READY).write_text(f"built in {time.perf_counter() - start:.0f} s\n")
            if venv.exists():  # an older, unmarked copy
                shutil.rmtree(venv)
            os.replace(staging, venv)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return venv / "bin" / "python"


def _ledataset(*args: str | Path, tmp: Path) -> None:
    env = {**os.environ, "HF_HOME": str(tmp / "hf"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [str(ledataset_python()), str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr


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
    _ledataset("write", tmp / "frames.npz", tmp / "spec.json", tmp / "by-lerobot", tmp=tmp)

    import_lerobot(tmp / "by-lerobot", tmp / "imported")
    export_lerobot(tmp / "imported", tmp / "imported-exported")
    plan = make_plan("Pendulum-v1", "noisy-expert", 4, 11, {"expert": "expert-scripted"})
    collect_local(plan, tmp / "collected", num_envs=4)
    export_lerobot(tmp / "collected", tmp / "exported")
    _ledataset("read", tmp / "read.npz", tmp / "imported-exported", tmp / "exported", tmp=tmp)
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
