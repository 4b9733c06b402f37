"""``./pants run components/trainer:main``: data -> samples -> policies -> ONNX -> evaluation.

The data is collected, or with ``--data DIR`` an existing dataset (diffpol's or a
LeRobotDataset v3.0, imported first) with its env.

Runs on a local Ray started in process, or on a cluster with ``--address``. Running the same
command again resumes where it stopped (see ``pipeline``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from diffpol.pipeline.presets import DEFAULT_SAMPLERS, PRESETS, resolve_preset


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="diffpol-pipeline", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="default", choices=sorted(PRESETS))
    p.add_argument("--out", type=Path, help="output directory (default: runs/<preset>)")
    p.add_argument(
        "--data",
        type=Path,
        help="train on this dataset instead of collecting one: a diffpol dataset directory "
        "or a LeRobotDataset v3.0 directory",
    )
    p.add_argument(
        "--env",
        help="with --data: the env to train and evaluate on (default: the one the dataset "
        "names; a LeRobotDataset that names none needs it)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds data, split, init and noise")
    p.add_argument("--address", help="Ray cluster address; default: a local Ray in process")
    p.add_argument("--workers", type=int, help="Ray Train workers (default: the preset's)")
    p.add_argument("--gpus", type=float, help="GPUs for training (default: 0)")
    p.add_argument("--epochs", type=int, help="diffusion epochs (default: the preset's)")
    p.add_argument(
        "--samplers",
        nargs="?",
        const=DEFAULT_SAMPLERS,
        help="also train a flow-matching and a consistency policy and compare samplers "
        "FAMILY-STEPS (ddim, ddpm, flow, flow-midpoint, consistency) on return and batch-1 "
        f"latency (default list: {DEFAULT_SAMPLERS})",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show Ray's own output on the console (default: in OUT/ray.log)",
    )
    args = p.parse_args(argv)
    for name in ("workers", "epochs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be >= 1, got {value}")
    if args.gpus is not None and args.gpus < 0:
        p.error(f"--gpus must be >= 0, got {args.gpus}")
    if args.seed < 0:
        p.error(f"--seed must be >= 0, got {args.seed}")
    if args.data is not None and not args.data.is_dir():
        p.error(f"--data {args.data} is not a directory")
    if args.env is not None and args.data is None:
        p.error("--env applies with --data only (a collecting run uses the preset's env)")
    if args.samplers is not None:
        from diffpol.pipeline.samplers import parse_samplers

        try:
            parse_samplers(args.samplers)
        except ValueError as exc:
            p.error(f"--samplers: {exc}")
    if args.out is None:
        args.out = Path("runs") / args.preset
    if args.out.exists() and not args.out.is_dir():
        p.error(f"--out {args.out} exists and is not a directory")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preset = resolve_preset(
        args.preset, args.samplers, workers=args.workers, gpus=args.gpus, epochs=args.epochs
    )
    from diffpol.pipeline.run import run_pipeline

    summary = run_pipeline(
        preset,
        args.out,
        seed=args.seed,
        address=args.address,
        verbose=args.verbose,
        data=args.data,
        env_id=args.env,
    )
    print(json.dumps({"out": str(args.out.resolve()), "eval": summary["eval"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
