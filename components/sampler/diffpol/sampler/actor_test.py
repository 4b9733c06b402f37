from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from diffpol.sampler import OnnxPolicy, SamplerClient
from diffpol.sampler.testing import reference_obs


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def sampler_actor(ray_local, models):
    from diffpol.sampler.actor import start_sampler_actor
    from diffpol.sampler.server import ServerConfig

    actor, address = start_sampler_actor(
        models["ddim"], ServerConfig(max_batch_wait_ms=1), num_cpus=0.5
    )
    yield actor, address
    ray_local.kill(actor, no_restart=True)


def test_actor_serves_grpc_and_reloads(ray_local, sampler_actor, models):
    actor, address = sampler_actor
    assert address.startswith("127.0.0.1:") and not address.endswith(":0")
    assert ray_local.get(actor.address.remote()) == address
    expected = {"v1": OnnxPolicy(models["ddim"]), "v2": OnnxPolicy(models["ddim_v2"])}
    obs = reference_obs(3)
    with SamplerClient(address, timeout_s=5) as client:
        assert client.health()
        np.testing.assert_array_equal(client.sample(obs, seed=1), expected["v1"].act(obs, seed=1))
        meta = ray_local.get(actor.reload.remote(str(models["ddim_v2"])))
        assert meta["model_version"] == "v2"
        assert client.model_info().model_version == "v2"
        np.testing.assert_array_equal(client.sample(obs, seed=1), expected["v2"].act(obs, seed=1))
        stats = ray_local.get(actor.stats.remote())
        assert stats["requests"] == 2 and stats["reloads"] == 1
        ray_local.get(actor.reload.remote(str(models["ddim"])))


def test_ray_restarts_a_killed_actor_and_the_client_recovers(ray_local, sampler_actor, models):
    actor, address = sampler_actor
    policy = OnnxPolicy(models["ddim"])
    obs = reference_obs(2, 5)
    with SamplerClient(
        address, timeout_s=2, retries=40, backoff_s=0.05, max_backoff_s=0.25
    ) as client:
        np.testing.assert_array_equal(client.sample(obs, seed=3), policy.act(obs, seed=3))
        old_pid = ray_local.get(actor.stats.remote())["pid"]
        ray_local.kill(actor, no_restart=False)
        killed = time.monotonic()
        while _alive(old_pid):  # from here on, only a restarted actor can answer
            assert time.monotonic() - killed < 30
            time.sleep(0.01)
        assert not client.health()
        # The restarted actor rebinds the same address, serving the model it was created with.
        np.testing.assert_array_equal(client.sample(obs, seed=3), policy.act(obs, seed=3))
        recovered_s = time.monotonic() - killed
    stats = ray_local.get(actor.stats.remote())
    assert stats["pid"] != old_pid and stats["requests"] == 1
    assert ray_local.get(actor.address.remote()) == address
    print(f"client recovered {recovered_s:.2f} s after the kill")


