"""Collection on Ray actors: the data, and no episode lost or duplicated when actors die."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from diffpol.contracts.dataset import data_files, read_manifest
from diffpol.rollout.collect import collect, collect_local
from diffpol.rollout.main import main
from diffpol.rollout.plan import episode_ids, make_plan

# A private DP cache for every test, set before ``ray_local`` starts Ray (actors inherit it).
pytestmark = pytest.mark.usefixtures("dp_cache_dir")


# 16 shards of 2 episodes, so there is work left when an actor is killed.
PLAN = make_plan("Pendulum-v1", "noisy-expert", 32, 21, {"grid": 60}, max_episode_steps=60)
SETTINGS = dict(num_actors=2, envs_per_actor=2)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The plan collected in process without Ray: what every Ray run must reproduce."""
    out = tmp_path_factory.mktemp("ref") / "ds"
    return collect_local(PLAN, out, num_envs=2).manifest


def _episode_ids(path):
    table = pq.read_table([str(p) for p in data_files(path)])
    return table["episode_id"].to_numpy()


def test_an_actor_killed_mid_collection_is_restarted_and_its_shards_rerun(
    ray_local, tmp_path, reference
):
    killed = {}

    def kill_first_worker(report):
        if not killed:
            killed["name"], killed["pid"] = report.worker, report.pid
            ray_local.kill(ray_local.get_actor(report.worker), no_restart=False)

    reports = []
    result = collect(
        PLAN,
        tmp_path / "ds",
        progress=lambda r: (reports.append(r), kill_first_worker(r)),
        **SETTINGS,
    )
    later = [r for r in reports if r.worker == killed["name"] and r.pid != killed["pid"]]
    assert later, "the killed actor's slot should have run shards in a restarted process"
    manifest = read_manifest(tmp_path / "ds")
    assert manifest == result.manifest
    assert (manifest.episodes, manifest.transitions) == (32, 32 * 60)
    ids = _episode_ids(tmp_path / "ds")
    np.testing.assert_array_equal(np.unique(ids), episode_ids(21, np.arange(32)))
    assert len(ids) == 32 * 60
    assert len(reports) == result.shards == 16 and reports[-1].done == 16
    assert len({r.worker for r in reports}) == 2
    # Byte-identical to the in-process run: actors, batching, order and the kill change nothing.
    assert manifest.fingerprint == reference.fingerprint
    assert manifest.provenance["settings"]["num_actors"] == 2


def test_an_actor_that_stays_dead_is_replaced_and_its_shards_resubmitted(
    ray_local, tmp_path, reference
):
    killed = []

    def kill_for_good(report):
        if not killed:
            killed.append(report.worker)
            ray_local.kill(ray_local.get_actor(report.worker), no_restart=True)

    reports = []
    result = collect(
        PLAN,
        tmp_path / "ds",
        progress=lambda r: (reports.append(r), kill_for_good(r)),
        **SETTINGS,
    )
    assert result.replaced_actors >= 1 and result.resubmitted_shards >= 1
    # Which actor writes the resubmitted shards (the survivor or the replacement, named
    # "-1") depends on scheduling: either way each shard is written once.
    assert result.manifest.fingerprint == reference.fingerprint
    assert sorted(r.index for r in reports) == list(range(16))  # each shard written once


def test_cli_collects_random_mountain_car_and_summarises(ray_local, tmp_path, capsys):
    out = tmp_path / "ds"
    args = ["--env", "MountainCarContinuous-v0", "--policy", "random", "--episodes", "4",
            "--out", str(out), "--actors", "1", "--envs-per-actor", "2", "--seed", "4",
            "--no-progress"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "MountainCarContinuous-v0 / random: 4 episodes, 3996 transitions, mean return" in printed
    manifest = read_manifest(out)
    assert manifest.seed == 4 and manifest.provenance["requested_policy"] == "random"
    table = pq.read_table([str(p) for p in data_files(out)])
    truncated = table["truncated"].to_numpy().reshape(4, 999)
    assert truncated[:, -1].all() and not truncated[:, :-1].any()
    assert not table["terminated"].to_numpy().any()


def test_more_actors_than_cpus_is_an_error_not_a_hang(ray_local, tmp_path):
    cpus = int(ray_local.cluster_resources()["CPU"])
    with pytest.raises(
        ValueError, match=rf"{cpus + 1} actors x 1.0 CPU need more than the {cpus} CPUs"
    ):
        collect(PLAN, tmp_path / "ds", num_actors=cpus + 1, envs_per_actor=2)
    assert not (tmp_path / "ds").exists()
