"""Serving a fleet, against real servers on 127.0.0.1: several models per server, TLS and
mutual TLS, Prometheus metrics, and one client balancing over several servers."""

from __future__ import annotations

import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from diffpol.sampler import OnnxPolicy, SamplerClient, SamplerInputError, serve
from diffpol.sampler.client import balanced_target
from diffpol.sampler.errors import SamplerRpcError
from diffpol.sampler.server import ServerConfig
from diffpol.sampler.testing import reference_obs
from diffpol.v1 import sampler_pb2, sampler_pb2_grpc

# -- several models ----------------------------------------------------------------------


def test_two_models_answer_with_their_own_versions_and_reload_alone(models):
    expected = {"v1": OnnxPolicy(models["ddim"]), "v2": OnnxPolicy(models["ddim_v2"])}
    obs = reference_obs(2, 5)
    with serve({"first": models["ddim"], "second": models["ddim_v2"]}) as srv:
        with (
            SamplerClient(srv.address, timeout_s=5) as default,
            SamplerClient(srv.address, timeout_s=5, model="first") as first,
            SamplerClient(srv.address, timeout_s=5, model="second") as second,
        ):
            for client, version in ((default, "v1"), (first, "v1"), (second, "v2")):
                np.testing.assert_array_equal(
                    client.sample(obs, seed=4), expected[version].act(obs, seed=4)
                )
                info = client.model_info()
                assert info.model_version == version
                assert list(info.models) == ["first", "second"]
            assert default.model_info().model == "first"
            assert second.model_info().model == "second"
            # The raw response carries the version of the model that answered.
            with grpc.insecure_channel(srv.address) as channel:
                stub = sampler_pb2_grpc.SamplerServiceStub(channel)
                request = sampler_pb2.SampleRequest(seed=1, model="second")
                request.obs.shape[:] = obs.shape
                request.obs.values[:] = obs.ravel()
                assert stub.Sample(request, timeout=5).model_version == "v2"

            # Hot reload of one model leaves the other as it was.
            srv.reload(models["ddim"], model="second")
            assert second.model_info().model_version == "v1"
            assert first.model_info().model_version == "v1"
            with pytest.raises(KeyError, match="no model named 'third'"):
                srv.reload(models["ddim"], model="third")

        with SamplerClient(srv.address, timeout_s=5, model="third") as unknown:
            with pytest.raises(SamplerInputError, match="no model named 'third'") as info:
                unknown.sample(obs, seed=1)
            assert info.value.code == "NOT_FOUND"
            with pytest.raises(SamplerInputError, match="first"):
                unknown.model_info()
        # A pinned version is checked against the named model.
        with SamplerClient(srv.address, model="first", model_version="v2") as pinned:
            with pytest.raises(SamplerInputError, match="model 'first'") as info:
                pinned.sample(obs)
            assert info.value.code == "FAILED_PRECONDITION"


def test_bad_model_names_are_refused(models):
    with pytest.raises(ValueError, match="not valid"):
        serve({"a b": models["ddim"]})
    with pytest.raises(ValueError, match="no model given"):
        serve({})


# -- TLS ---------------------------------------------------------------------------------


def _tls_config(tls_files, mutual: bool = False) -> dict:
    config = {"tls_cert": tls_files["server_crt"], "tls_key": tls_files["server_key"]}
    if mutual:
        config["tls_client_ca"] = tls_files["ca_crt"]
    return config


def test_a_tls_server_accepts_tls_clients_and_rejects_plaintext(models, policy, tls_files):
    obs = reference_obs(1)
    with serve(models["ddim"], **_tls_config(tls_files)) as srv:
        assert srv.tls
        with SamplerClient(srv.address, timeout_s=5, tls_ca=tls_files["ca_crt"]) as client:
            np.testing.assert_array_equal(client.sample(obs, seed=2), policy.act(obs, seed=2))
            assert client.health()
        # The same name through "localhost" and through a balanced target of one.
        port = srv.port
        with SamplerClient(f"localhost:{port}", timeout_s=5, tls_ca=tls_files["ca_crt"]) as c:
            assert c.model_info().model_version == "v1"
        with SamplerClient(
            [srv.address, srv.address], timeout_s=5, tls_ca=tls_files["ca_crt"]
        ) as c:
            np.testing.assert_array_equal(c.sample(obs, seed=2), policy.act(obs, seed=2))
        with SamplerClient(srv.address, timeout_s=1, retries=0) as plaintext:
            with pytest.raises(SamplerRpcError) as info:
                plaintext.sample(obs)
            assert info.value.code == "UNAVAILABLE"
            assert not plaintext.health()
        # A CA that did not sign the server's certificate is not trusted.
        with (
            SamplerClient(
                srv.address, timeout_s=1, retries=0, tls_ca=tls_files["other_ca_crt"]
            ) as untrusting,
            pytest.raises(SamplerRpcError),
        ):
            untrusting.sample(obs)


