"""The v1 ``SamplerService`` over gRPC, usable on its own (tests) or inside the Ray actor.

Besides the sampler it serves standard gRPC health checking and server reflection.
Requests are validated against the model they will run on; bad ones are answered with a
status and a message a user can act on, and the server keeps serving:

- INVALID_ARGUMENT: wrong shape or dims, NaN/Inf, empty batch, malformed tensor;
- RESOURCE_EXHAUSTED: more rows than ``max_batch_size`` (or a message over the size limit);
- FAILED_PRECONDITION: the request pins a ``model_version`` other than the loaded one;
- DEADLINE_EXCEEDED: the deadline passed while the request waited; it was not run.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from diffpol.contracts import ContractError, numpy_to_tensor, tensor_to_numpy
from diffpol.sampler import __version__ as SERVER_VERSION
from diffpol.sampler.batching import DeadlineExpired, Job, MicroBatcher
from diffpol.sampler.errors import SamplerInputError
from diffpol.sampler.runtime import OnnxPolicy
from diffpol.v1 import sampler_pb2, sampler_pb2_grpc

log = logging.getLogger(__name__)

SERVICE_NAME = sampler_pb2.DESCRIPTOR.services_by_name["SamplerService"].full_name
HEALTH_SERVICE_NAME = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_MIN_MESSAGE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 0  # 0: pick a free port (see SamplerServer.port)
    # Rows per request, and per fused onnxruntime call when micro-batching.
    max_batch_size: int = 1024
    # How long the first request of a batch may wait for others; 0 turns batching off
    # (each request runs at once on its own handler thread: no queue hop).
    max_batch_wait_ms: float = 0.0
    # Handler threads. A SampleStream holds one for its lifetime (gRPC's sync server).
    max_workers: int = 32
    # None: room for a full batch of the loaded model, at least 4 MiB.
    max_message_bytes: int | None = None
    intra_op_threads: int = 1
    providers: tuple[str, ...] | None = None
    # Poll the model file and hot-reload it when it changes; None: no watching.
    watch_interval_s: float | None = None
    shutdown_grace_s: float = 5.0

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.port <= 65535:
            problems.append(f"port must be in 0..65535, got {self.port}")
        if self.max_batch_size < 1:
            problems.append(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if not self.max_batch_wait_ms >= 0:
            problems.append(f"max_batch_wait_ms must be >= 0, got {self.max_batch_wait_ms}")
        if self.max_workers < 1:
            problems.append(f"max_workers must be >= 1, got {self.max_workers}")
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
    """A gRPC server for one model file; ``start()`` binds, ``reload()`` swaps the model."""

    def __init__(self, model_path: str | Path, config: ServerConfig | None = None) -> None:
        self.config = config = config or ServerConfig()
        self._model_path = Path(model_path).resolve()
        self._model = self._load(self._model_path)
        self._reload_lock = threading.Lock()
        self._stopped = threading.Event()
        self._batcher = (
            MicroBatcher(config.max_batch_size, config.max_batch_wait_ms / 1000)
            if config.max_batch_wait_ms > 0
            else None
        )
        self._counts_lock = threading.Lock()
        self._counts = {"requests": 0, "errors": 0, "expired": 0, "reloads": 0}
        message_bytes = config.max_message_bytes or self._message_bytes_for(self._model)
        options = [
            ("grpc.max_receive_message_length", message_bytes),
            ("grpc.max_send_message_length", message_bytes),
            # A second server on a taken port must fail, not share the port silently.
            ("grpc.so_reuseport", 0),
        ]
        self._server = grpc.server(
            futures.ThreadPoolExecutor(config.max_workers, thread_name_prefix="sampler-rpc"),
            options=options,
        )
        sampler_pb2_grpc.add_SamplerServiceServicer_to_server(_Servicer(self), self._server)
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, HEALTH_SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        address = format_address(config.host, config.port)
        try:
            self.port = self._server.add_insecure_port(address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {address}: {exc} (port in use?)") from exc
        if self.port == 0:
            raise OSError(f"cannot listen on {address} (port in use?)")
        self.host = config.host
        self._watcher: threading.Thread | None = None
        self._started = False

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def address(self) -> str:
        return format_address(self.host, self.port)

    def start(self) -> SamplerServer:
        """Start serving (idempotent, so ``with serve(...) as server`` works too)."""
        if self._started:
            return self
        self._started = True
        self._server.start()
        for service in ("", SERVICE_NAME):
            self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        if self.config.watch_interval_s:
            self._watcher = threading.Thread(
                target=self._watch, name="sampler-model-watch", daemon=True
            )
            self._watcher.start()
        log.info("sampler serving %s at %s", self._model, self.address)
        return self

    def stop(self, grace_s: float | None = None) -> None:
        """Stop taking requests, let in-flight ones finish (up to ``grace_s``), shut down."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._health.enter_graceful_shutdown()
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        self._server.stop(grace).wait()
        if self._batcher is not None:
            self._batcher.close()

    def wait_for_termination(self, timeout_s: float | None = None) -> bool:
        return self._server.wait_for_termination(timeout_s)

    def __enter__(self) -> SamplerServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- model ---------------------------------------------------------------------------

    @property
    def model(self) -> OnnxPolicy:
        return self._model

    @property
    def model_path(self) -> Path:
        return self._model_path

    def _load(self, path: Path) -> OnnxPolicy:
        providers = list(self.config.providers) if self.config.providers else None
        return OnnxPolicy(
            path,
            providers=providers,
            intra_op_threads=self.config.intra_op_threads,
            max_batch_size=self.config.max_batch_size,
        )

    def reload(self, path: str | Path | None = None) -> OnnxPolicy:
        """Load ``path`` (default: the current file again) and serve it from now on.

        The new file is fully validated first; if it is not a valid artifact this raises
        and the old model keeps serving. Requests already admitted finish on the model
        they were validated against, so none fails because of the swap.
        """
        with self._reload_lock:
            target = Path(path).resolve() if path is not None else self._model_path
            model = self._load(target)
            previous = self._model
            self._model, self._model_path = model, target
            with self._counts_lock:
                self._counts["reloads"] += 1
        log.info(
            "sampler reloaded %s (model_version %r -> %r)",
            target,
            previous.model_version,
            model.model_version,
        )
        return model

    def _watch(self) -> None:
        last = _file_signature(self._model_path)
        while not self._stopped.wait(self.config.watch_interval_s):
            current = _file_signature(self._model_path)
            if current is None or current == last:
                continue
            last = current
            try:
                self.reload()
            except Exception as exc:  # keep serving the old model
                log.error(
                    "hot reload of %s failed, still serving the previous model: %s",
                    self._model_path,
                    exc,
                )

    def model_info(self) -> sampler_pb2.ModelInfo:
        m = self._model.metadata
        return sampler_pb2.ModelInfo(
            env_id=m.env_id,
            obs_dim=m.obs_dim,
            act_dim=m.act_dim,
            n_obs_steps=m.n_obs_steps,
            horizon=m.horizon,
            n_action_steps=m.n_action_steps,
            sampler=m.sampler,
            steps=m.steps,
            model_version=m.model_version,
            contract_version=m.contract_version,
            server_version=SERVER_VERSION,
            max_batch_size=self.config.max_batch_size,
            action_low=m.action_low,
            action_high=m.action_high,
        )

    def stats(self) -> dict[str, int]:
        """Counters since start (requests, errors, expired, reloads, batch_*) and the pid."""
        with self._counts_lock:
            counts = dict(self._counts, pid=os.getpid())
        if self._batcher is not None:
            counts |= {f"batch_{k}": v for k, v in self._batcher.stats.as_dict().items()}
        return counts

    def _message_bytes_for(self, model: OnnxPolicy) -> int:
        m = model.metadata
        floats = self.config.max_batch_size * max(
            m.n_obs_steps * m.obs_dim, m.n_action_steps * m.act_dim
        )
        return max(_MIN_MESSAGE_BYTES, 2 * 4 * floats + 64 * 1024)

    # -- sampling ------------------------------------------------------------------------

    def _count(self, key: str) -> None:
        with self._counts_lock:
            self._counts[key] += 1

    def handle(
        self, request: sampler_pb2.SampleRequest, context: grpc.ServicerContext
    ) -> sampler_pb2.SampleResponse:
        """Answer one request, or end the call with the status its problem maps to."""
        ticket = _Ticket()
        if self._batcher is not None:
            self._batcher.arrive()  # tells the batcher another request is on its way
        try:
            return self._sample(request, context, ticket)
        except DeadlineExpired:
            self._count("expired")
            context.abort(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "the deadline passed before the request could run; it was not run",
            )
        except SamplerInputError as exc:
            self._count("errors")
            context.abort(grpc.StatusCode[exc.code], str(exc))
        except Exception as exc:  # a failing model must not take the server down
            self._count("errors")
            log.exception("sampling failed")
            context.abort(grpc.StatusCode.INTERNAL, f"sampling failed: {exc}")
        finally:
            if self._batcher is not None and not ticket.submitted:
                self._batcher.depart()  # once queued, the batcher answers for the request
        raise AssertionError("unreachable: context.abort raises")

    def _sample(
        self, request: sampler_pb2.SampleRequest, context: grpc.ServicerContext, ticket: _Ticket
    ) -> sampler_pb2.SampleResponse:
        self._count("requests")
        model = self._model  # one snapshot: a concurrent reload cannot change it under us
        if request.model_version and request.model_version != model.model_version:
            raise SamplerInputError(
                f"this server has model_version {model.model_version!r} loaded, the request "
                f"expects {request.model_version!r}: check GetModelInfo and vet the new model, "
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
        action = self._execute(model, obs, noise, step_noise, context, ticket)
        return sampler_pb2.SampleResponse(
            action=numpy_to_tensor(action), model_version=model.model_version
        )

    def _execute(
        self,
        model: OnnxPolicy,
        obs: np.ndarray,
        noise: np.ndarray,
        step_noise: np.ndarray | None,
        context: grpc.ServicerContext,
        ticket: _Ticket,
    ) -> np.ndarray:
        remaining = context.time_remaining()
        if self._batcher is None:
            if (remaining is not None and remaining <= 0) or not context.is_active():
                raise DeadlineExpired()
            return model.run_checked(obs, noise, step_noise)
        deadline = None if remaining is None else time.monotonic() + remaining
        job = Job(model, obs, noise, step_noise, deadline, context.is_active)
        ticket.submitted = True
        return self._batcher.submit(job).result()


class _Ticket:
    __slots__ = ("submitted",)

    def __init__(self) -> None:
        self.submitted = False


class _Servicer(sampler_pb2_grpc.SamplerServiceServicer):
    def __init__(self, server: SamplerServer) -> None:
        self._server = server

    def Sample(self, request, context):
        return self._server.handle(request, context)

    def SampleStream(self, request_iterator, context):
        # One response per request, in order; a bad request ends the stream with its status.
        for request in request_iterator:
            yield self._server.handle(request, context)

    def GetModelInfo(self, request, context):
        return self._server.model_info()


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def serve(
    model_path: str | Path, host: str = "127.0.0.1", port: int = 0, **config: object
) -> SamplerServer:
    """Start a sampler server and return it (stop it with ``.stop()`` or a ``with`` block)."""
    return SamplerServer(model_path, ServerConfig(host=host, port=port, **config)).start()
