"""Client of the v1 SamplerService; also a ``diffpol.contracts.Policy`` backed by a server.

Calls that fail with UNAVAILABLE (server restarting, not up yet) or DEADLINE_EXCEEDED are
retried with exponential backoff; each attempt has its own deadline of ``timeout_s``.
Input problems raise ``SamplerInputError`` with the same codes an in-process
``OnnxPolicy`` uses, so callers handle local and remote policies alike.

Given several addresses (the replicas of one service), the client's one channel spreads
calls over them with gRPC's ``round_robin`` policy: the pick is made in process, per call,
among the connections that are up, so a dead replica costs a retry, not a failure, and a
single address costs nothing extra. A retried request is the same bytes, seed included,
so it gets the same answer from any replica.
"""

from __future__ import annotations

import ipaddress
import json
import os
import queue
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from diffpol.contracts import PolicySpec, tensor_to_numpy
from diffpol.contracts.tensor import encode_bytes_field, encode_tensor, encode_varint_field
from diffpol.sampler.errors import SamplerInputError, SamplerRpcError
from diffpol.v1 import sampler_pb2, sampler_pb2_grpc

SERVICE_NAME = sampler_pb2.DESCRIPTOR.services_by_name["SamplerService"].full_name
RETRYABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
_INPUT_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT: "INVALID_ARGUMENT",
    grpc.StatusCode.NOT_FOUND: "NOT_FOUND",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "RESOURCE_EXHAUSTED",
    grpc.StatusCode.FAILED_PRECONDITION: "FAILED_PRECONDITION",
}
_DEFAULT_MESSAGE_BYTES = 64 * 1024 * 1024
_SAMPLE_METHOD = f"/{SERVICE_NAME}/Sample"
_SAMPLE_STREAM_METHOD = f"/{SERVICE_NAME}/SampleStream"
T = TypeVar("T")


def parse_address(address: str) -> str:
    """'host:port' or 'grpc://host:port' (IPv6 as '[::1]:port') -> a gRPC target."""
    target = address.strip()
    if target.startswith("grpc://"):
        target = target[len("grpc://") :]
    elif "://" in target:
        raise ValueError(
            f"unsupported address scheme in {address!r}: use host:port or grpc://host:port"
        )
    target = target.rstrip("/")
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"address {address!r} is not host:port (or grpc://host:port)")
    return target


def split_addresses(addresses: str | Sequence[str]) -> list[str]:
    """Addresses as a list of gRPC targets: a sequence, or one string of comma-separated
    ``host:port`` (``grpc://host:a,host:b`` too)."""
    if isinstance(addresses, str):
        text = addresses.strip()
        if text.startswith("grpc://"):
            text = text[len("grpc://") :]
        addresses = [part for part in text.split(",") if part.strip()]
    targets = [parse_address(a) for a in addresses]
    if not targets:
        raise ValueError("no address given: use host:port (or several, comma-separated)")
    return targets


def balanced_target(addresses: str | Sequence[str]) -> str:
    """One gRPC target naming every replica (``ipv4:a:p,b:q`` or ``ipv6:...``), for any
    gRPC client; with the ``round_robin`` policy (see ``ROUND_ROBIN``) calls spread over
    them. Host names are resolved here, once."""
    ips = []
    for target in split_addresses(addresses):
        host, _, port = target.rpartition(":")
        host = host.strip("[]")
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            sockaddr = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0][4]
            ip = ipaddress.ip_address(sockaddr[0])
        ips.append((ip, int(port)))
    versions = {ip.version for ip, _ in ips}
    if len(versions) > 1:
        raise ValueError(f"mix of IPv4 and IPv6 replicas in {addresses!r}: use one family")
    if versions == {4}:
        return "ipv4:" + ",".join(f"{ip}:{port}" for ip, port in ips)
    return "ipv6:" + ",".join(f"[{ip}]:{port}" for ip, port in ips)


# The channel option that makes a channel over several addresses spread calls over them.
ROUND_ROBIN = ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]}))