def test_mutual_tls_rejects_clients_without_a_certificate_of_its_ca(models, policy, tls_files):
    obs = reference_obs(1)
    ca = tls_files["ca_crt"]
    with serve(models["ddim"], **_tls_config(tls_files, mutual=True)) as srv:
        with SamplerClient(
            srv.address,
            timeout_s=5,
            tls_ca=ca,
            tls_cert=tls_files["client_crt"],
            tls_key=tls_files["client_key"],
        ) as client:
            np.testing.assert_array_equal(client.sample(obs, seed=3), policy.act(obs, seed=3))
        for cert in (None, "rogue_client"):
            extra = {} if cert is None else {"tls_cert": tls_files[f"{cert}_crt"]}
            extra |= {} if cert is None else {"tls_key": tls_files[f"{cert}_key"]}
            with SamplerClient(srv.address, timeout_s=1, retries=0, tls_ca=ca, **extra) as c:
                with pytest.raises(SamplerRpcError) as info:
                    c.sample(obs)
                assert info.value.code == "UNAVAILABLE", cert
        # The server is still serving after the refused handshakes.
        with SamplerClient(
            srv.address,
            timeout_s=5,
            tls_ca=ca,
            tls_cert=tls_files["client_crt"],
            tls_key=tls_files["client_key"],
        ) as client:
            assert client.health()


def test_plaintext_on_a_non_loopback_address_is_refused(tls_files):
    for host in ("0.0.0.0", "::", "192.0.2.1"):
        with pytest.raises(ValueError, match="refusing to serve plaintext gRPC") as info:
            ServerConfig(host=host)
        assert "--insecure" in str(info.value) and "--tls-cert" in str(info.value)
    # Allowed: loopback, TLS, or an explicit insecure.
    ServerConfig(host="::1")
    ServerConfig(host="localhost")
    ServerConfig(host="0.0.0.0", insecure=True)
    ServerConfig(host="0.0.0.0", **_tls_config(tls_files, mutual=True))
    with pytest.raises(ValueError, match="give both or neither"):
        ServerConfig(tls_cert=tls_files["server_crt"])
    with pytest.raises(ValueError, match="needs tls_cert"):
        ServerConfig(tls_client_ca=tls_files["ca_crt"])


def test_unreadable_tls_files_fail_with_their_path(models, tmp_path):
    missing = str(tmp_path / "missing.key")
    with pytest.raises(OSError, match=r"TLS private key .*missing\.key"):
        serve(models["ddim"], tls_cert=missing, tls_key=missing)