def test_replicas_share_the_load_and_a_killed_one_loses_no_request(ray_local, models):
    """Two replicas behind the client's round_robin: both answer; one is killed mid-load
    and Ray restarts it; every call (retried on UNAVAILABLE with the same seed) gets the
    right answer, and the restarted replica serves again on its address."""
    from diffpol.sampler.actor import start_sampler_replicas
    from diffpol.sampler.server import ServerConfig

    policy = OnnxPolicy(models["ddim"])
    replicas = start_sampler_replicas(
        models["ddim"], ServerConfig(), replicas=2, num_cpus=0.25, max_restarts=2
    )
    try:
        assert len(set(replicas.addresses)) == 2
        pids = ray_local.get([a.stats.remote() for a in replicas.actors])
        pids = [stats["pid"] for stats in pids]
        work = [(reference_obs(1, seed), seed) for seed in range(4)]
        expected = [policy.act(obs, seed=seed) for obs, seed in work]
        done = threading.Event()
        results = {"ok": 0, "wrong": 0, "errors": []}

        def load(client: SamplerClient, i: int) -> None:
            obs, seed = work[i]
            while not done.is_set():
                try:
                    action = client.sample(obs, seed=seed)
                except Exception as exc:  # recorded, asserted below
                    results["errors"].append(repr(exc))
                    continue
                if np.array_equal(action, expected[i]):
                    results["ok"] += 1
                else:
                    results["wrong"] += 1

        with SamplerClient(
            replicas.address, timeout_s=2, retries=40, backoff_s=0.02, max_backoff_s=0.2
        ) as client:
            threads = [threading.Thread(target=load, args=(client, i)) for i in range(4)]
            for thread in threads:
                thread.start()
            try:
                # Load reaches every replica before one is killed (however slow the machine).
                started = time.monotonic()
                while True:
                    before = ray_local.get([a.stats.remote() for a in replicas.actors])
                    if all(stats["requests"] > 0 for stats in before):
                        break
                    assert time.monotonic() - started < 60, before
                    time.sleep(0.05)
                ray_local.kill(replicas.actors[0], no_restart=False)
                killed = time.monotonic()
                while _alive(pids[0]):
                    assert time.monotonic() - killed < 30, "the killed replica did not exit"
                    time.sleep(0.01)
                # Load goes on until Ray has restarted the replica (a new process).
                restarted = None
                while restarted is None:
                    assert time.monotonic() - killed < 90, "Ray did not restart the replica"
                    try:
                        stats = ray_local.get(replicas.actors[0].stats.remote(), timeout=5)
                        restarted = stats if stats["pid"] != pids[0] else None
                    except ray_local.exceptions.GetTimeoutError:
                        pass
                    time.sleep(0.1)
                # Load goes on past the restart until enough calls were answered.
                while results["ok"] <= 50 and not results["errors"]:
                    assert time.monotonic() - killed < 120, results
                    time.sleep(0.05)
            finally:
                done.set()
                for thread in threads:
                    thread.join(timeout=30)
        assert results["errors"] == [] and results["wrong"] == 0, results
        assert results["ok"] > 50, results
        # The restarted replica serves on the address it had.
        assert ray_local.get(replicas.actors[0].address.remote()) == replicas.addresses[0]
        with SamplerClient(replicas.addresses[0], timeout_s=5, retries=20) as alone:
            np.testing.assert_array_equal(alone.sample(*work[0]), expected[0])
        print(f"{results['ok']} answers, none lost, across the kill and restart")
    finally:
        for actor in replicas.actors:
            ray_local.kill(actor, no_restart=True)


# The CLI (main.py) starts the same actors; it joins this module's Ray to share its start-up.
def test_cli_serves_replicas_of_several_models_until_sigterm(ray_local, models, tmp_path):
    address = ray_local.get_runtime_context().gcs_address
    addresses_file = tmp_path / "sampler.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "diffpol.sampler.main",
            "--model",
            str(models["ddim"]),
            "--model",
            f"v2={models['ddim_v2']}",
            "--port",
            "0",
            "--replicas",
            "2",
            "--cpus-per-replica",
            "0.25",
            "--metrics-port",
            "0",
            "--addresses-file",
            str(addresses_file),
            "--address",
            address,
            "--max-batch-wait-ms",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ),
    )
    try:
        lines = []
        deadline = time.monotonic() + 90
        grpc_address = target = None
        while target is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"serving on grpc://(\S+)", line)
            grpc_address = grpc_address or (found and found.group(1))
            found = re.search(r"balanced gRPC target \(round_robin\): (\S+)", line)
            target = found and found.group(1)
        assert grpc_address and target, "".join(lines)
        written = json.loads(addresses_file.read_text())
        assert ",".join(written["addresses"]) == grpc_address and written["target"] == target
        assert len(written["addresses"]) == 2 and not written["tls"]
        obs = np.zeros((1, 2, 3), np.float32)
        with (
            SamplerClient(grpc_address, timeout_s=5) as client,
            SamplerClient(grpc_address, timeout_s=5, model="v2") as v2,
        ):
            for _ in range(4):
                np.testing.assert_array_equal(
                    client.sample(obs, seed=4), OnnxPolicy(models["ddim"]).act(obs, seed=4)
                )
            np.testing.assert_array_equal(
                v2.sample(obs, seed=4), OnnxPolicy(models["ddim_v2"]).act(obs, seed=4)
            )
            assert list(client.model_info().models) == ["default", "v2"]
        served = 0
        for port in written["metrics_ports"]:
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                text = response.read().decode()
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    if sample.name == "diffpol_sampler_requests_total" and sample.labels == {
                        "method": "Sample",
                        "code": "OK",
                    }:
                        served += sample.value
        assert served == 5
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0, "".join(lines) + output
        assert "stopped" in output
        with SamplerClient(grpc_address, timeout_s=0.5, retries=0) as client:
            assert not client.health()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
