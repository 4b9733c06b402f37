"""Training on a LeRobotDataset written by LeRobot's own writer against diffpol's recording
of the same episodes, through the main pipeline with the same preset and seed.

    DIFFPOL_BENCH_SCALE=1 ./pants test --output=all benchmarks/lerobot_training_bench_test.py -- -s

1. Run A: ``python -m diffpol.pipeline.main --out A --seed 0`` (the default preset collects
   500 noisy-expert Pendulum-v1 episodes into ``A/data`` and trains on them), or an existing
   run named by ``DIFFPOL_LEROBOT_RUN_A=DIR`` (made by that command).
2. ``A/data``'s episodes written by ``ledataset`` (``LeRobotDataset.create``/``add_frame``/
   ``save_episode``/``finalize``) with the features a LeRobot user records:
   ``observation.state``, ``action``, ``next.reward``, ``next.done``. ``action`` holds
   diffpol's training label (the expert's clean action, ``expert_action``; the executed,
   noisy action is what the env saw, and LeRobot has one action column), so both runs train
   on the same (observation, action) pairs. Before any training the imported frames are
   checked identical to ``A/data``'s.
3. Run B: ``python -m diffpol.pipeline.main --data LEROBOT_DIR --out B --seed 0``; its
   preprocessed samples must equal A's (all but the episode ids, which LeRobot numbers
   0..n-1), then both held-out evaluations (the preset's seeds) are compared per seed: the
   paired mean difference must stay within 0.6, the spread of repeated runs of one
   configuration (benchmarks/RESULTS.md).

The small form (CI) runs step 2's conversion and check on 4 collected episodes and no
training; scale 1 trains twice with the default preset (minutes each; the test's timeout
is in benchmarks/BUILD).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from diffpol.contracts.arrow import fixed_list_values
from diffpol.contracts.dataset import data_files, read_manifest
from diffpol.rollout import collect_local, make_plan
from diffpol.rollout.ledataset_env import run_ledataset
from diffpol.rollout.lerobot import import_lerobot

SCALE = float(os.environ.get("DIFFPOL_BENCH_SCALE", "1.0"))
FULL = SCALE >= 1
SEED = 0
COLUMNS = ("obs", "label", "reward", "done", "step")


def diffpol_frames(dataset: Path) -> dict[str, np.ndarray]:
    """A diffpol dataset's rows as training sees them: the label is ``expert_action`` where
    the data has one (preprocess's rule), else the executed ``action``."""
    manifest = read_manifest(dataset)
    table = pq.read_table([str(p) for p in data_files(dataset)])
    obs_dim, act_dim = manifest.env.obs_dim, manifest.env.act_dim
    label = "expert_action" if table["expert_action"].null_count == 0 else "action"
    ids = table["episode_id"].to_numpy()
    return {
        "obs": fixed_list_values(table["obs"], obs_dim),
        "label": fixed_list_values(table[label], act_dim),
        "reward": table["reward"].to_numpy(),
        "done": (table["terminated"].to_numpy(zero_copy_only=False))
        | table["truncated"].to_numpy(zero_copy_only=False),
        "step": table["step"].to_numpy().astype(np.int64),
        "episode_lengths": np.diff(
            np.r_[np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]]), len(ids)]
        ),
    }


def write_with_lerobot(dataset: Path, out: Path, tmp: Path) -> None:
    """``dataset``'s episodes as a LeRobotDataset written by LeRobot's own writer."""
    manifest = read_manifest(dataset)
    frames = diffpol_frames(dataset)
    n, episodes = len(frames["step"]), len(frames["episode_lengths"])
    np.savez(
        tmp / "frames.npz",
        **{
            "observation.state": frames["obs"],
            "action": frames["label"],
            "next.reward": frames["reward"].reshape(n, 1),
            "next.done": frames["done"].reshape(n, 1),
            "episode_lengths": frames["episode_lengths"],
            "episode_tasks": np.zeros(episodes, np.int64),
        },
    )
    spec = {
        "repo_id": "local/pendulum-by-lerobot",
        "fps": 20,
        "robot_type": manifest.env.env_id,
        "tasks": [manifest.env.env_id],
        "features": {
            "observation.state": {
                "dtype": "float32",
                "shape": [manifest.env.obs_dim],
                "names": ["cos_theta", "sin_theta", "theta_dot"],
            },
            "action": {"dtype": "float32", "shape": [manifest.env.act_dim], "names": ["torque"]},
            "next.reward": {"dtype": "float32", "shape": [1], "names": None},
            "next.done": {"dtype": "bool", "shape": [1], "names": None},
        },
    }
    (tmp / "spec.json").write_text(json.dumps(spec))
    run_ledataset("write", tmp / "frames.npz", tmp / "spec.json", out, tmp=tmp)


