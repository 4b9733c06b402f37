"""Faults on a real local multi-node Ray cluster: lost nodes, killed actors, torn files.

One cluster for the module: a head node (the driver's node, no CPUs, so every rollout
actor runs on a worker node) and three worker nodes of 1 CPU each (two for the rollout
actors, one spare for the actor that Ray restarts), each its own raylet and object store.
Every test bounds its duration.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from cluster import ClusterConfig, pid_alive, wait_for

from diffpol.contracts import Window
from diffpol.contracts.dataset import data_files, read_manifest
from diffpol.contracts.errors import ContractError
from diffpol.rollout import collect, collect_local, episode_id, make_plan

CLUSTER_CONFIG = ClusterConfig(head_cpus=0, workers=3, cpus_per_worker=1)

# 12 shards of 2 episodes on 2 actors with 2 shards in flight each: when the first shard is
# written, its actor's node is killed while it still holds work, and most shards are still
# to come.
EPISODES, STEPS, SEED = 24, 100, 7
PLAN = make_plan(
    "Pendulum-v1",
    "noisy-expert",
    EPISODES,
    SEED,
    {"expert": "expert-scripted"},
    max_episode_steps=STEPS,
)
SHARD_EPISODES = 2


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): _digest(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory):
    """The plan collected in process, without Ray or faults: what every run must equal."""
    out = tmp_path_factory.mktemp("undisturbed") / "ds"
    collect_local(PLAN, out, num_envs=SHARD_EPISODES)
    return out


def _assert_complete(root: Path) -> None:
    """Every planned episode exactly once, each with steps 0..STEPS-1 in order."""
    table = pq.read_table([str(p) for p in data_files(root)], columns=["episode_id", "step"])
    ids, steps = table["episode_id"].to_numpy(), table["step"].to_numpy()
    planned = np.array([episode_id(SEED, i) for i in range(EPISODES)])
    assert len(ids) == EPISODES * STEPS
    found, counts = np.unique(ids, return_counts=True)
    np.testing.assert_array_equal(found, np.sort(planned))
    assert set(counts) == {STEPS}, "an episode was cut short or written twice"
    order = np.argsort(ids, kind="stable")
    np.testing.assert_array_equal(
        steps[order].reshape(EPISODES, STEPS), np.tile(np.arange(STEPS), (EPISODES, 1))
    )


# -- a worker node lost during rollout ---------------------------------------------------


def test_losing_a_worker_node_mid_rollout_loses_and_duplicates_no_episode(
    cluster, tmp_path, undisturbed
):
    """Lose the worker node whose rollout actor wrote the first shard (SIGKILL of its
    raylet and every process it started): Ray declares the node dead, restarts the actor on
    the spare node (or the driver resubmits), the shards it held run again, and the dataset
    equals the undisturbed one."""
    killed: dict = {}
    reports = []

    def on_shard(report) -> None:
        # The process that ran the shard may be gone by the end: look its node up now.
        node = cluster.node_of_pid(report.pid)
        reports.append((time.monotonic(), report, node.node_id if node else None))
        if killed:
            return
        assert node is not None and node is not cluster.head, "rollout actors run on workers"
        killed.update(
            node_id=node.node_id,
            pid=report.pid,
            worker=report.worker,
            done=report.done,
            at=time.monotonic(),
        )
        killed["pids"] = cluster.kill_node(node)  # raylet + its workers, SIGKILL, at once

    result = collect(
        PLAN,
        tmp_path / "ds",
        num_actors=2,
        envs_per_actor=SHARD_EPISODES,
        address=cluster.address,
        progress=on_shard,
    )

    assert killed["done"] == 1, "the node dies right after the first shard is written"
    wait_for(
        lambda: killed["node_id"] not in cluster.alive_node_ids(),
        30,
        "the GCS to declare the killed node dead",
    )
    assert killed["pid"] in killed["pids"] and not pid_alive(killed["pid"])
    # Results the dead actor sent before it died may still be read after the kill; every
    # other shard came from a process on a live node, and work went on without it.
    after = [(r, node) for t, r, node in reports if t > killed["at"] and r.pid != killed["pid"]]
    assert after, "shards must complete on other processes after the kill"
    assert all(node not in (None, killed["node_id"]) for _, node in after), "only live nodes"
    # The driver queued a shard on the dead actor after the kill: Ray ran it on the restarted
    # actor (same name, new process), or the driver resubmitted it.
    restarted = [r for r, _ in after if r.worker == killed["worker"]]
    assert restarted or result.resubmitted_shards > 0
    assert len(reports) == result.shards == EPISODES // SHARD_EPISODES

    manifest = read_manifest(tmp_path / "ds")  # verifies the files against the fingerprint
    assert (manifest.episodes, manifest.transitions) == (EPISODES, EPISODES * STEPS)
    _assert_complete(tmp_path / "ds")
    assert manifest.fingerprint == read_manifest(undisturbed).fingerprint
    print(
        f"\nnode killed after {killed['done']}/{result.shards} shards; collection took "
        f"{result.seconds:.1f} s, {result.resubmitted_shards} shard(s) resubmitted by the "
        f"driver, {result.replaced_actors} actor(s) replaced, {len(restarted)} shard(s) run "
        "by the restarted actor"
    )


# -- a truncated Parquet part ------------------------------------------------------------


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_truncated_parquet_part_is_detected_and_a_rerun_repairs_only_it(tmp_path, undisturbed):
    from diffpol.preprocess import PreprocessConfig, preprocess
    from diffpol.preprocess.sources import open_sources

    root = tmp_path / "ds"
    shutil.copytree(undisturbed, root)
    before = _digests(root)
    victim = data_files(root)[3]
    _truncate(victim)
    untouched = {k: v for k, v in before.items() if k != str(victim.relative_to(root))}

    # The reader every consumer goes through (fingerprint verification on)...
    with pytest.raises(ContractError, match="truncated") as verified:
        read_manifest(root)
    assert str(root) in str(verified.value)
    # ...and preprocess, which fails before writing anything.
    out = tmp_path / "samples"
    with pytest.raises(ContractError) as failed:
        preprocess([root], out, PreprocessConfig(progress=False))
    assert str(root) in str(failed.value)
    assert not out.exists(), "a failed preprocess must not leave a partial output"
    # Without fingerprint checks the Parquet footer check names the very file.
    with pytest.raises(ContractError, match="truncated or corrupted") as named:
        open_sources([root], verify_fingerprints=False)
    assert str(victim) in str(named.value)

    # Nothing else was touched.
    after = _digests(root)
    assert {k: after[k] for k in untouched} == untouched

    # Rerunning the same collection over the broken directory restores it byte for byte.
    collect_local(PLAN, root, num_envs=SHARD_EPISODES, overwrite=True)
    assert _digests(root) == before
    assert open_sources([root]).rows == EPISODES * STEPS


def test_the_verified_read_of_a_truncated_dataset_names_the_file(tmp_path, undisturbed):
    """Regression: the fingerprint check alone says only that some file changed; the
    verified read names the file."""
    root = tmp_path / "ds"
    shutil.copytree(undisturbed, root)
    victim = data_files(root)[3]
    _truncate(victim)
    with pytest.raises(ContractError) as error:
        read_manifest(root)
    assert victim.name in str(error.value)


# -- the sampler actor killed under traffic ----------------------------------------------


def _client_loop(make_call, worker: int, stop: threading.Event, log: list) -> None:
    """Send requests until ``stop``; log (start, end, obs, seed, action or error)."""
    rng = np.random.default_rng(worker)
    i = 0
    while not stop.is_set():
        obs = rng.standard_normal((1 + i % 3, 2, 3)).astype(np.float32)
        seed = worker * 1_000_000 + i
        start = time.monotonic()
        try:
            action = make_call(obs, seed)
        except Exception as exc:  # recorded, then asserted on: no error may reach a caller
            log.append((start, time.monotonic(), obs, seed, exc))
        else:
            log.append((start, time.monotonic(), obs, seed, action))
        i += 1


def test_a_killed_sampler_actor_is_restarted_and_clients_recover(cluster, models):
    """SIGKILL the sampler actor's process while three clients (two unary, one streaming)
    send requests: Ray restarts the actor on the same address, every client call returns
    (retries hide the outage), the first answer after the kill comes within 5 s, and every
    answer equals the in-process policy's for the same seed (stochastic DDPM, so a wrong
    seed or a mixed-up batch row would show)."""
    import ray

    from diffpol.sampler import OnnxPolicy, SamplerClient
    from diffpol.sampler.actor import start_sampler_actor
    from diffpol.sampler.server import ServerConfig

    # Pinned to the driver's node (the head), which has no CPUs to reserve.
    actor, address = start_sampler_actor(
        models["ddpm"], ServerConfig(max_batch_wait_ms=1), num_cpus=0
    )
    clients = [
        SamplerClient(address, timeout_s=1.0, retries=100, backoff_s=0.02, max_backoff_s=0.1)
        for _ in range(3)
    ]
    stream = clients[2].stream()
    calls = [clients[0].sample, clients[1].sample, stream.sample]
    logs: list[list] = [[] for _ in calls]
    stop = threading.Event()
    threads = [
        threading.Thread(target=_client_loop, args=(call, n, stop, logs[n]), daemon=True)
        for n, call in enumerate(calls)
    ]
    try:
        old_pid = ray.get(actor.stats.remote(), timeout=30)["pid"]
        for thread in threads:
            thread.start()
        wait_for(lambda: all(len(log) >= 20 for log in logs), 30, "traffic before the kill")
        killed_at = time.monotonic()
        os.kill(old_pid, signal.SIGKILL)
        wait_for(lambda: not pid_alive(old_pid), 10, "the sampler process to die")
        # Traffic goes on until every client has had answers from the restarted actor.
        wait_for(
            lambda: all(
                any(
                    entry[0] > killed_at + 0.1 and not isinstance(entry[4], Exception)
                    for entry in log
                )
                for log in logs
            ),
            30,
            "every client to get answers after the kill",
        )
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        stream.close()
        for client in clients:
            client.close()
    try:
        stats = ray.get(actor.stats.remote(), timeout=30)
        assert stats["pid"] != old_pid, "a new process must serve after the kill"
        assert ray.get(actor.address.remote(), timeout=30) == address
    finally:
        ray.kill(actor, no_restart=True)

    errors = [entry for log in logs for entry in log if isinstance(entry[4], Exception)]
    assert not errors, f"{len(errors)} call(s) failed, first: {errors[0][4]!r}"
    first_after = min(
        end for log in logs for (start, end, *_) in log if end > killed_at and start > killed_at
    )
    # Recovery is bounded by the 30 s wait above; how fast it is depends on the machine.
    recovery_s = first_after - killed_at

    reference = OnnxPolicy(models["ddpm"])
    worst = 0.0
    answered = 0
    for log in logs:
        for _, _, obs, seed, action in log:
            expected = reference.act(obs, seed)
            assert action.shape == expected.shape
            worst = max(worst, float(np.max(np.abs(action - expected))))
            answered += 1
    # Fused batches may take another onnxruntime kernel than batch 1: float rounding only.
    assert worst <= 1e-5, f"a response differs from the in-process policy by {worst:g}"
    stalls = [end - start for log in logs for (start, end, *_) in log if start <= killed_at <= end]
    print(
        f"\nsampler actor killed: first answer after {recovery_s:.2f} s; {answered} answers "
        f"checked (max |diff| {worst:.1e}); calls in flight at the kill took "
        f"{', '.join(f'{s:.2f}' for s in stalls)} s"
    )


# -- a truncated checkpoint file ---------------------------------------------------------


@pytest.fixture(scope="module")
def trained(cluster, tmp_path_factory):
    """A tiny policy trained with Ray Train on the cluster: (samples dir, TrainResult, config)."""
    from diffpol.trainer import Config, ModelConfig, OptimConfig, TrainConfig, train
    from diffpol.trainer.synthetic import bimodal_samples, write_samples

    obs, action = bimodal_samples(400, n_obs_steps=2, horizon=4, seed=5)
    samples = write_samples(tmp_path_factory.mktemp("samples"), obs, action, val_fraction=0.2)
    config = Config(
        model=ModelConfig(window=Window(2, 4, 2), hidden_width=16, depth=1),
        optim=OptimConfig(warmup_steps=2),
        train=TrainConfig(epochs=1, batch_size=64, keep_checkpoints=1, max_failures=0),
    )
    out = tmp_path_factory.mktemp("train")
    start = time.monotonic()
    result = train(samples, out, config)
    print(f"\ntraining the tiny policy on the cluster took {time.monotonic() - start:.1f} s")
    return samples, result, config


OBS = np.random.default_rng(3).standard_normal((5, 2, 3)).astype(np.float32)


def _policy_actions(checkpoint_dir) -> np.ndarray:
    from diffpol.trainer import load_policy

    return load_policy(checkpoint_dir).act(OBS, seed=9)


@pytest.fixture
def truncated_weights(trained):
    """Truncate the final checkpoint's weights (policy.pt) for one test, then restore them.
    Yields the file and the digests of every file of the run from before the damage."""
    _, result, _ = trained
    victim = result.checkpoint_dir / "policy.pt"
    intact = victim.read_bytes()
    before = _digests(result.out_dir)
    _truncate(victim)
    try:
        yield victim, before
    finally:
        victim.write_bytes(intact)


def test_a_truncated_checkpoint_file_is_named_and_nothing_else_is_lost(trained, truncated_weights):
    from diffpol.trainer import CheckpointError, load_policy, read_checkpoint

    _, result, _ = trained
    out = result.out_dir
    victim, before = truncated_weights
    with pytest.raises(CheckpointError) as error:
        load_policy(result.checkpoint_dir)
    assert str(victim) in str(error.value)
    after = _digests(out)
    changed = sorted(name for name in before if after.get(name) != before[name])
    assert changed == [str(victim.relative_to(out))] and after.keys() == before.keys()
    # The rest of the checkpoint still reads, and the run's Ray Train storage still holds
    # an intact copy of the damaged file, which loads.
    assert read_checkpoint(result.checkpoint_dir).meta.completed
    stored = [p.parent for p in out.glob("ray_results/**/policy.pt")]
    assert len(stored) == 1, stored
    assert _digest(stored[0] / "policy.pt") == before[str(victim.relative_to(out))]
    assert load_policy(stored[0]).act(OBS, seed=9).shape == (5, 2, 1)


def test_rerunning_training_over_a_truncated_checkpoint_repairs_it(trained, tmp_path):
    """Regression: a run counts as finished only if its weights load, so a truncated
    policy.pt is not kept on the strength of the checkpoint's JSON alone."""
    from diffpol.trainer import train

    samples, result, config = trained
    victim = result.checkpoint_dir / "policy.pt"
    intact = victim.read_bytes()
    expected = _policy_actions(result.checkpoint_dir)
    _truncate(victim)
    try:
        again = train(samples, result.out_dir, config)
        np.testing.assert_array_equal(_policy_actions(again.checkpoint_dir), expected)
    finally:
        victim.write_bytes(intact)