def _read_pem(path: str | os.PathLike | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise OSError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def _as_error(exc: grpc.RpcError, what: str) -> Exception:
    code = exc.code()
    details = exc.details() or ""
    if code in _INPUT_CODES:
        return SamplerInputError(details, code=_INPUT_CODES[code])  # type: ignore[arg-type]
    return SamplerRpcError(f"{what} failed with {code.name}: {details}", code.name)


class SamplerClient:
    """Blocking client for a sampler server or several replicas of one (``address``: one
    ``host:port``, or several as a list or comma-separated); thread-safe (one channel).

    ``model`` names the server-side model to use (empty: the server's default).
    TLS: ``tls_ca`` (PEM bundle that signed the server's certificate; ``tls=True`` alone
    uses the system's roots), ``tls_cert``/``tls_key`` for servers that verify clients
    (mutual TLS), ``tls_server_name`` to check the certificate against a name other than
    the (first) address's host.
    """

    def __init__(
        self,
        address: str | Sequence[str],
        timeout_s: float = 2.0,
        retries: int = 3,
        *,
        backoff_s: float = 0.05,
        max_backoff_s: float = 1.0,
        model_version: str = "",
        model: str = "",
        max_message_bytes: int = _DEFAULT_MESSAGE_BYTES,
        tls: bool = False,
        tls_ca: str | os.PathLike | None = None,
        tls_cert: str | os.PathLike | None = None,
        tls_key: str | os.PathLike | None = None,
        tls_server_name: str | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        self.addresses = split_addresses(address)
        self.address = ",".join(self.addresses)
        self.timeout_s, self.retries = timeout_s, retries
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.model_version, self.model = model_version, model
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            # Reconnect quickly after a restart (gRPC's default backoff grows to 120 s).
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", int(max(max_backoff_s, 0.1) * 1000)),
            # Our own retries (with per-attempt deadlines) replace gRPC's built-in ones.
            ("grpc.enable_retries", 0),
        ]
        target = self.addresses[0]
        if len(self.addresses) > 1:
            target = balanced_target(self.addresses)
            options.append(ROUND_ROBIN)
        self.tls = tls or tls_ca is not None or tls_cert is not None
        if self.tls:
            # One name to check every replica's certificate against.
            server_name = tls_server_name or self.addresses[0].rpartition(":")[0].strip("[]")
            options.append(("grpc.ssl_target_name_override", server_name))
            credentials = grpc.ssl_channel_credentials(
                root_certificates=_read_pem(tls_ca, "CA bundle (tls_ca)"),
                private_key=_read_pem(tls_key, "client private key (tls_key)"),
                certificate_chain=_read_pem(tls_cert, "client certificate (tls_cert)"),
            )
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        self._stub = sampler_pb2_grpc.SamplerServiceStub(self._channel)
        # Sample requests are written as bytes straight from the array (see _request).
        self._sample = self._channel.unary_unary(
            _SAMPLE_METHOD,
            request_serializer=None,
            response_deserializer=sampler_pb2.SampleResponse.FromString,
        )
        self._sample_stream = self._channel.stream_stream(
            _SAMPLE_STREAM_METHOD,
            request_serializer=None,
            response_deserializer=sampler_pb2.SampleResponse.FromString,
        )
        # SampleRequest's model_version = 3 and model = 4, the same in every request.
        self._tail = encode_bytes_field(3, model_version.encode()) + encode_bytes_field(
            4, model.encode()
        )
        self._health = health_pb2_grpc.HealthStub(self._channel)
        self._spec: PolicySpec | None = None

    # -- plumbing ------------------------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        delay = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        return delay * (0.5 + random.random() / 2)  # jitter: restarts are not stampedes

    def _call(
        self, what: str, fn: Callable[..., T], request: Any, timeout_s: float | None = None
    ) -> T:
        timeout = timeout_s or self.timeout_s
        attempt = 0
        while True:
            try:
                return fn(request, timeout=timeout)
            except grpc.RpcError as exc:
                if exc.code() not in RETRYABLE or attempt >= self.retries:
                    raise _as_error(exc, what) from None
            time.sleep(self._backoff(attempt))
            attempt += 1

    def _request(self, obs: np.ndarray, seed: int | None) -> bytes:
        """A serialized SampleRequest (obs = 1, seed = 2, model_version = 3, model = 4), written
        straight from the array instead of copied float by float into a message."""
        obs = np.asarray(obs)
        if obs.dtype.kind != "f":
            raise SamplerInputError(
                f"obs must be a floating-point array, got dtype {obs.dtype} "
                "(convert with .astype(np.float32))"
            )
        request = encode_bytes_field(1, encode_tensor(obs))
        if seed is not None:
            if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
                raise SamplerInputError(f"seed must be an integer in [0, 2**64), got {seed!r}")
            request += encode_varint_field(2, int(seed))
        return request + self._tail

    # -- API -----------------------------------------------------------------------------

    def sample(
        self, obs: np.ndarray, seed: int | None = None, timeout_s: float | None = None
    ) -> np.ndarray:
        """Actions [B, n_action_steps, act_dim] for obs [B, n_obs_steps, obs_dim]."""
        response = self._call("Sample", self._sample, self._request(obs, seed), timeout_s)
        return tensor_to_numpy(response.action, "action")

    def model_info(self, timeout_s: float | None = None) -> sampler_pb2.ModelInfo:
        request = sampler_pb2.GetModelInfoRequest(model=self.model)
        return self._call("GetModelInfo", self._stub.GetModelInfo, request, timeout_s)

    def health(self, service: str = SERVICE_NAME, timeout_s: float | None = None) -> bool:
        """True if the server reports SERVING for ``service`` (no retries: a probe)."""
        try:
            response = self._health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout_s or self.timeout_s
            )
        except grpc.RpcError:
            return False
        return response.status == health_pb2.HealthCheckResponse.SERVING

    def stream(self, timeout_s: float | None = None) -> SampleStream:
        """A bidirectional stream for control loops: ``stream.sample(obs, seed)`` per step."""
        return SampleStream(self, timeout_s or self.timeout_s)

    # -- Policy protocol -----------------------------------------------------------------

    @property
    def spec(self) -> PolicySpec:
        if self._spec is None:
            info = self.model_info()
            self._spec = PolicySpec(
                info.obs_dim, info.act_dim, info.n_obs_steps, info.n_action_steps
            )
        return self._spec

    def act(self, obs: np.ndarray, seed: int | None = None) -> np.ndarray:
        return self.sample(obs, seed)

    # -- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> SamplerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SamplerClient({self.address!r})"


