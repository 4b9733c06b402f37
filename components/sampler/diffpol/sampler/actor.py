"""The sampler as Ray actors: each owns its onnxruntime sessions and serves gRPC from its
process; several replicas of one server make one service that clients balance over.

Ray restarts an actor when its process dies (``max_restarts``); the constructor runs
again with the same arguments, so the server comes back on the same address when the
port is fixed. ``start_sampler_replicas`` fixes it for you on loopback: with port 0 it
picks free ports on this node first and pins the actors to this node, so clients
reconnect after a restart without asking for new addresses. On other hosts replica ``i``
listens on ``port + i`` (and its metrics on ``metrics_port + i``), spread over the nodes.

Why replicas behind client-side balancing, and not Ray Serve or one shared port: a
client's channel picks a replica per call in process (gRPC ``round_robin`` over the
replicas' addresses), so a call still crosses one TCP hop to one server process and a
single replica keeps its latency; Ray Serve's gRPC proxy adds a hop (about a millisecond
per call in Ray's own benchmarks, above the sampler's whole round trip); ``SO_REUSEPORT``
sharing works on one node only and the kernel balances connections, not calls, so one
client would stick to one process.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from diffpol.sampler.server import SamplerServer, ServerConfig, is_loopback, model_paths

DEFAULT_MAX_RESTARTS = 5

Models = str | os.PathLike | Mapping[str, str | os.PathLike]


class _SamplerActor:
    def __init__(self, models: dict[str, str], config: ServerConfig) -> None:
        self._server = SamplerServer(models, config).start()

    def address(self) -> str:
        return self._server.address

    def metrics_port(self) -> int | None:
        return self._server.metrics_port

    def reload(self, path: str | None = None, model: str = "") -> dict[str, Any]:
        """Hot-swap a model (see SamplerServer.reload); returns the new model's metadata."""
        return dataclasses.asdict(self._server.reload(path, model).metadata)

    def model_metadata(self, model: str = "") -> dict[str, Any]:
        name = model or self._server.model_names[0]
        return dataclasses.asdict(self._server.models[name].metadata)

    def stats(self) -> dict[str, int]:
        return self._server.stats()

    def stop(self, grace_s: float | None = None) -> None:
        """Graceful shutdown of the gRPC server (health turns NOT_SERVING first)."""
        self._server.stop(grace_s)


# Method calls are idempotent, so Ray may retry them across a restart.
SamplerActor = ray.remote(max_restarts=DEFAULT_MAX_RESTARTS, max_task_retries=3)(_SamplerActor)


@dataclass(frozen=True)
class SamplerReplicas:
    """Replicas of one sampler service: their actors and gRPC addresses, in order."""

    actors: tuple[ray.actor.ActorHandle, ...]
    addresses: tuple[str, ...]
    metrics_ports: tuple[int | None, ...]

    @property
    def address(self) -> str:
        """Every replica, comma-separated: what ``SamplerClient`` takes to balance over them."""
        return ",".join(self.addresses)

    def stop(self, grace_s: float = 5.0, timeout_s: float = 30.0) -> None:
        """Stop every replica gracefully, then end the actors (no restart)."""
        try:
            ray.get([actor.stop.remote(grace_s) for actor in self.actors], timeout=timeout_s)
        finally:
            for actor in self.actors:
                ray.kill(actor, no_restart=True)


def _free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host.strip("[]"), 0))
        return sock.getsockname()[1]


def _checked_models(models: Models) -> dict[str, str]:
    # Resolved here, since the actors' working directory differs.
    paths = model_paths(models)
    for name, path in paths.items():
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} (model {name!r}) does not exist")
    return {name: str(path) for name, path in paths.items()}


def start_sampler_replicas(
    models: Models,
    config: ServerConfig | None = None,
    *,
    replicas: int = 1,
    name: str | None = None,
    max_restarts: int = DEFAULT_MAX_RESTARTS,
    num_cpus: float = 1,
    num_gpus: float = 0,
) -> SamplerReplicas:
    """Start ``replicas`` SamplerActors serving ``models`` (a path or ``{name: path}``);
    Ray must be initialised. Returns once every replica serves.

    A loopback host is only reachable from this node, so its replicas are pinned here,
    each on a port of its own; otherwise Ray spreads them over the nodes (one per node
    or GPU where the resources allow). ``name``: actor names ``name``, ``name-1``, ...
    """
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    config = config or ServerConfig()
    paths = _checked_models(models)
    options: dict[str, Any] = {
        "max_restarts": max_restarts,
        "num_cpus": num_cpus,
        "num_gpus": num_gpus,
    }
    local = is_loopback(config.host)
    if local:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(
            node_id=ray.get_runtime_context().get_node_id(), soft=False
        )
    else:
        options["scheduling_strategy"] = "SPREAD"
    actors = []
    for i in range(replicas):
        replica = config
        if local and config.port == 0:
            replica = dataclasses.replace(replica, port=_free_port(config.host))
        elif config.port != 0:
            replica = dataclasses.replace(replica, port=config.port + i)
        if config.metrics_port:  # 0 stays 0: each replica picks a free one
            replica = dataclasses.replace(replica, metrics_port=config.metrics_port + i)
        actor_options = dict(options)
        if name:
            actor_options["name"] = name if i == 0 else f"{name}-{i}"
        actors.append(SamplerActor.options(**actor_options).remote(paths, replica))
    addresses = ray.get([actor.address.remote() for actor in actors])
    metrics_ports = ray.get([actor.metrics_port.remote() for actor in actors])
    return SamplerReplicas(tuple(actors), tuple(addresses), tuple(metrics_ports))


def start_sampler_actor(
    model_path: Models,
    config: ServerConfig | None = None,
    *,
    name: str | None = None,
    max_restarts: int = DEFAULT_MAX_RESTARTS,
    num_cpus: float = 1,
) -> tuple[ray.actor.ActorHandle, str]:
    """Start one SamplerActor (see ``start_sampler_replicas``); its handle and address."""
    started = start_sampler_replicas(
        model_path, config, name=name, max_restarts=max_restarts, num_cpus=num_cpus
    )
    return started.actors[0], started.addresses[0]
