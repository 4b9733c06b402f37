"""Dataset writing: manifest counts match the data; a failed write publishes nothing."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from diffpol.contracts.dataset import data_files, digest_files, read_manifest
from diffpol.contracts.errors import ContractError
from diffpol.envs import get_env_spec
from diffpol.rollout import sink
from diffpol.rollout.collect import collect_local
from diffpol.rollout.plan import make_plan
from diffpol.rollout.policies import make_policy
from diffpol.rollout.runner import ShardRunner
from diffpol.rollout.sink import open_dataset

PENDULUM = get_env_spec("Pendulum-v1")


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFPOL_CACHE_DIR", str(tmp_path / "cache"))


def _batch(first_episode=0, episodes=2, steps=20):
    runner = ShardRunner("Pendulum-v1", make_policy("random", "Pendulum-v1"), episodes)
    return runner.run_episodes(5, np.arange(first_episode, first_episode + episodes), steps)


def test_manifest_counts_and_returns_come_from_the_data(tmp_path):
    plan = make_plan("Pendulum-v1", "noisy-expert", 7, 3, {"grid": 60}, max_episode_steps=25)
    result = collect_local(plan, tmp_path / "ds", num_envs=3)
    manifest = read_manifest(tmp_path / "ds")  # also verifies the fingerprint
    assert manifest == result.manifest
    table = pq.read_table([str(p) for p in data_files(tmp_path / "ds")])
    assert len(data_files(tmp_path / "ds")) == 3  # shards of 3, 3, 1 episodes
    assert manifest.transitions == table.num_rows == 7 * 25
    assert manifest.episodes == len(np.unique(table["episode_id"].to_numpy())) == 7
    _, inverse = np.unique(table["episode_id"].to_numpy(), return_inverse=True)
    returns = np.bincount(inverse, weights=table["reward"].to_numpy().astype(np.float64))
    assert manifest.returns.mean == pytest.approx(returns.mean())
    assert manifest.returns.min == pytest.approx(returns.min())
    assert manifest.policy == "noisy-expert" and manifest.policy_params["noise_max"] == 1.0
    assert manifest.provenance["backend"] == "numpy"
    assert manifest.provenance["label_column"] == "expert_action"
    assert manifest.provenance["replay"]["matches_gymnasium"] is True
    assert (manifest.env.obs_dim, manifest.env.act_dim, manifest.seed) == (3, 1, 3)


def test_a_failure_inside_the_write_leaves_no_dataset(tmp_path):
    out = tmp_path / "ds"
    with pytest.raises(RuntimeError, match="boom"), open_dataset(out, PENDULUM) as writer:
        writer.write_part(0, _batch())
        raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no staging directory left behind either


def test_a_block_without_a_manifest_publishes_nothing(tmp_path):
    out = tmp_path / "ds"
    with (
        pytest.raises(ContractError, match="without write_manifest"),
        open_dataset(out, PENDULUM) as w,
    ):
        w.write_part(0, _batch())
    assert not out.exists()


def test_a_failed_overwrite_keeps_the_old_dataset(tmp_path):
    out = tmp_path / "ds"
    plan = make_plan("Pendulum-v1", "random", 2, 0, max_episode_steps=10)
    first = collect_local(plan, out, num_envs=2).manifest
    with pytest.raises(FileExistsError, match="overwrite"):
        collect_local(plan, out, num_envs=2)
    with pytest.raises(RuntimeError), open_dataset(out, PENDULUM, overwrite=True) as writer:
        writer.write_part(0, _batch())
        raise RuntimeError("crash mid-write")
    assert read_manifest(out) == first
    second = collect_local(
        make_plan("Pendulum-v1", "zero", 3, 0, max_episode_steps=10), out, overwrite=True
    )
    assert read_manifest(out).episodes == 3 and second.manifest.policy == "zero"


def test_duplicate_episodes_and_duplicate_parts_are_refused(tmp_path):
    with (
        pytest.raises(ContractError, match="more than one part"),
        open_dataset(tmp_path / "a", PENDULUM) as w,
    ):
        w.write_part(0, _batch(0))
        w.write_part(1, _batch(1))  # episode 1 again
        w.write_manifest(policy="random", policy_params={}, seed=5, provenance={})
    with (
        pytest.raises(ValueError, match="already written"),
        open_dataset(tmp_path / "b", PENDULUM) as w,
    ):
        w.write_part(0, _batch(0))
        w.write_part(0, _batch(2))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_tampered_data_no_longer_matches_the_manifest(tmp_path):
    plan = make_plan("Pendulum-v1", "random", 2, 0, max_episode_steps=10)
    collect_local(plan, tmp_path / "ds", num_envs=2)
    raw = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert raw["transitions"] == 20
    (part,) = data_files(tmp_path / "ds")
    part.write_bytes(part.read_bytes()[:-10])
    with pytest.raises(ContractError, match="fingerprint"):
        read_manifest(tmp_path / "ds")


def test_mountain_car_expert_dataset_end_to_end(tmp_path):
    plan = make_plan("MountainCarContinuous-v0", "expert", 6, 0)
    result = collect_local(plan, tmp_path / "ds", num_envs=3)
    manifest = read_manifest(tmp_path / "ds")
    table = pq.read_table([str(p) for p in data_files(tmp_path / "ds")])
    assert result.manifest == manifest and manifest.policy == "expert-scripted"
    assert manifest.provenance["backend"] == "envpool"
    assert manifest.episodes == 6 and manifest.transitions == table.num_rows < 6 * 999
    # Every episode reached the flag, and that is each episode's only end.
    assert table["terminated"].to_numpy().sum() == 6 and not table["truncated"].to_numpy().any()
    assert manifest.returns.min > 90


@pytest.mark.parametrize(
    "order, pending_bytes",
    [
        ([0, 1, 2, 3], None),  # in order: each part hashed as it is written
        ([2, 0, 3, 1], None),  # ahead of an earlier part: held, then hashed in name order
        ([3, 2, 1, 0], 1),  # more held than allowed: the manifest reads the files back
        ([1, 2, 3, 4], None),  # no part 0: read back
    ],
)
def test_the_manifest_digests_are_those_of_the_written_files(
    tmp_path, monkeypatch, order, pending_bytes
):
    """Digests come from the bytes as they are written; whatever the part order, they
    must be the files' own (the manifest check reads the files)."""
    if pending_bytes is not None:
        monkeypatch.setattr(sink, "PENDING_BYTES", pending_bytes)
    with open_dataset(tmp_path / "ds", PENDULUM) as writer:
        for index in order:
            writer.write_part(index, _batch(first_episode=2 * index))
        manifest = writer.write_manifest(policy="random", policy_params={}, seed=5, provenance={})
    fingerprint, digests = digest_files(data_files(tmp_path / "ds"))
    assert (manifest.fingerprint, manifest.file_digests) == (fingerprint, digests)
    assert read_manifest(tmp_path / "ds") == manifest