_END = object()


class SampleStream:
    """One request in flight at a time over a SampleStream call, reopened on failure.

    Each ``sample`` waits at most ``timeout_s`` for its answer: a watchdog cancels a stuck
    call, and UNAVAILABLE / timed-out calls are retried on a fresh stream like unary ones.
    """

    def __init__(self, client: SamplerClient, timeout_s: float) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._waiting_since: float | None = None
        self._timed_out = False
        self._closed = threading.Event()
        self._open()
        self._watchdog = threading.Thread(
            target=self._watch, name="sample-stream-watchdog", daemon=True
        )
        self._watchdog.start()

    def _open(self) -> None:
        previous = getattr(self, "_call", None)
        if previous is not None:  # end the old call and its request iterator
            self._requests.put(_END)
            previous.cancel()
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._call = self._client._sample_stream(iter(self._requests.get, _END))

    def _watch(self) -> None:
        while not self._closed.wait(self._timeout_s / 4):
            since = self._waiting_since
            if since is not None and time.monotonic() - since > self._timeout_s:
                self._timed_out = True
                self._call.cancel()

    def sample(self, obs: np.ndarray, seed: int | None = None) -> np.ndarray:
        if self._closed.is_set():
            raise RuntimeError("this SampleStream is closed")
        request = self._client._request(obs, seed)
        with self._lock:
            attempt = 0
            while True:
                self._timed_out = False
                self._requests.put(request)
                self._waiting_since = time.monotonic()
                try:
                    response = next(self._call)
                    return tensor_to_numpy(response.action, "action")
                except grpc.RpcError as exc:
                    code = grpc.StatusCode.DEADLINE_EXCEEDED if self._timed_out else exc.code()
                    if code not in RETRYABLE or attempt >= self._client.retries:
                        self._open()  # the failed call is over; leave a usable stream behind
                        if self._timed_out:
                            raise SamplerRpcError(
                                f"SampleStream got no answer within {self._timeout_s} s",
                                "DEADLINE_EXCEEDED",
                            ) from None
                        raise _as_error(exc, "SampleStream") from None
                except StopIteration:  # the server ended the stream: reopen and resend
                    if attempt >= self._client.retries:
                        self._open()
                        raise SamplerRpcError(
                            "the server closed the stream", "UNAVAILABLE"
                        ) from None
                finally:
                    self._waiting_since = None
                time.sleep(self._client._backoff(attempt))
                attempt += 1
                self._open()

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._requests.put(_END)
        self._call.cancel()
        self._watchdog.join(timeout=5)

    def __enter__(self) -> SampleStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