def assert_same_frames(a: Path, b: Path) -> None:
    fa, fb = diffpol_frames(a), diffpol_frames(b)
    for key in (*COLUMNS, "episode_lengths"):
        np.testing.assert_array_equal(fa[key], fb[key], err_msg=key)


def _pipeline(out: Path, *extra: str) -> None:
    command = [sys.executable, "-m", "diffpol.pipeline.main", "--out", str(out)]
    result = subprocess.run([*command, "--seed", str(SEED), *extra], text=True)
    assert result.returncode == 0, f"{' '.join(command)} failed"


def _samples(run: Path, split: str) -> pa.Table:
    table = pq.read_table(sorted((run / "samples" / split).glob("*.parquet")))
    return table.drop_columns([c for c in table.column_names if "episode" in c])


def _headline(run: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """The pipeline's headline policy (diffusion, ONNX), its held-out seeds and returns."""
    label = json.loads((run / "summary.json").read_text())["eval"]["policy"]
    table = pq.read_table(run / "eval" / "headline" / "episodes.parquet")
    mine = table.filter(pc.equal(table["policy"], label)).sort_by("seed")
    return label, mine["seed"].to_numpy(), mine["return"].to_numpy().astype(np.float64)


def test_lerobot_written_episodes_import_as_the_same_training_pairs(tmp_path):
    """Bounded form of steps 1-2: a few collected noisy-expert episodes."""
    plan = make_plan("Pendulum-v1", "noisy-expert", 4, 3, {"expert": "expert-scripted"})
    collect_local(plan, tmp_path / "diffpol", num_envs=4)
    write_with_lerobot(tmp_path / "diffpol", tmp_path / "lerobot", tmp_path)
    manifest = import_lerobot(tmp_path / "lerobot", tmp_path / "imported")
    assert manifest.provenance["label_column"] == "action"
    assert_same_frames(tmp_path / "diffpol", tmp_path / "imported")
    # The label is the clean action, not the executed one (they differ under the noise).
    executed = pq.read_table([str(p) for p in data_files(tmp_path / "diffpol")])["action"]
    imported = pq.read_table([str(p) for p in data_files(tmp_path / "imported")])["action"]
    assert not executed.equals(imported)


@pytest.mark.skipif(not FULL, reason="trains two default-preset policies: DIFFPOL_BENCH_SCALE=1")
def test_training_on_lerobot_data_scores_like_diffpols_own(tmp_path):
    given = os.environ.get("DIFFPOL_LEROBOT_RUN_A")
    run_a = Path(given) if given else tmp_path / "A"
    if not given:
        _pipeline(run_a)
    write_with_lerobot(run_a / "data", tmp_path / "lerobot", tmp_path)
    import_lerobot(tmp_path / "lerobot", tmp_path / "imported")
    assert_same_frames(run_a / "data", tmp_path / "imported")

    run_b = tmp_path / "B"
    _pipeline(run_b, "--data", str(tmp_path / "lerobot"))
    for split in ("train", "val"):
        assert _samples(run_a, split).equals(_samples(run_b, split)), split

    label, seeds_a, returns_a = _headline(run_a)
    _, seeds_b, returns_b = _headline(run_b)
    np.testing.assert_array_equal(seeds_a, seeds_b)
    diff = returns_b - returns_a
    sem = lambda x: x.std(ddof=1) / np.sqrt(len(x))  # noqa: E731
    print(
        f"\n{label}, {len(seeds_a)} held-out seeds: diffpol's recording (A) "
        f"{returns_a.mean():.2f} ± {sem(returns_a):.2f}, LeRobot's writer (B) "
        f"{returns_b.mean():.2f} ± {sem(returns_b):.2f} (mean ± s.e.); paired B - A "
        f"{diff.mean():+.3f} ± {sem(diff):.3f}, {int((diff != 0).sum())} seed(s) differ, "
        f"largest |B - A| {np.abs(diff).max():.3f}"
    )
    # Repeated runs of one config spread by about 0.6 return points (RESULTS.md).
    assert abs(diff.mean()) <= 0.6
