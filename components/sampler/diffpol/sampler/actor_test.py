from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

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


# The CLI (main.py) starts the same actor; it joins this module's Ray to share its start-up.
def test_cli_serves_until_sigterm(ray_local, models):
    address = ray_local.get_runtime_context().gcs_address
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "diffpol.sampler.main",
            "--model",
            str(models["ddim"]),
            "--port",
            "0",
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
        grpc_address = None
        while grpc_address is None and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"serving on grpc://(\S+)", line)
            grpc_address = found and found.group(1)
        assert grpc_address, "".join(lines)
        obs = np.zeros((1, 2, 3), np.float32)
        with SamplerClient(grpc_address, timeout_s=5) as client:
            np.testing.assert_array_equal(
                client.sample(obs, seed=4), OnnxPolicy(models["ddim"]).act(obs, seed=4)
            )
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
