from __future__ import annotations

import os
import re
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from diffpol.contracts import numpy_to_tensor, tensor_to_numpy
from diffpol.sampler import ArtifactError, OnnxPolicy, serve
from diffpol.sampler.testing import reference_obs
from diffpol.v1 import sampler_pb2, sampler_pb2_grpc

SERVICE = "diffpol.v1.SamplerService"


def _request(obs, seed=None, model_version=""):
    request = sampler_pb2.SampleRequest(obs=numpy_to_tensor(obs), model_version=model_version)
    if seed is not None:
        request.seed = seed
    return request


def _sample(stub, obs, seed=None, **kw):
    response = stub.Sample(_request(obs, seed, **kw), timeout=10)
    return tensor_to_numpy(response.action), response.model_version


def test_seeded_samples_equal_the_in_process_policy(stub, policy):
    for batch, seed in [(1, 0), (5, 7), (64, 2**63 + 5)]:
        obs = reference_obs(batch, seed % 1000)
        action, version = _sample(stub, obs, seed)
        assert version == "v1"
        np.testing.assert_array_equal(action, policy.act(obs, seed=seed))
    obs = reference_obs(3)
    first, _ = _sample(stub, obs)
    second, _ = _sample(stub, obs)
    assert not np.array_equal(first, second)  # unseeded: fresh noise each time


def test_model_info(stub):
    info = stub.GetModelInfo(sampler_pb2.GetModelInfoRequest(), timeout=5)
    assert (
        info.env_id,
        info.obs_dim,
        info.act_dim,
        info.n_obs_steps,
        info.horizon,
        info.n_action_steps,
    ) == ("Pendulum-v1", 3, 2, 2, 8, 4)
    assert (info.sampler, info.steps, info.model_version) == ("ddim", 10, "v1")
    assert info.contract_version == "diffpol.v1" and info.server_version == "0.1.0"
    assert info.max_batch_size == 64
    assert list(info.action_low) == [-1, -2] and list(info.action_high) == [1, 2]


def _bad(values_shape=None, values=None, obs=None):
    if obs is not None:
        return _request(obs)
    tensor = sampler_pb2.Tensor(shape=values_shape)
    tensor.values.extend(values)
    return sampler_pb2.SampleRequest(obs=tensor)


def _with(obs, index, value):
    obs = obs.copy()
    obs[index] = value
    return obs


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (_bad(obs=np.zeros((1, 3, 3), np.float32)), "INVALID_ARGUMENT", r"shape \[B, 2, 3\]"),
        (_bad(obs=np.zeros((1, 2, 4), np.float32)), "INVALID_ARGUMENT", r"got \[1, 2, 4\]"),
        (_bad(obs=np.zeros((6,), np.float32)), "INVALID_ARGUMENT", r"got \[6\]"),
        (_bad(obs=_with(reference_obs(2), (1, 1, 1), np.nan)), "INVALID_ARGUMENT", "non-finite"),
        (_bad(obs=_with(reference_obs(2), (0, 0, 0), np.inf)), "INVALID_ARGUMENT", "non-finite"),
        (_bad(obs=np.zeros((0, 2, 3), np.float32)), "INVALID_ARGUMENT", "empty batch"),
        (_bad([1, 2, 3], [0.0] * 5), "INVALID_ARGUMENT", r"needs 6 values, got 5"),
        (_bad([-1, 2, 3], []), "INVALID_ARGUMENT", "negative dimension"),
        (_bad([0, 2**62, 3], []), "INVALID_ARGUMENT", r"too large.*at most 2147483647"),
        (_bad([2**63 - 1, 0, 3], []), "INVALID_ARGUMENT", "too large"),
        (_bad(obs=np.zeros((65, 2, 3), np.float32)), "RESOURCE_EXHAUSTED", "max_batch_size 64"),
        (
            _request(reference_obs(1), model_version="v0"),
            "FAILED_PRECONDITION",
            "'v1' loaded.*expects 'v0'",
        ),
    ],
)
def test_bad_requests_get_an_actionable_status_and_the_server_keeps_serving(
    stub, policy, request_, code, message
):
    with pytest.raises(grpc.RpcError) as info:
        stub.Sample(request_, timeout=5)
    assert info.value.code() == grpc.StatusCode[code]
    assert re.search(message, info.value.details())
    obs = reference_obs(1)
    np.testing.assert_array_equal(_sample(stub, obs, 1)[0], policy.act(obs, seed=1))


