"""Load on one sampler server over loopback: many concurrent clients, bounded in time.

The server runs in its own process with micro-batching on (concurrent requests fuse into
one onnxruntime call); the clients are ``grpc.aio`` coroutines in this process, one
channel (TCP connection) each. The model has a representative denoiser size (MLP
3 x 256 Mish, DDIM 10 steps, Pendulum shapes), so the onnxruntime call is a
real share of each request.

Bounded form (CI): 1 client for 3 s, then 64 clients for 5 s; every answer is checked
against the in-process policy, and concurrent requests must be fused. ``DIFFPOL_LONG=1``:
10 s and 30 s, and the goal of a 64-client rate at least 5x the single client's is
enforced (a throughput ratio on a shared machine swings with its load, so CI only prints it).
Numbers go to stdout (run with ``-s``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import grpc
import numpy as np
import pytest
from long_form import LONG
from sampler_process import SamplerProcess

from diffpol.contracts import numpy_to_tensor
from diffpol.sampler import OnnxPolicy
from diffpol.v1 import sampler_pb2, sampler_pb2_grpc

CLIENTS = 64
SINGLE_S, LOAD_S = (10.0, 30.0) if LONG else (3.0, 5.0)
GOAL_RATIO = 5.0  # enforced by the long form only: the ratio depends on the machine's load
CALL_TIMEOUT_S = 10.0
SHAPE = dict(obs_dim=3, act_dim=1, n_obs_steps=2, horizon=16, n_action_steps=8)


@dataclass(frozen=True)
class LoadResult:
    clients: int
    seconds: float
    requests: int
    errors: int
    wrong: int
    latencies_ms: np.ndarray

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q))

    def line(self) -> str:
        return (
            f"{self.clients:3d} client(s) x {self.seconds:.1f} s: {self.rate:7.0f} req/s, "
            f"p50 {self.percentile(50):6.2f} ms, p99 {self.percentile(99):6.2f} ms, "
            f"{self.errors} errors, {self.wrong} wrong answers"
        )


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from diffpol.sampler.testing import export_reference

    path = tmp_path_factory.mktemp("load") / "representative.onnx"
    return export_reference(path, width=256, depth=3, activation="mish", **SHAPE)


@pytest.fixture(scope="module")
def server(model):
    with SamplerProcess(model, max_batch_wait_ms=2, max_batch_size=1024) as process:
        yield process


def _requests(model, clients: int):
    """One (request, expected action) per client: its own obs and seed."""
    policy = OnnxPolicy(model)
    rng = np.random.default_rng(0)
    out = []
    for client in range(clients):
        obs = rng.standard_normal((1, SHAPE["n_obs_steps"], SHAPE["obs_dim"])).astype(np.float32)
        request = sampler_pb2.SampleRequest(obs=numpy_to_tensor(obs), seed=client)
        out.append((request, policy.act(obs, seed=client)))
    return out


async def _load(address: str, work, seconds: float) -> LoadResult:
    channels = [grpc.aio.insecure_channel(address) for _ in work]
    stubs = [sampler_pb2_grpc.SamplerServiceStub(channel) for channel in channels]
    latencies: list[float] = []
    counts = {"errors": 0, "wrong": 0}
    try:
        for stub, (request, _) in zip(stubs, work, strict=True):  # connect before the clock starts
            await stub.Sample(request, timeout=CALL_TIMEOUT_S)
        end = time.monotonic() + seconds

        async def client(stub, request, expected) -> None:
            while time.monotonic() < end:
                start = time.perf_counter()
                try:
                    response = await stub.Sample(request, timeout=CALL_TIMEOUT_S)
                except grpc.RpcError:
                    counts["errors"] += 1
                    continue
                latencies.append(time.perf_counter() - start)
                action = np.asarray(response.action.values, np.float32)
                if not np.allclose(action, expected.ravel(), rtol=0, atol=1e-5):
                    counts["wrong"] += 1

        began = time.monotonic()
        await asyncio.gather(*(client(s, r, e) for s, (r, e) in zip(stubs, work, strict=True)))
        elapsed = time.monotonic() - began
    finally:
        for channel in channels:
            await channel.close()
    return LoadResult(
        len(work),
        elapsed,
        len(latencies),
        counts["errors"],
        counts["wrong"],
        np.asarray(latencies) * 1e3,
    )


def test_many_concurrent_clients_are_fused_and_answered_correctly(server, model):
    work = _requests(model, CLIENTS)
    single = asyncio.run(_load(server.address, work[:1], SINGLE_S))
    before, cpu_before = server.stats(), server.cpu_seconds()
    client_cpu_before = time.process_time()  # this process: the 64 clients
    loaded = asyncio.run(_load(server.address, work, LOAD_S))
    client_cpu = time.process_time() - client_cpu_before
    after, cpu_after = server.stats(), server.cpu_seconds()
    server_ms = 1e3 * (cpu_after - cpu_before) / max(after["requests"] - before["requests"], 1)
    calls = after["batch_calls"] - before["batch_calls"]
    rows_per_call = (after["batch_rows"] - before["batch_rows"]) / max(calls, 1)
    ratio = loaded.rate / single.rate
    print(
        f"\n{single.line()}\n{loaded.line()}\n"
        f"ratio {ratio:.2f}x (goal {GOAL_RATIO:g}x); {rows_per_call:.1f} rows per fused "
        f"onnxruntime call; server CPU {server_ms:.2f} ms per request under load "
        f"({(cpu_after - cpu_before) / loaded.seconds:.2f} cores); clients' CPU "
        f"{1e3 * client_cpu / max(loaded.requests, 1):.2f} ms per request "
        f"({client_cpu / loaded.seconds:.2f} cores); server RSS {server.rss_bytes() / 2**20:.0f} MB"
    )
    for result in (single, loaded):
        assert result.errors == 0 and result.wrong == 0, result.line()
    assert after["errors"] == before["errors"] and after["expired"] == before["expired"]
    assert rows_per_call > 1.5, "concurrent requests must be fused into shared calls"
    if LONG:
        assert ratio >= GOAL_RATIO, f"{CLIENTS} clients get {ratio:.2f}x the single-client rate"