def test_parts_written_from_threads_get_the_files_digests(tmp_path):
    with open_dataset(tmp_path / "ds", PENDULUM) as writer:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: writer.write_part(i, _batch(first_episode=2 * i)), range(8)))
        manifest = writer.write_manifest(policy="random", policy_params={}, seed=5, provenance={})
    assert manifest.fingerprint == digest_files(data_files(tmp_path / "ds"))[0]
    assert manifest.episodes == 16


def test_returns_of_episodes_in_any_row_order(tmp_path):
    """Episode-major rows in descending id order take the sorting path; same returns."""
    batch = _batch(episodes=3)
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    ids = table["episode_id"].to_numpy()
    reversed_rows = table.take(np.argsort(-ids, kind="stable"))
    with open_dataset(tmp_path / "ds", PENDULUM) as writer:
        writer.write_part(0, reversed_rows)
        manifest = writer.write_manifest(policy="random", policy_params={}, seed=5, provenance={})
    rewards = table["reward"].to_numpy().astype(np.float64)
    expected = [rewards[ids == i].sum() for i in np.unique(ids)]
    assert manifest.returns.min == pytest.approx(min(expected))
    assert manifest.returns.max == pytest.approx(max(expected))
    assert manifest.returns.mean == pytest.approx(np.mean(expected))