# Undecodable for every request type: a zero tag, a truncated varint, a truncated field.
NOT_PROTOBUF = [b"\x00", b"\xff\xff\xff", b"\x0a\x05\x0a"]


@pytest.mark.parametrize("payload", NOT_PROTOBUF)
@pytest.mark.parametrize(
    ("method", "message_type"),
    [("Sample", "SampleRequest"), ("GetModelInfo", "GetModelInfoRequest")],
)
def test_bytes_that_are_not_a_request_are_invalid_argument(
    channel, stub, policy, payload, method, message_type
):
    call = channel.unary_unary(f"/{SERVICE}/{method}")  # no serializers: raw bytes
    with pytest.raises(grpc.RpcError) as info:
        call(payload, timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"not a valid serialized diffpol.v1.{message_type}" in info.value.details()
    obs = reference_obs(1)
    np.testing.assert_array_equal(_sample(stub, obs, 1)[0], policy.act(obs, seed=1))


def test_undecodable_stream_messages_end_the_stream_with_invalid_argument(channel, policy):
    obs = reference_obs(1)
    good = _request(obs, seed=4).SerializeToString()
    bad_utf8_version = b"\x1a\x02\xff\xfe"  # model_version (field 3) that is not UTF-8
    for bad in [*NOT_PROTOBUF, bad_utf8_version]:
        call = channel.stream_stream(f"/{SERVICE}/SampleStream")(iter([good, bad, good]), timeout=5)
        first = sampler_pb2.SampleResponse.FromString(next(call))
        np.testing.assert_array_equal(tensor_to_numpy(first.action), policy.act(obs, seed=4))
        with pytest.raises(grpc.RpcError) as info:
            next(call)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "not a valid serialized diffpol.v1.SampleRequest" in info.value.details()


def test_raw_requests_get_the_bytes_protobuf_would_write(channel, policy):
    obs = reference_obs(3)
    raw = channel.unary_unary(f"/{SERVICE}/Sample")
    answer = raw(_request(obs, seed=11).SerializeToString(), timeout=5)
    expected = sampler_pb2.SampleResponse(
        action=numpy_to_tensor(policy.act(obs, seed=11)), model_version="v1"
    )
    assert answer == expected.SerializeToString()
    info = channel.unary_unary(f"/{SERVICE}/GetModelInfo")(b"", timeout=5)
    assert sampler_pb2.ModelInfo.FromString(info).model_version == "v1"


def test_messages_over_the_size_limit_are_refused(models):
    with (
        serve(models["ddim"], max_message_bytes=2048) as srv,
        grpc.insecure_channel(srv.address) as ch,
    ):
        stub = sampler_pb2_grpc.SamplerServiceStub(ch)
        with pytest.raises(grpc.RpcError) as info:
            stub.Sample(_request(reference_obs(200)), timeout=5)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _sample(stub, reference_obs(2), 0)[0].shape == (2, 4, 2)


def test_health_checking(models):
    srv = serve(models["ddim"])
    with grpc.insecure_channel(srv.address) as ch:
        health = health_pb2_grpc.HealthStub(ch)
        for service in ("", SERVICE):
            response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        watch = health.Watch(health_pb2.HealthCheckRequest(service=SERVICE), timeout=10)
        assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
        stopper = threading.Thread(target=srv.stop, args=(1.0,))
        stopper.start()
        # Graceful shutdown announces NOT_SERVING before the server goes away.
        assert next(watch).status == health_pb2.HealthCheckResponse.NOT_SERVING
        stopper.join()


def test_reflection_lists_the_services(channel):
    database = ProtoReflectionDescriptorDatabase(channel)
    services = set(database.get_services())
    assert {
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services
    pool = descriptor_pool.DescriptorPool(database)
    methods = pool.FindServiceByName(SERVICE).methods_by_name
    assert set(methods) == {"Sample", "SampleStream", "GetModelInfo"}
    assert methods["Sample"].input_type.full_name == "diffpol.v1.SampleRequest"


def test_stream_answers_in_order_and_a_bad_message_ends_it_with_its_status(stub, policy):
    observations = [reference_obs(1 + i % 3, i) for i in range(6)]
    requests = [_request(obs, seed=i) for i, obs in enumerate(observations)]
    responses = list(stub.SampleStream(iter(requests), timeout=10))
    assert len(responses) == 6
    for i, (obs, response) in enumerate(zip(observations, responses, strict=True)):
        np.testing.assert_array_equal(tensor_to_numpy(response.action), policy.act(obs, seed=i))
    bad = [requests[0], _request(np.zeros((1, 5), np.float32)), requests[1]]
    call = stub.SampleStream(iter(bad), timeout=10)
    assert tensor_to_numpy(next(call).action).shape == (1, 4, 2)
    with pytest.raises(grpc.RpcError) as info:
        next(call)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_micro_batching_returns_each_caller_exactly_its_own_rows(models, policy):
    callers, rounds = 12, 4
    with (
        serve(models["ddim"], max_batch_wait_ms=5, max_batch_size=64) as srv,
        grpc.insecure_channel(srv.address) as ch,
    ):
        # The first model call is held until every caller's first request is queued, so
        # those queue behind it and must be fused, however the machine schedules threads.
        # (Every request has 2-4 rows: a lone one-row call would run on the event loop.)
        model, run_checked, held = srv.model, srv.model.run_checked, threading.Event()

        def first_call_held(*args):
            if not held.is_set():
                held.set()
                deadline = time.monotonic() + 30
                while srv.stats()["requests"] < callers and time.monotonic() < deadline:
                    time.sleep(0.001)
            return run_checked(*args)

        model.run_checked = first_call_held
        stub = sampler_pb2_grpc.SamplerServiceStub(ch)
        barrier = threading.Barrier(callers)
        results: dict[tuple[int, int], np.ndarray] = {}
        errors: list[BaseException] = []

        def caller(i: int) -> None:
            try:
                for r in range(rounds):
                    obs = reference_obs(2 + (i + r) % 3, seed=100 * i + r)
                    barrier.wait(timeout=10)
                    results[i, r] = _sample(stub, obs, seed=1000 * i + r)[0]
            except BaseException as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(callers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        for (i, r), action in results.items():
            obs = reference_obs(2 + (i + r) % 3, seed=100 * i + r)
            np.testing.assert_array_equal(action, policy.act(obs, seed=1000 * i + r))
        stats = srv.stats()
    assert stats["batch_jobs"] == callers * rounds
    # The first round took two calls (the held one, then the other 11 fused, 22-44 rows);
    # later rounds fuse as the machine happens to schedule them.
    assert stats["batch_calls"] <= callers * rounds - (callers - 2)


def test_a_request_whose_deadline_passes_while_queued_is_not_run(models):
    # The model call of a first request is held until released, so a second request queues
    # behind it until its deadline passes, however fast the machine runs the model.
    with (
        serve(models["ddim"], max_batch_wait_ms=5, max_batch_size=1024) as srv,
        grpc.insecure_channel(srv.address) as ch,
    ):
        model, entered, release = srv.model, threading.Event(), threading.Event()
        run_checked = model.run_checked

        def held_run_checked(*args):
            entered.set()
            assert release.wait(30), "the test never released the held call"
            return run_checked(*args)

        model.run_checked = held_run_checked
        stub = sampler_pb2_grpc.SamplerServiceStub(ch)
        held = threading.Thread(
            target=stub.Sample, args=(_request(reference_obs(64)),), kwargs={"timeout": 60}
        )
        held.start()
        assert entered.wait(30), "the first request never reached the model"
        with pytest.raises(grpc.RpcError) as info:
            stub.Sample(_request(reference_obs(1)), timeout=0.05)
        assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        release.set()
        held.join()
        deadline = time.monotonic() + 5
        while srv.stats()["batch_expired"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = srv.stats()
    assert stats["batch_expired"] == 1
    assert stats["batch_rows"] == 64  # only the first request's rows ran


@pytest.mark.parametrize("wait_ms", [0, 2])
def test_hot_reload_under_concurrent_requests(models, wait_ms):
    expected_policy = {"v1": OnnxPolicy(models["ddim"]), "v2": OnnxPolicy(models["ddim_v2"])}
    with (
        serve(models["ddim"], max_batch_wait_ms=wait_ms) as srv,
        grpc.insecure_channel(srv.address) as ch,
    ):
        stub = sampler_pb2_grpc.SamplerServiceStub(ch)
        stop = threading.Event()
        seen: list[tuple[str, np.ndarray, np.ndarray, int]] = []
        errors: list[BaseException] = []

        def caller(i: int) -> None:
            n = 0
            try:
                while not stop.is_set():
                    obs = reference_obs(1 + n % 3, seed=i * 7919 + n)
                    action, version = _sample(stub, obs, seed=n)
                    seen.append((version, obs, action, n))
                    n += 1
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for k in range(8):
            version = "v2" if k % 2 == 0 else "v1"
            srv.reload(models["ddim_v2"] if version == "v2" else models["ddim"])
            # The callers keep going until the new model has answered one of them.
            answered, deadline = len(seen), time.monotonic() + 30
            while time.monotonic() < deadline and not errors:
                if any(v == version for v, *_ in seen[answered:]):
                    break
                time.sleep(0.001)
        stop.set()
        for t in threads:
            t.join()
    assert not errors
    assert {version for version, *_ in seen} == {"v1", "v2"}
    for version, obs, action, seed in seen:
        np.testing.assert_array_equal(action, expected_policy[version].act(obs, seed=seed))


def test_a_bad_reload_keeps_the_old_model_and_pinned_versions_are_checked(models, tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"junk")
    with serve(models["ddim"]) as srv, grpc.insecure_channel(srv.address) as ch:
        stub = sampler_pb2_grpc.SamplerServiceStub(ch)
        with pytest.raises(ArtifactError):
            srv.reload(garbage)
        assert (srv.stats()["reloads"], srv.stats()["failed_reloads"]) == (0, 1)
        assert _sample(stub, reference_obs(1), 0, model_version="v1")[1] == "v1"
        srv.reload(models["ddim_v2"])
        with pytest.raises(grpc.RpcError) as info:
            _sample(stub, reference_obs(1), 0, model_version="v1")
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert _sample(stub, reference_obs(1), 0, model_version="v2")[1] == "v2"


def test_watching_the_model_file_reloads_it(models, tmp_path):
    path = tmp_path / "serving.onnx"
    shutil.copy(models["ddim"], path)

    def version(stub):
        return stub.GetModelInfo(sampler_pb2.GetModelInfoRequest(), timeout=5).model_version

    def wait_for(predicate):
        deadline = time.monotonic() + 5
        while not predicate() and time.monotonic() < deadline:
            time.sleep(0.02)
        return predicate()

    with serve(path, watch_interval_s=0.02) as srv, grpc.insecure_channel(srv.address) as ch:
        stub = sampler_pb2_grpc.SamplerServiceStub(ch)
        assert version(stub) == "v1"
        staged = tmp_path / ".staged.onnx"
        shutil.copy(models["ddim_v2"], staged)
        os.replace(staged, path)  # how export_onnx writes: atomically
        assert wait_for(lambda: version(stub) == "v2")
        staged.write_bytes(b"a broken model")
        os.replace(staged, path)
        assert wait_for(lambda: srv.stats()["failed_reloads"] == 1)
        assert version(stub) == "v2"  # the broken file was refused; still serving
        assert srv.stats()["reloads"] == 1


def test_a_taken_port_is_an_error(server, models):
    with pytest.raises(OSError, match=r"cannot listen on 127\.0\.0\.1"):
        serve(models["ddim"], port=server.port)
