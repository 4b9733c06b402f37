"""Serve exported samplers over gRPC from Ray actors until interrupted.

    python -m diffpol.sampler.main --model policy.onnx --port 50051
    python -m diffpol.sampler.main --model a=a.onnx --model b=b.onnx --port 0 --replicas 2 \
        --metrics-port 9100

Starts a local Ray (or joins ``--address``), starts ``--replicas`` SamplerActors, prints
their addresses (and the one gRPC target that balances over them; ``--addresses-file``
writes them as JSON) and serves until SIGINT or SIGTERM, then shuts the servers down
gracefully.
"""

from __future__ import annotations

import argparse
import re
import signal
import threading
from pathlib import Path

from diffpol.sampler.errors import ArtifactError
from diffpol.sampler.runtime import OnnxPolicy

_NAMED = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)=(.+)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffpol-sampler", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        required=True,
        action="append",
        metavar="[NAME=]PATH",
        help="exported .onnx sampler, served as NAME (default: 'default'); repeat to serve "
        "several, the first is the default for requests that name no model",
    )
    parser.add_argument(
        "--port",
        required=True,
        type=int,
        help="gRPC port (0: pick free ones); replica i listens on PORT+i",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="interface to listen on; other than loopback needs --tls-cert/--tls-key or --insecure",
    )
    parser.add_argument(
        "--replicas", type=int, default=1, help="sampler actors serving the same models"
    )
    parser.add_argument(
        "--cpus-per-replica",
        type=float,
        default=1.0,
        help="Ray CPUs each replica reserves (default 1)",
    )
    parser.add_argument(
        "--gpus-per-replica",
        type=float,
        default=0.0,
        help="Ray GPUs each replica reserves (default 0; 1 places one replica per GPU)",
    )
    parser.add_argument("--tls-cert", default=None, help="server certificate chain (PEM)")
    parser.add_argument("--tls-key", default=None, help="server private key (PEM)")
    parser.add_argument(
        "--tls-client-ca",
        default=None,
        help="CA bundle (PEM) that client certificates must chain to (mutual TLS)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="allow plaintext gRPC on an address other than loopback (a trusted network)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics at http://HOST:PORT/metrics (replica i: PORT+i; 0: "
        "free ports)",
    )
    parser.add_argument(
        "--addresses-file",
        type=Path,
        default=None,
        help="write the replicas' addresses, balanced target and metrics ports here (JSON)",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join (e.g. 'auto' or host:6379); default: start a local one",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=1024,
        help="rows per request and per fused call (default 1024)",
    )
    parser.add_argument(
        "--max-batch-wait-ms",
        type=float,
        default=0.0,
        help="micro-batching window; 0 turns batching off (default)",
    )
    parser.add_argument(
        "--intra-op-threads",
        type=int,
        default=1,
        help="onnxruntime threads per call (default 1: lowest batch-1 latency)",
    )
    parser.add_argument(
        "--watch-interval-s",
        type=float,
        default=None,
        help="hot-reload the model file when it changes, polling this often",
    )
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=5,
        help="how often Ray restarts a crashed sampler actor (-1: always)",
    )
    return parser


def _models(parser: argparse.ArgumentParser, values: list[str]) -> dict[str, Path]:
    from diffpol.sampler.server import DEFAULT_MODEL

    models: dict[str, Path] = {}
    for value in values:
        named = _NAMED.fullmatch(value)
        name, path = (named.group(1), named.group(2)) if named else (DEFAULT_MODEL, value)
        if name in models:
            parser.error(f"--model: the name {name!r} is given twice; name each model (NAME=PATH)")
        models[name] = Path(path)
    return models


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace):
    from diffpol.sampler.server import ServerConfig

    try:
        config = ServerConfig(
            host=args.host,
            port=args.port,
            max_batch_size=args.max_batch_size,
            max_batch_wait_ms=args.max_batch_wait_ms,
            intra_op_threads=args.intra_op_threads,
            watch_interval_s=args.watch_interval_s,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            insecure=args.insecure,
            metrics_port=args.metrics_port,
        )
    except ValueError as exc:
        parser.error(str(exc))
    if args.max_restarts < -1:
        parser.error(f"--max-restarts must be >= -1, got {args.max_restarts}")
    if args.replicas < 1:
        parser.error(f"--replicas must be >= 1, got {args.replicas}")
    if not args.cpus_per_replica >= 0 or not args.gpus_per_replica >= 0:
        parser.error("--cpus-per-replica and --gpus-per-replica must be >= 0")
    for flag, path in (
        ("--tls-cert", args.tls_cert),
        ("--tls-key", args.tls_key),
        ("--tls-client-ca", args.tls_client_ca),
    ):
        if path is not None and not Path(path).is_file():
            parser.error(f"{flag}: {path} is not a readable file")
    models = _models(parser, args.model)
    loaded = {}
    for name, path in models.items():
        try:
            # Load them here too, so a bad file fails now with a clear message, not in an actor.
            loaded[name] = OnnxPolicy(path, max_batch_size=args.max_batch_size)
        except ArtifactError as exc:
            parser.error(f"--model {name}={path}: {exc}")
    return config, models, loaded


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    config, models, loaded = _validate(parser, args)
    for name, model in loaded.items():
        print(f"model {name}: {model}", flush=True)
    del loaded

    import ray

    from diffpol.contracts.atomic import atomic_write_json
    from diffpol.contracts.ray_session import ray_session
    from diffpol.sampler.actor import start_sampler_replicas
    from diffpol.sampler.client import balanced_target

    print(
        "starting Ray ..." if args.address is None else f"joining Ray at {args.address} ...",
        flush=True,
    )
    with ray_session(args.address, log_to_driver=False):
        # After ray.init, which installs its own SIGTERM handler: ours shuts down gracefully.
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        replicas = None
        try:
            print(f"starting {args.replicas} sampler actor(s) ...", flush=True)
            replicas = start_sampler_replicas(
                models,
                config,
                replicas=args.replicas,
                max_restarts=args.max_restarts,
                num_cpus=args.cpus_per_replica,
                num_gpus=args.gpus_per_replica,
            )
            target = balanced_target(replicas.addresses)
            # Written before the address is printed: a script waiting for it finds the file.
            if args.addresses_file is not None:
                atomic_write_json(
                    args.addresses_file,
                    {
                        "addresses": list(replicas.addresses),
                        "target": target,
                        "tls": config.tls_cert is not None,
                        "metrics_ports": list(replicas.metrics_ports),
                    },
                )
            tls = " (TLS)" if config.tls_cert else ""
            print(f"serving on grpc://{replicas.address}{tls}", flush=True)
            print(f"balanced gRPC target (round_robin): {target}", flush=True)
            for address, port in zip(replicas.addresses, replicas.metrics_ports, strict=True):
                if port is not None:
                    host = address.rpartition(":")[0]
                    print(f"metrics of {address}: http://{host}:{port}/metrics", flush=True)
            while not stop.wait(0.5):
                pass
            print("shutting down ...", flush=True)
            ray.get(
                [actor.stop.remote() for actor in replicas.actors],
                timeout=config.shutdown_grace_s + 10,
            )
        finally:
            if replicas is not None:
                for actor in replicas.actors:
                    ray.kill(actor, no_restart=True)
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
