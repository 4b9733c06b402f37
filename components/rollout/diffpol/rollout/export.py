"""Export a diffpol dataset in another format: today LeRobotDataset v3.0.

CLI: ``python -m diffpol.rollout.export --format lerobot DATASET_DIR --out LEROBOT_DIR``
(``./pants run components/rollout:export -- ...``). The output appears complete or not at
all; a non-empty ``--out`` is replaced only with ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffpol.contracts.errors import ContractError
from diffpol.rollout.lerobot import export_lerobot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="export", description="Write a diffpol dataset as a LeRobotDataset v3.0 directory."
    )
    parser.add_argument("--format", choices=("lerobot",), required=True, help="output format")
    parser.add_argument("dataset", type=Path, help="diffpol dataset directory")
    parser.add_argument("--out", required=True, type=Path, help="directory to write")
    parser.add_argument("--fps", type=int, help="frames per second (default: the env's rate)")
    parser.add_argument("--task", help="task text of every episode (default: the env id)")
    parser.add_argument("--robot-type", help="info.json robot_type (default: the env id)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(argv)
    errors = []
    if not args.dataset.is_dir():
        errors.append(f"dataset directory {args.dataset} does not exist")
    if args.fps is not None and args.fps < 1:
        errors.append(f"--fps must be >= 1, got {args.fps}")
    if (
        args.out.exists()
        and not args.overwrite
        and (not args.out.is_dir() or any(args.out.iterdir()))
    ):
        errors.append(f"--out {args.out} exists and is not empty; pass --overwrite to replace it")
    if errors:
        parser.error("; ".join(errors))
    try:
        info = export_lerobot(
            args.dataset,
            args.out,
            overwrite=args.overwrite,
            fps=args.fps,
            task=args.task,
            robot_type=args.robot_type,
        )
    except (ContractError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(
        f"exported {info['total_episodes']} episodes, {info['total_frames']} frames at "
        f"{info['fps']} fps into {args.out} (LeRobotDataset {info['codebase_version']})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
