"""Command line: evaluate and compare policies on the same env seeds.

    python -m diffpol.evaluator.main --policy expert --policy ddim=model.onnx \\
        --policy grpc://localhost:50051 --env Pendulum-v1 --seeds 0:1000 --out results/

Every argument is checked (env id, seed range, model files and their fit to the env,
sampler addresses) before any episode runs; a bad one exits with status 2 and a message.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys

from diffpol.evaluator.seeds import DEFAULT_CHUNK_SIZE, SeedRange

EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffpol-evaluate",
        description="Evaluate policies on the same env seeds; write episodes, summary, "
        "plots and a comparison table.",
    )
    parser.add_argument(
        "--policy",
        action="append",
        required=True,
        metavar="[LABEL=]SPEC",
        help="PATH.onnx | grpc://HOST:PORT | random | zero | expert; repeat to compare; "
        "LABEL= names it in the outputs",
    )
    parser.add_argument("--env", required=True, help="env id, e.g. Pendulum-v1")
    parser.add_argument(
        "--seeds", required=True, help="env seeds START:STOP (half-open): 0:1000 is 0..999"
    )
    parser.add_argument("--out", required=True, help="output directory (created if missing)")
    parser.add_argument(
        "--noise-seed", type=int, default=0, help="seed of the policies' noise (default 0)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="Ray actors (default: one per CPU of the cluster); 0 runs in this process",
    )
    parser.add_argument(
        "--chunk-size",
        type=int,
        default=DEFAULT_CHUNK_SIZE,
        help=f"envs per batch (default {DEFAULT_CHUNK_SIZE}); part of the seeding rule, so "
        "changing it changes a stochastic policy's episodes",
    )
    parser.add_argument(
        "--backend",
        default="auto",
        help="env implementation: auto (the env's default in rollout's registry), numpy, "
        "envpool or gymnasium; EnvPool draws other initial states from the same seed than "
        "gymnasium and numpy do, so compare results only within one backend",
    )
    parser.add_argument("--address", default=None, help="Ray cluster address (default: local)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the problem
        return int(exc.code or 0)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from diffpol.evaluator.compare import comparison_of
    from diffpol.evaluator.evaluate import EvalConfig, prepare, run_prepared
    from diffpol.evaluator.outputs import write_outputs

    try:
        config = EvalConfig(
            env_id=args.env,
            seeds=SeedRange.parse(args.seeds),
            noise_seed=args.noise_seed,
            workers=args.workers,
            chunk_size=args.chunk_size,
            backend=args.backend,
            address=args.address,
            progress=not args.no_progress,
        )
        prepared = prepare(config, args.policy)
    except (ValueError, OSError) as exc:  # EvaluationConfigError and ContractError included
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

    from diffpol.contracts.ray_session import ray_session

    with (
        ray_session(args.address, log_to_driver=False)
        if prepared.needs_ray
        else contextlib.nullcontext()
    ):
        result = run_prepared(prepared)
    comparison = comparison_of(result)
    files = write_outputs(result, args.out, comparison)
    print(comparison.to_markdown())
    print(f"wrote {', '.join(sorted(files))} to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
