"""The sampler's Prometheus metrics: requests by method and status, latency, batch sizes,
loaded model versions, served over HTTP for scraping.

Each server has a registry of its own (several servers may share a process, e.g. in
tests), exported with ``prometheus_client``: Ray's metrics API would need Ray's metrics
agent, which the ``ray[data,train]`` install does not run, and a server works without Ray.
Metric children are bound once per label set, so a request costs two dictionary lookups
and two lock-protected additions.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Round trips on loopback are ~0.5 ms; batched calls under load tens of ms.
LATENCY_BUCKETS_S = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
BATCH_ROWS_BUCKETS = tuple(float(2**i) for i in range(11))  # 1 .. 1024 rows


class SamplerMetrics:
    """Counters of one server; ``start_http(host, port)`` serves them at ``/metrics``."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "diffpol_sampler_requests",
            "Sampler RPCs answered, by method and gRPC status (SampleStream: per message)",
            ("method", "code"),
            registry=registry,
        )
        self._latency = Histogram(
            "diffpol_sampler_request_seconds",
            "Time from a request's arrival at the handler to its answer, by method",
            ("method",),
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self._batch_rows = Histogram(
            "diffpol_sampler_batch_rows",
            "Rows per onnxruntime call (several requests when micro-batching fuses them)",
            buckets=BATCH_ROWS_BUCKETS,
            registry=registry,
        )
        self._model = Gauge(
            "diffpol_sampler_model_info",
            "1 for each loaded model and the model_version it serves",
            ("model", "model_version"),
            registry=registry,
        )
        self._reloads = Counter(
            "diffpol_sampler_model_reloads",
            "Hot reloads by model and result (ok, failed)",
            ("model", "result"),
            registry=registry,
        )
        self._children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._versions: dict[str, str] = {}
        self._lock = threading.Lock()
        self._http = None
        self.port: int | None = None

    def observe(self, method: str, code: str, seconds: float) -> None:
        children = self._children.get((method, code))
        if children is None:
            children = self._requests.labels(method, code), self._latency.labels(method)
            self._children[method, code] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_batch(self, rows: int) -> None:
        self._batch_rows.observe(rows)

    def set_models(self, versions: Iterable[tuple[str, str]]) -> None:
        """The loaded models (name, model_version); replaces the previous set."""
        with self._lock:
            new = dict(versions)
            for name, version in self._versions.items():
                if new.get(name) != version:
                    self._model.remove(name, version)
            for name, version in new.items():
                self._model.labels(name, version).set(1)
            self._versions = new

    def reloaded(self, model: str, ok: bool) -> None:
        self._reloads.labels(model, "ok" if ok else "failed").inc()

    def start_http(self, host: str, port: int) -> int:
        """Serve ``/metrics`` over HTTP on ``host:port`` (0: a free port); the port."""
        server, _ = start_http_server(port, addr=host.strip("[]"), registry=self.registry)
        self._http = server
        self.port = server.server_address[1]
        return self.port

    def stop_http(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
