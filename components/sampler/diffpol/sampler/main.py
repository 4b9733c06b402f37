"""Serve an exported sampler over gRPC from a Ray actor until interrupted.

    python -m diffpol.sampler.main --model policy.onnx --port 50051

Starts a local Ray (or joins ``--address``), starts the SamplerActor, prints its address
and serves until SIGINT or SIGTERM, then shuts the server down gracefully.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from diffpol.sampler.errors import ArtifactError
from diffpol.sampler.runtime import OnnxPolicy


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="diffpol-sampler", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="exported .onnx sampler")
    parser.add_argument("--port", required=True, type=int, help="gRPC port (0: pick a free one)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
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
        )
    except ValueError as exc:
        parser.error(str(exc))
    if args.max_restarts < -1:
        parser.error(f"--max-restarts must be >= -1, got {args.max_restarts}")
    try:
        # Load it here too, so a bad file fails now with a clear message, not in the actor.
        model = OnnxPolicy(args.model, max_batch_size=args.max_batch_size)
    except ArtifactError as exc:
        parser.error(str(exc))
    return config, model


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    config, model = _validate(parser, args)
    print(f"model: {model}", flush=True)
    del model

    import ray

    from diffpol.contracts.ray_session import ray_session
    from diffpol.sampler.actor import start_sampler_actor

    print(
        "starting Ray ..." if args.address is None else f"joining Ray at {args.address} ...",
        flush=True,
    )
    with ray_session(args.address, log_to_driver=False):
        # After ray.init, which installs its own SIGTERM handler: ours shuts down gracefully.
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        actor = None
        try:
            print("starting sampler actor ...", flush=True)
            actor, address = start_sampler_actor(args.model, config, max_restarts=args.max_restarts)
            print(f"serving on grpc://{address}", flush=True)
            while not stop.wait(0.5):
                pass
            print("shutting down ...", flush=True)
            ray.get(actor.stop.remote(), timeout=config.shutdown_grace_s + 10)
        finally:
            if actor is not None:
                ray.kill(actor, no_restart=True)
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
