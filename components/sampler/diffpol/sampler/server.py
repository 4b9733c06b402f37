"""The v1 ``SamplerService`` over gRPC, usable on its own (tests) or inside the Ray actor.

One server holds one or more named models (the first is the default, answering requests
that name none), each hot-reloadable on its own. Besides the sampler it serves standard
gRPC health checking and server reflection, and optionally Prometheus metrics over HTTP
(``metrics.py``). Traffic is TLS (optionally mutual) when a certificate is configured;
plaintext is refused on any address but loopback unless ``insecure`` says the network is
trusted. Requests are validated against the model they will run on; bad ones are
answered with a status and a message a user can act on, and the server keeps serving:

- INVALID_ARGUMENT: wrong shape or dims, NaN/Inf, empty batch, malformed tensor;
- NOT_FOUND: the request names a model the server has not loaded;
- RESOURCE_EXHAUSTED: more rows than ``max_batch_size`` (or a message over the size limit);
- FAILED_PRECONDITION: the request pins a ``model_version`` other than the loaded one;
- DEADLINE_EXCEEDED: the deadline passed while the request waited; it was not run.

The sampler's methods are registered without grpcio's protobuf (de)serializers: handlers
get the request bytes and answer bytes. So bytes that are not a valid request get
INVALID_ARGUMENT from the handler (grpcio's own deserializer would answer INTERNAL), and
responses are written straight from the action array (``contracts.encode_tensor``), not
copied float by float into a protobuf message.

The server is ``grpc.aio`` on one event loop in a thread of its own: handlers are
coroutines, so a request costs no thread hand-off of its own, and micro-batching happens on
the loop (``batching.py``). With 64 concurrent clients this served more requests per
second than grpcio's thread-pool server did, with less CPU and about half the context
switches per request (README, "Speed"). The public methods (``start``, ``stop``,
``reload``, ...) are plain blocking calls, usable from any thread but the loop's.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from diffpol.contracts import ContractError, tensor_to_numpy
from diffpol.contracts.tensor import encode_bytes_field, encode_tensor
from diffpol.sampler import __version__ as SERVER_VERSION
from diffpol.sampler.batching import DeadlineExpired, MicroBatcher
from diffpol.sampler.errors import SamplerInputError
from diffpol.sampler.metrics import SamplerMetrics
from diffpol.sampler.runtime import OnnxPolicy
from diffpol.v1 import sampler_pb2

log = logging.getLogger(__name__)

SERVICE_NAME = sampler_pb2.DESCRIPTOR.services_by_name["SamplerService"].full_name
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_MIN_MESSAGE_BYTES = 4 * 1024 * 1024
M = TypeVar("M", sampler_pb2.SampleRequest, sampler_pb2.GetModelInfoRequest)
T = TypeVar("T")
DEFAULT_MODEL = "default"
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``): reachable from this
    machine only."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def model_paths(models: str | os.PathLike | Mapping[str, str | os.PathLike]) -> dict[str, Path]:
    """``{name: resolved path}`` from one path (named ``default``) or a mapping; checks the
    names (letters, digits, ``._-``), not the files."""
    if isinstance(models, (str, os.PathLike)):
        models = {DEFAULT_MODEL: models}
    if not models:
        raise ValueError("no model given: pass a path or a {name: path} mapping")
    bad = [name for name in models if not _MODEL_NAME.fullmatch(name)]
    if bad:
        raise ValueError(
            f"model names {bad} are not valid: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return {name: Path(path).resolve() for name, path in models.items()}


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port (see SamplerServer.port)
    # Rows per request, and per fused onnxruntime call when micro-batching.
    max_batch_size: int = 1024
    # How long a batch may wait for more requests; 0 turns batching off (each request
    # runs at once on the event loop: no queue, no thread hop, one request at a time).
    max_batch_wait_ms: float = 0.0
    # None: room for a full batch of the loaded model, at least 4 MiB.
    max_message_bytes: int | None = None
    intra_op_threads: int = 1
    providers: tuple[str, ...] | None = None
    # Poll the model files and hot-reload one when it changes; None: no watching.
    watch_interval_s: float | None = None
    shutdown_grace_s: float = 5.0
    # TLS: PEM certificate chain and private key of the server; with tls_client_ca, clients
    # must present a certificate signed by that CA (mutual TLS). Paths on the serving node.
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    # Allow plaintext on an address other than loopback (a network the operator trusts).
    insecure: bool = False
    # Serve Prometheus metrics over HTTP on host:metrics_port (0: a free port); None: off.
    metrics_port: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if (self.tls_cert is None) != (self.tls_key is None):
            problems.append("tls_cert and tls_key go together: give both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            problems.append("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        if self.tls_cert is None and not self.insecure and not is_loopback(self.host):
            problems.append(
                f"refusing to serve plaintext gRPC on {self.host!r}, which is not a loopback "
                "address: observations and actions would cross the network unencrypted and "
                "any host that reaches the port could drive the policy. Give a certificate "
                "(tls_cert/tls_key, --tls-cert/--tls-key), or set insecure (--insecure) if "
                "the network is trusted"
            )
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            problems.append(f"metrics_port must be in 0..65535, got {self.metrics_port}")
        if not 0 <= self.port <= 65535:
            problems.append(f"port must be in 0..65535, got {self.port}")
        if self.max_batch_size < 1:
            problems.append(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if not self.max_batch_wait_ms >= 0:
            problems.append(f"max_batch_wait_ms must be >= 0, got {self.max_batch_wait_ms}")
        if self.max_message_bytes is not None and self.max_message_bytes < 1024:
            problems.append(f"max_message_bytes must be >= 1024, got {self.max_message_bytes}")
        if self.intra_op_threads < 1:
            problems.append(f"intra_op_threads must be >= 1, got {self.intra_op_threads}")
        if self.watch_interval_s is not None and not self.watch_interval_s > 0:
            problems.append(f"watch_interval_s must be > 0, got {self.watch_interval_s}")
        if not self.shutdown_grace_s >= 0:
            problems.append(f"shutdown_grace_s must be >= 0, got {self.shutdown_grace_s}")
        if problems:
            raise ValueError("invalid ServerConfig: " + "; ".join(problems))


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class SamplerServer:
    """A gRPC server for one or more model files (``{name: path}``; a single path is
    served as ``default``); ``start()`` binds, ``reload()`` swaps a model."""

    def __init__(
        self,
        models: str | os.PathLike | Mapping[str, str | os.PathLike],
        config: ServerConfig | None = None,
    ) -> None:
        self.config = config = config or ServerConfig()
        paths = model_paths(models)
        self._names = tuple(paths)
        self._default = self._names[0]
        self._metrics = SamplerMetrics()
        # Replaced as a whole on reload, so the loop reads a consistent snapshot without a lock.
        self._models = {name: self._load(name, path) for name, path in paths.items()}
        self._metrics.set_models((n, m.model.model_version) for n, m in self._models.items())
        self._reload_lock = threading.Lock()
        self._stopped = threading.Event()
        self._terminated = threading.Event()
        # Written by the loop thread, except the reload counts (under _reload_lock): no lock.
        self._counts = {"requests": 0, "errors": 0, "expired": 0, "reloads": 0, "failed_reloads": 0}
        self._batcher: MicroBatcher | None = None
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(
            target=self._loop.run_forever, name="sampler-loop", daemon=True
        )
        self._loop_thread.start()
        self.host = config.host
        try:
            self.port = self._on_loop(self._build())
        except BaseException:
            self._close_loop()
            raise
        self._watcher: threading.Thread | None = None
        self._started = False

    async def _build(self) -> int:
        """Create the grpc.aio server on the loop (it binds to the running loop); its port."""
        config = self.config
        if config.max_batch_wait_ms > 0:
            self._batcher = MicroBatcher(
                config.max_batch_size,
                config.max_batch_wait_ms / 1000,
                on_call=self._metrics.observe_batch,
            )
        message_bytes = config.max_message_bytes or max(
            self._message_bytes_for(loaded.model) for loaded in self._models.values()
        )
        options = [
            ("grpc.max_receive_message_length", message_bytes),
            ("grpc.max_send_message_length", message_bytes),
            # A second server on a taken port must fail, not share the port silently.
            ("grpc.so_reuseport", 0),
        ]
        self._server = grpc.aio.server(options=options)
        handlers = {
            # No request_deserializer / response_serializer: the handlers take and return bytes.
            "Sample": grpc.unary_unary_rpc_method_handler(self.handle),
            "SampleStream": grpc.stream_stream_rpc_method_handler(self._sample_stream),
            "GetModelInfo": grpc.unary_unary_rpc_method_handler(self._get_model_info),
        }
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),)
        )
        # What the generated add_..._to_server does too: grpcio's faster path for known methods.
        self._server.add_registered_method_handlers(SERVICE_NAME, handlers)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        address = format_address(config.host, config.port)
        credentials = _server_credentials(config)
        try:
            if credentials is None:
                return self._server.add_insecure_port(address)
            return self._server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {address}: {exc} (port in use?)") from exc

    def _on_loop(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the server's loop and wait for its result (not from the loop)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _close_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(timeout=10)
        self._loop.close()

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    @property
    def tls(self) -> bool:
        return self.config.tls_cert is not None

    @property
    def metrics_port(self) -> int | None:
        """Where ``/metrics`` is served once started (None: metrics are not served)."""
        return self._metrics.port

    def start(self) -> SamplerServer:
        """Start serving (idempotent, so ``with serve(...) as server`` works too)."""
        if self._started:
            return self
        self._started = True
        if self.config.metrics_port is not None:
            self._metrics.start_http(self.config.host, self.config.metrics_port)
        self._on_loop(self._start())
        if self.config.watch_interval_s:
            self._watcher = threading.Thread(
                target=self._watch, name="sampler-model-watch", daemon=True
            )
            self._watcher.start()
        log.info(
            "sampler serving %s at %s (%s)",
            ", ".join(f"{n}={m.model}" for n, m in self._models.items()),
            self.address,
            "TLS" if self.tls else "plaintext",
        )
        return self

    async def _start(self) -> None:
        await self._server.start()
        for service in ("", SERVICE_NAME):
            await self._health.set(service, health_pb2.HealthCheckResponse.SERVING)

    def stop(self, grace_s: float | None = None) -> None:
        """Stop taking requests, let in-flight ones finish (up to ``grace_s``), shut down."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        self._on_loop(self._stop(grace))
        self._close_loop()
        if self._batcher is not None:
            self._batcher.close()
        self._metrics.stop_http()
        self._terminated.set()

    async def _stop(self, grace_s: float) -> None:
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace_s)

    def wait_for_termination(self, timeout_s: float | None = None) -> bool:
        """Block until the server has stopped; True if ``timeout_s`` passed first."""
        return not self._terminated.wait(timeout_s)

    def __enter__(self) -> SamplerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- models --------------------------------------------------------------------------

    @property
    def model_names(self) -> tuple[str, ...]:
        """The names of the loaded models, the default first."""
        return self._names

    @property
    def models(self) -> dict[str, OnnxPolicy]:
        return {name: loaded.model for name, loaded in self._models.items()}

    @property
    def model(self) -> OnnxPolicy:
        """The default model."""
        return self._models[self._default].model

    @property
    def model_path(self) -> Path:
        """The default model's file."""
        return self._models[self._default].path

    def _loaded(self, name: str) -> _Loaded:
        loaded = self._models.get(name or self._default)
        if loaded is None:
            raise SamplerInputError(
                f"this server has no model named {name!r}; it serves {list(self._names)} "
                f"(an empty name means the default, {self._default!r})",
                code="NOT_FOUND",
            )
        return loaded

    def _load(self, name: str, path: Path) -> _Loaded:
        providers = list(self.config.providers) if self.config.providers else None
        model = OnnxPolicy(
            path,
            providers=providers,
            intra_op_threads=self.config.intra_op_threads,
            max_batch_size=self.config.max_batch_size,
        )
        info = self._model_info(name, model).SerializeToString()
        return _Loaded(name, path, model, encode_bytes_field(2, model.model_version.encode()), info)

    def reload(self, path: str | Path | None = None, model: str = "") -> OnnxPolicy:
        """Load ``path`` (default: the model's current file again) as the model named
        ``model`` (default: the default model) and serve it from now on.

        The new file is fully validated first; if it is not a valid artifact this raises
        and the old model keeps serving. Requests already admitted finish on the model
        they were validated against, so none fails because of the swap.
        """
        with self._reload_lock:
            try:
                current = self._loaded(model)
            except SamplerInputError as exc:
                raise KeyError(str(exc)) from None
            name = current.name
            target = Path(path).resolve() if path is not None else current.path
            try:
                loaded = self._load(name, target)
            except Exception:
                self._counts["failed_reloads"] += 1
                self._metrics.reloaded(name, ok=False)
                raise
            self._models = {**self._models, name: loaded}
            self._counts["reloads"] += 1
            self._metrics.reloaded(name, ok=True)
            self._metrics.set_models((n, m.model.model_version) for n, m in self._models.items())
        log.info(
            "sampler reloaded model %r from %s (model_version %r -> %r)",
            name,
            target,
            current.model.model_version,
            loaded.model.model_version,
        )
        return loaded.model

    def _watch(self) -> None:
        last = {name: _file_signature(m.path) for name, m in self._models.items()}
        while not self._stopped.wait(self.config.watch_interval_s):
            for name, loaded in self._models.items():
                current = _file_signature(loaded.path)
                if current is None or current == last[name]:
                    continue
                last[name] = current
                try:
                    self.reload(model=name)
                except Exception as exc:  # keep serving the old model
                    log.error(
                        "hot reload of model %r from %s failed, still serving the previous one: %s",
                        name,
                        loaded.path,
                        exc,
                    )

    def model_info(self, model: str = "") -> sampler_pb2.ModelInfo:
        return sampler_pb2.ModelInfo.FromString(self._loaded(model).model_info)

    def _model_info(self, name: str, model: OnnxPolicy) -> sampler_pb2.ModelInfo:
        m = model.metadata
        return sampler_pb2.ModelInfo(
            env_id=m.env.env_id,
            obs_dim=m.env.obs_dim,
            act_dim=m.env.act_dim,
            n_obs_steps=m.window.n_obs_steps,
            horizon=m.window.horizon,
            n_action_steps=m.window.n_action_steps,
            sampler=m.sampler,
            steps=m.steps,
            model_version=m.model_version,
            contract_version=m.contract_version,
            server_version=SERVER_VERSION,
            max_batch_size=self.config.max_batch_size,
            action_low=m.env.action_low,
            action_high=m.env.action_high,
            model=name,
            models=self._names,
        )

    def stats(self) -> dict[str, int]:
        """Counters since start (requests, errors, expired, reloads, failed_reloads, batch_*)
        and the pid."""
        counts = dict(self._counts, pid=os.getpid())
        if self._batcher is not None:
            counts |= {f"batch_{k}": v for k, v in self._batcher.stats.as_dict().items()}
        return counts

    def _message_bytes_for(self, model: OnnxPolicy) -> int:
        m = model.metadata
        floats = self.config.max_batch_size * max(
            m.window.n_obs_steps * m.env.obs_dim, m.window.n_action_steps * m.env.act_dim
        )
        return max(_MIN_MESSAGE_BYTES, 2 * 4 * floats + 64 * 1024)

    # -- sampling ------------------------------------------------------------------------

    async def _sample_stream(
        self, payloads: AsyncIterator[bytes], context: grpc.aio.ServicerContext
    ):
        # One response per request, in order; a bad request ends the stream with its status.
        async for payload in payloads:
            yield await self._answer(payload, context, "SampleStream")

    async def _get_model_info(self, payload: bytes, context: grpc.aio.ServicerContext) -> bytes:
        start = time.perf_counter()
        try:
            request = _decode(sampler_pb2.GetModelInfoRequest, payload)
            answer = self._loaded(request.model).model_info
        except SamplerInputError as exc:
            self._metrics.observe("GetModelInfo", exc.code, time.perf_counter() - start)
            await context.abort(grpc.StatusCode[exc.code], str(exc))
        self._metrics.observe("GetModelInfo", "OK", time.perf_counter() - start)
        return answer

    async def handle(self, payload: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """Answer one serialized SampleRequest with a serialized SampleResponse, or end the
        call with the status its problem maps to."""
        return await self._answer(payload, context, "Sample")

    async def _answer(
        self, payload: bytes, context: grpc.aio.ServicerContext, method: str
    ) -> bytes:
        start = time.perf_counter()
        try:
            answer = await self._sample(payload, context)
        except asyncio.CancelledError:  # gRPC ended the call (deadline, client gone)
            self._counts["expired"] += 1
            self._metrics.observe(method, "CANCELLED", time.perf_counter() - start)
            raise
        except DeadlineExpired:
            self._counts["expired"] += 1
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            message = "the deadline passed before the request could run; it was not run"
        except SamplerInputError as exc:
            self._counts["errors"] += 1
            code, message = grpc.StatusCode[exc.code], str(exc)
        except Exception as exc:  # a failing model must not take the server down
            self._counts["errors"] += 1
            log.exception("sampling failed")
            code, message = grpc.StatusCode.INTERNAL, f"sampling failed: {exc}"
        else:
            self._metrics.observe(method, "OK", time.perf_counter() - start)
            return answer
        self._metrics.observe(method, code.name, time.perf_counter() - start)
        await context.abort(code, message)
        raise AssertionError("unreachable: context.abort raises")

    async def _sample(self, payload: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self._counts["requests"] += 1
        request = _decode(sampler_pb2.SampleRequest, payload)
        loaded = self._loaded(request.model)  # one snapshot: a reload cannot change it under us
        model = loaded.model
        if request.model_version and request.model_version != model.model_version:
            raise SamplerInputError(
                f"model {loaded.name!r} on this server has model_version "
                f"{model.model_version!r} loaded, the request expects "
                f"{request.model_version!r}: check GetModelInfo and vet the new model, "
                "or send an empty model_version to accept whatever is loaded",
                code="FAILED_PRECONDITION",
            )
        try:
            obs = tensor_to_numpy(request.obs, "obs")
        except ContractError as exc:
            raise SamplerInputError(str(exc)) from None
        obs = model.check_obs(obs)
        seed = request.seed if request.HasField("seed") else None
        noise, step_noise = model.draw_inputs(obs.shape[0], seed)
        remaining = context.time_remaining()
        if self._batcher is None:
            if remaining is not None and remaining <= 0:
                raise DeadlineExpired()
            action = model.run_checked(obs, noise, step_noise)
            self._metrics.observe_batch(obs.shape[0])
        else:
            deadline = None if remaining is None else self._loop.time() + remaining
            action = await self._batcher.run(model, obs, noise, step_noise, deadline)
        # SampleResponse: action = 1, model_version = 2 (field order as protobuf writes it).
        return encode_bytes_field(1, encode_tensor(action)) + loaded.version_field


@dataclass(frozen=True)
class _Loaded:
    """A served model and what every response derives from it, swapped as one on reload."""

    name: str
    path: Path
    model: OnnxPolicy
    version_field: bytes  # SampleResponse.model_version, serialized
    model_info: bytes  # GetModelInfo's answer, serialized


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise OSError(f"cannot read the {what} {path}: {exc.strerror or exc}") from None


def _server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS credentials from the config's PEM files (None: plaintext)."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    key = _read(config.tls_key, "TLS private key (tls_key)")
    cert = _read(config.tls_cert, "TLS certificate (tls_cert)")
    client_ca = None
    if config.tls_client_ca is not None:
        client_ca = _read(config.tls_client_ca, "client CA bundle (tls_client_ca)")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _decode(message_type: type[M], payload: bytes) -> M:
    try:
        return message_type.FromString(payload)
    except DecodeError as exc:
        name = message_type.DESCRIPTOR.full_name
        raise SamplerInputError(
            f"the request is not a valid serialized {name} ({exc}): send the message "
            "diffpol/v1/sampler.proto defines, serialized with protobuf"
        ) from None


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def serve(
    models: str | os.PathLike | Mapping[str, str | os.PathLike],
    host: str = "127.0.0.1",
    port: int = 0,
    **config: object,
) -> SamplerServer:
    """Start a sampler server for a model file (or ``{name: path}``) and return it (stop
    it with ``.stop()`` or a ``with`` block)."""
    return SamplerServer(models, ServerConfig(host=host, port=port, **config)).start()