# -- metrics -----------------------------------------------------------------------------


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_scraped_counters_equal_the_calls_made(models):
    n = 23
    obs = reference_obs(1)
    with (
        serve({"a": models["ddim"], "b": models["ddim_v2"]}, metrics_port=0) as srv,
        SamplerClient(srv.address, timeout_s=5) as client,
    ):
        assert srv.metrics_port
        for i in range(n):
            client.sample(obs, seed=i)
        with pytest.raises(SamplerInputError):
            client.sample(np.full((1, 2, 3), np.nan, np.float32))
        client.model_info()
        with client.stream() as stream:
            for i in range(3):
                stream.sample(obs, seed=i)
        metrics = _scrape(srv.metrics_port)
        srv.reload(models["ddim_v2"], model="a")
        after_reload = _scrape(srv.metrics_port)

    def requests(method, code):
        key = ("diffpol_sampler_requests_total", (("code", code), ("method", method)))
        return metrics.get(key, 0)

    assert requests("Sample", "OK") == n
    assert requests("Sample", "INVALID_ARGUMENT") == 1
    assert requests("GetModelInfo", "OK") == 1
    assert requests("SampleStream", "OK") == 3
    assert metrics["diffpol_sampler_request_seconds_count", (("method", "Sample"),)] == n + 1
    # Batching is off: one onnxruntime call of one row per answered sample.
    assert metrics["diffpol_sampler_batch_rows_count", ()] == n + 3
    assert metrics["diffpol_sampler_batch_rows_bucket", (("le", "1.0"),)] == n + 3
    info = "diffpol_sampler_model_info"
    assert metrics[info, (("model", "a"), ("model_version", "v1"))] == 1
    assert metrics[info, (("model", "b"), ("model_version", "v2"))] == 1
    assert (info, (("model", "a"), ("model_version", "v1"))) not in after_reload
    assert after_reload[info, (("model", "a"), ("model_version", "v2"))] == 1
    reloads = ("diffpol_sampler_model_reloads_total", (("model", "a"), ("result", "ok")))
    assert after_reload[reloads] == 1


def test_fused_calls_are_counted_in_the_batch_histogram(models):
    with (
        serve(models["ddim"], metrics_port=0, max_batch_wait_ms=50) as srv,
        SamplerClient(srv.address, timeout_s=5) as client,
    ):
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda i: client.sample(reference_obs(1), seed=i), range(32)))
        metrics = _scrape(srv.metrics_port)
        stats = srv.stats()
    assert metrics["diffpol_sampler_batch_rows_count", ()] == stats["batch_calls"]
    assert metrics["diffpol_sampler_batch_rows_sum", ()] == stats["batch_rows"] == 32


# -- one client, several servers ---------------------------------------------------------


def test_the_client_balances_over_replicas_and_both_receive_calls(models, policy):
    obs = reference_obs(1)
    with serve(models["ddim"]) as one, serve(models["ddim"]) as two:
        addresses = [one.address, two.address]
        with SamplerClient(",".join(addresses), timeout_s=5) as client:
            assert client.addresses == addresses
            for seed in range(40):
                np.testing.assert_array_equal(
                    client.sample(obs, seed=seed), policy.act(obs, seed=seed)
                )
        counts = [one.stats()["requests"], two.stats()["requests"]]
        assert sum(counts) == 40 and min(counts) >= 10, counts

        # Any gRPC client: the balanced target with the round_robin policy.
        target = balanced_target(addresses)
        assert target == f"ipv4:{one.address},{two.address}"
        config = '{"loadBalancingConfig": [{"round_robin": {}}]}'
        with grpc.insecure_channel(target, options=[("grpc.service_config", config)]) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            request = health_pb2.HealthCheckRequest(service="")
            for _ in range(4):
                assert stub.Check(request, timeout=5).status == 1
        assert one.stats()["requests"] + two.stats()["requests"] == 40


def test_a_stopped_replica_costs_retries_not_answers(models, policy):
    """One of two servers stops between calls: the client's retries land on the other."""
    obs = reference_obs(1)
    one, two = serve(models["ddim"]), serve(models["ddim"])
    try:
        with SamplerClient([one.address, two.address], timeout_s=2, retries=5) as client:
            for seed in range(10):
                client.sample(obs, seed=seed)
            one.stop(0)
            for seed in range(20):
                np.testing.assert_array_equal(
                    client.sample(obs, seed=seed), policy.act(obs, seed=seed)
                )
    finally:
        one.stop(0)
        two.stop(0)


def test_address_lists():
    assert SamplerClient("grpc://127.0.0.1:1,127.0.0.1:2").addresses == [
        "127.0.0.1:1",
        "127.0.0.1:2",
    ]
    assert balanced_target(["[::1]:5", "[::1]:6"]) == "ipv6:[::1]:5,[::1]:6"
    assert balanced_target("localhost:7").endswith(":7")
    with pytest.raises(ValueError, match="one family"):
        balanced_target(["127.0.0.1:1", "[::1]:2"])
    with pytest.raises(ValueError, match="no address"):
        SamplerClient(",")
    with pytest.raises(ValueError, match="give both or neither"):
        SamplerClient("127.0.0.1:1", tls_cert="x")
