from __future__ import annotations

import socket
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest

from diffpol.contracts import Policy, PolicySpec
from diffpol.sampler import OnnxPolicy, SamplerClient, SamplerInputError, serve
from diffpol.sampler.client import parse_address
from diffpol.sampler.errors import SamplerRpcError
from diffpol.sampler.testing import reference_obs
from diffpol.v1 import sampler_pb2_grpc


@pytest.fixture()
def client(server):
    with SamplerClient(f"grpc://{server.address}", timeout_s=5) as c:
        yield c


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_address_forms():
    assert parse_address("localhost:50051") == "localhost:50051"
    assert parse_address("grpc://127.0.0.1:7/") == "127.0.0.1:7"
    assert parse_address("[::1]:50051") == "[::1]:50051"
    for bad in ("localhost", "http://h:1", "h:0", "h:port", ":50051", "h:70000"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_client_is_a_policy_matching_the_in_process_one(client, policy):
    assert isinstance(client, Policy)
    assert client.spec == PolicySpec(obs_dim=3, act_dim=2, n_obs_steps=2, n_action_steps=4)
    obs = reference_obs(6)
    np.testing.assert_array_equal(client.act(obs, seed=9), policy.act(obs, seed=9))
    np.testing.assert_array_equal(client.sample(obs[:1], seed=0), policy.act(obs[:1], seed=0))
    assert client.model_info().model_version == "v1"
    assert client.health()


@pytest.mark.parametrize(
    ("obs", "code"),
    [
        (np.zeros((1, 2, 2), np.float32), "INVALID_ARGUMENT"),
        (np.full((1, 2, 3), np.nan, np.float32), "INVALID_ARGUMENT"),
        (np.zeros((0, 2, 3), np.float32), "INVALID_ARGUMENT"),
        (np.zeros((65, 2, 3), np.float32), "RESOURCE_EXHAUSTED"),
        (np.zeros((1, 2, 3), np.int32), "INVALID_ARGUMENT"),
    ],
)
def test_input_errors_raise_the_same_error_as_in_process(client, policy, obs, code):
    with pytest.raises(SamplerInputError) as remote:
        client.sample(obs)
    assert remote.value.code == code
    with pytest.raises(SamplerInputError) as local:
        OnnxPolicy(policy.path, max_batch_size=64).act(obs)
    assert local.value.code == code
    assert str(remote.value) == str(local.value)


def test_pinned_model_version(server):
    with (
        SamplerClient(server.address, model_version="v9") as pinned,
        pytest.raises(SamplerInputError, match="expects 'v9'") as info,
    ):
        pinned.sample(reference_obs(1))
    assert info.value.code == "FAILED_PRECONDITION"


def test_stream_for_control_loops(client, policy):
    with client.stream() as stream:
        for step in range(20):
            obs = reference_obs(1, step)
            np.testing.assert_array_equal(stream.sample(obs, seed=step), policy.act(obs, seed=step))
        with pytest.raises(SamplerInputError, match="non-finite"):
            stream.sample(np.full((1, 2, 3), np.inf, np.float32))
        # The failed call ended its stream; the object opened a fresh one.
        np.testing.assert_array_equal(
            stream.sample(reference_obs(2), seed=1), policy.act(reference_obs(2), seed=1)
        )


def test_unreachable_server_fails_after_bounded_retries():
    port = _free_port()
    with SamplerClient(f"127.0.0.1:{port}", timeout_s=0.5, retries=2, backoff_s=0.05) as c:
        started = time.monotonic()
        with pytest.raises(SamplerRpcError) as info:
            c.sample(reference_obs(1))
        elapsed = time.monotonic() - started
        assert not c.health()
    assert info.value.code == "UNAVAILABLE"
    assert 0.05 <= elapsed < 5  # two backoffs (~0.025-0.05 s, ~0.05-0.1 s), not hung


def test_client_recovers_when_the_server_comes_back(models, policy):
    port = _free_port()
    result: dict[str, object] = {}

    def call() -> None:
        with SamplerClient(
            f"127.0.0.1:{port}", timeout_s=1, retries=30, backoff_s=0.05, max_backoff_s=0.2
        ) as c:
            try:
                result["action"] = c.sample(reference_obs(2), seed=3)
                with c.stream() as stream:
                    result["stream"] = stream.sample(reference_obs(2), seed=4)
            except BaseException as exc:
                result["error"] = exc

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.3)  # the client is retrying against nothing
    with serve(models["ddim"], port=port):
        caller.join(timeout=30)
    assert "error" not in result, result.get("error")
    np.testing.assert_array_equal(result["action"], policy.act(reference_obs(2), seed=3))
    np.testing.assert_array_equal(result["stream"], policy.act(reference_obs(2), seed=4))


class _StalledSampler(sampler_pb2_grpc.SamplerServiceServicer):
    """A real gRPC server that never answers a stream: what a hung sampler looks like."""

    def SampleStream(self, request_iterator, context):
        for _ in request_iterator:
            while context.is_active():
                time.sleep(0.01)
        yield from ()


def test_stream_times_out_on_a_hung_server():
    server = grpc.server(futures.ThreadPoolExecutor(4))
    sampler_pb2_grpc.add_SamplerServiceServicer_to_server(_StalledSampler(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with (
            SamplerClient(f"127.0.0.1:{port}", timeout_s=0.2, retries=1, backoff_s=0.01) as c,
            c.stream() as stream,
        ):
            started = time.monotonic()
            with pytest.raises(SamplerRpcError, match=r"no answer within 0\.2 s") as info:
                stream.sample(reference_obs(1))
            assert info.value.code == "DEADLINE_EXCEEDED"
            assert time.monotonic() - started < 2  # two attempts of ~0.2-0.25 s each
    finally:
        server.stop(0)


def test_client_argument_checks(server):
    with pytest.raises(ValueError, match="timeout_s"):
        SamplerClient(server.address, timeout_s=0)
    with pytest.raises(ValueError, match="retries"):
        SamplerClient(server.address, retries=-1)
    with SamplerClient(server.address) as c, pytest.raises(SamplerInputError, match="seed"):
        c.sample(reference_obs(1), seed=-3)
