"""CLI: preprocess rollout datasets into training samples.

    python -m diffpol.preprocess.main --data DIR [--data DIR2 ...] --out OUT [options]

Exit codes: 0 done, 2 bad arguments or bad input data, 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from diffpol.contracts import Window
from diffpol.contracts.errors import ContractError
from diffpol.contracts.ray_session import ray_session
from diffpol.preprocess.config import NORM_MODES, PreprocessConfig
from diffpol.preprocess.pipeline import preprocess
from diffpol.preprocess.sources import open_sources

logger = logging.getLogger("diffpol.preprocess")
_DEFAULTS = PreprocessConfig()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="diffpol-preprocess",
        description="Turn rollout datasets into normalised, windowed train/val samples "
        "(Parquet + normalizer.json + samples.json), written atomically to --out.",
    )
    p.add_argument(
        "--data",
        action="append",
        required=True,
        type=Path,
        metavar="DIR",
        help="a rollout dataset directory (repeat for several; same env and dims)",
    )
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument(
        "--n-obs-steps",
        type=int,
        default=_DEFAULTS.window.n_obs_steps,
        metavar="To",
        help=f"observation history length (default {_DEFAULTS.window.n_obs_steps})",
    )
    p.add_argument(
        "--horizon",
        type=int,
        default=_DEFAULTS.window.horizon,
        metavar="T",
        help=f"action chunk length (default {_DEFAULTS.window.horizon})",
    )
    p.add_argument(
        "--n-action-steps",
        type=int,
        default=None,
        metavar="Ta",
        help="actions a policy executes per call, recorded in samples.json "
        f"(default {_DEFAULTS.window.n_action_steps}, or T when T is smaller)",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=_DEFAULTS.val_fraction,
        help=f"share of episodes for validation (default {_DEFAULTS.val_fraction})",
    )
    p.add_argument(
        "--seed", type=int, default=_DEFAULTS.seed, help="seed of the split and shuffle (default 0)"
    )
    p.add_argument(
        "--obs-norm",
        choices=NORM_MODES,
        default=_DEFAULTS.obs_norm,
        help=f"observation normaliser (default {_DEFAULTS.obs_norm})",
    )
    p.add_argument(
        "--action-norm",
        choices=NORM_MODES,
        default=_DEFAULTS.action_norm,
        help=f"action normaliser (default {_DEFAULTS.action_norm})",
    )
    p.add_argument(
        "--rows-per-file",
        type=int,
        default=_DEFAULTS.rows_per_file,
        help=f"target rows per output Parquet file (default {_DEFAULTS.rows_per_file})",
    )
    p.add_argument(
        "--shuffle-group-rows",
        type=int,
        default=_DEFAULTS.shuffle_group_rows,
        help="rows shuffled together (default %(default)s)",
    )
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="skip re-hashing data files against their manifests",
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (e.g. auto or ray://host:10001); "
        "default: start a local Ray in this process",
    )
    p.add_argument(
        "--num-cpus",
        type=int,
        default=None,
        help="CPUs for the local Ray (default: all); ignored with --address",
    )
    p.add_argument("--no-progress", action="store_true", help="hide Ray Data progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = PreprocessConfig(
            window=Window(
                n_obs_steps=args.n_obs_steps,
                horizon=args.horizon,
                n_action_steps=(
                    args.n_action_steps
                    if args.n_action_steps is not None
                    else min(_DEFAULTS.window.n_action_steps, args.horizon)
                ),
            ),
            val_fraction=args.val_fraction,
            seed=args.seed,
            obs_norm=args.obs_norm,
            action_norm=args.action_norm,
            rows_per_file=args.rows_per_file,
            shuffle_group_rows=args.shuffle_group_rows,
            verify_fingerprints=not args.no_verify,
            progress=not args.no_progress,
        )
        if args.num_cpus is not None and args.num_cpus < 1:
            raise ValueError(f"--num-cpus must be >= 1, got {args.num_cpus}")
        if args.out.exists() and not args.overwrite:
            raise FileExistsError(
                f"--out {args.out} already exists (pass --overwrite to replace it)"
            )
        if args.out.resolve() in {d.resolve() for d in args.data}:
            raise ValueError("--out must not be one of the --data directories")
        # Manifests, footers and fingerprints are checked before Ray starts: bad input
        # fails in seconds, not after cluster start-up.
        sources = open_sources(args.data, verify_fingerprints=config.verify_fingerprints)
    except (ValueError, FileExistsError) as exc:  # ContractError is a ValueError
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2

    try:
        # A caller that already connected Ray (a notebook, a test) keeps its connection.
        with ray_session(args.address, num_cpus=args.num_cpus):
            result = preprocess(sources, args.out, config, overwrite=args.overwrite)
    except (ContractError, FileExistsError) as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    info = result.info
    print(
        f"wrote {result.out_dir}: train {info.train.rows} samples / {info.train.episodes} episodes, "
        f"val {info.val.rows} / {info.val.episodes}; label {info.label}; "
        f"{result.seconds['total']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
