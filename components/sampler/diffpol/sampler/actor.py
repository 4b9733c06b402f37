"""The sampler as a Ray actor: owns the onnxruntime session and serves gRPC from its process.

Ray restarts the actor when its process dies (``max_restarts``); the constructor runs
again with the same arguments, so the server comes back on the same address when the
port is fixed. ``start_sampler_actor`` fixes it for you: with port 0 it picks a free port
on this node first and pins the actor to this node, so clients can reconnect after a
restart without asking for a new address.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from pathlib import Path
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from diffpol.sampler.server import SamplerServer, ServerConfig

DEFAULT_MAX_RESTARTS = 5


class _SamplerActor:
    def __init__(self, model_path: str, config: ServerConfig) -> None:
        self._server = SamplerServer(model_path, config).start()

    def address(self) -> str:
        return self._server.address

    def reload(self, path: str | None = None) -> dict[str, Any]:
        """Hot-swap the model (see SamplerServer.reload); returns the new model's metadata."""
        return dataclasses.asdict(self._server.reload(path).metadata)

    def model_metadata(self) -> dict[str, Any]:
        return dataclasses.asdict(self._server.model.metadata)

    def stats(self) -> dict[str, int]:
        return self._server.stats()

    def stop(self, grace_s: float | None = None) -> None:
        """Graceful shutdown of the gRPC server (health turns NOT_SERVING first)."""
        self._server.stop(grace_s)


# Method calls are idempotent, so Ray may retry them across a restart.
SamplerActor = ray.remote(max_restarts=DEFAULT_MAX_RESTARTS, max_task_retries=3)(_SamplerActor)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host.strip("[]"), 0))
        return sock.getsockname()[1]


def start_sampler_actor(
    model_path: str | Path,
    config: ServerConfig | None = None,
    *,
    name: str | None = None,
    max_restarts: int = DEFAULT_MAX_RESTARTS,
    num_cpus: float = 1,
) -> tuple[ray.actor.ActorHandle, str]:
    """Start a SamplerActor (Ray must be initialised); return its handle and gRPC address.

    The model path is resolved here, since the actor's working directory differs. A
    loopback host is only reachable from this node, so the actor is pinned to it.
    """
    config = config or ServerConfig()
    path = Path(model_path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    options: dict[str, Any] = {"max_restarts": max_restarts, "num_cpus": num_cpus}
    if name:
        options["name"] = name
    if _is_loopback(config.host):
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
            node_id=ray.get_runtime_context().get_node_id(), soft=False
        )
        if config.port == 0:
            config = dataclasses.replace(config, port=_free_port(config.host))
    actor = SamplerActor.options(**options).remote(str(path), config)
    address = ray.get(actor.address.remote())
    return actor, address
