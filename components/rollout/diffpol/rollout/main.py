"""Collect a rollout dataset.

python -m diffpol.rollout.main --env Pendulum-v1 --policy expert --episodes 500 --out DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from diffpol.envs import AUTO, BACKENDS, get_env_spec, known_env_ids, resolve_backend
from diffpol.rollout.plan import make_plan
from diffpol.rollout.policies import known_policies


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m diffpol.rollout.main",
        description="Roll out a data policy in batched envs on Ray actors and write a dataset "
        "directory (manifest.json + data/part-*.parquet, Transition schema v1).",
    )
    p.add_argument("--env", default="Pendulum-v1", help=f"env id: {', '.join(known_env_ids())}")
    p.add_argument("--policy", default="expert", help=f"data policy: {', '.join(known_policies())}")
    p.add_argument("--episodes", type=int, required=True, help="number of episodes")
    p.add_argument("--out", type=Path, required=True, help="dataset directory to write")
    p.add_argument("--seed", type=int, default=0, help="run seed: episode i is reset with seed + i")
    p.add_argument("--actors", type=int, default=2, help="rollout actors (default 2)")
    p.add_argument(
        "--envs-per-actor", type=int, default=256, help="envs stepped together per actor"
    )
    p.add_argument(
        "--shard-episodes",
        type=int,
        default=None,
        help="episodes per shard / Parquet part (default: --envs-per-actor)",
    )
    p.add_argument(
        "--backend",
        default=AUTO,
        choices=(AUTO, *BACKENDS),
        help="env backend (default: the env's fastest exact one)",
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="policy parameter, repeatable (e.g. grid=200, expert=expert-scripted, force=0.5)",
    )
    p.add_argument(
        "--noise-max",
        type=float,
        default=None,
        help="noisy-expert: per-episode noise std is drawn from U[0, noise_max]",
    )
    p.add_argument(
        "--max-episode-steps",
        type=int,
        default=None,
        help="cut episodes shorter than the env's limit",
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray cluster address (default: start a local Ray in this process)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _policy_params(items: list[str]) -> tuple[dict[str, object], list[str]]:
    """``KEY=VALUE`` strings; numbers become numbers."""
    params: dict[str, object] = {}
    errors = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            errors.append(f"--param {item!r} is not KEY=VALUE")
            continue
        for convert in (int, float, str):
            try:
                params[key] = convert(value)
                break
            except ValueError:
                continue
    return params, errors


def _validate(args: argparse.Namespace) -> list[str]:
    errors = []
    try:
        get_env_spec(args.env)
        resolve_backend(args.env, args.backend)
    except ValueError as exc:
        errors.append(str(exc))
    if args.episodes is not None and args.episodes < 1:
        errors.append(f"--episodes must be >= 1, got {args.episodes}")
    if args.actors < 1:
        errors.append(f"--actors must be >= 1, got {args.actors}")
    if args.envs_per_actor < 1:
        errors.append(f"--envs-per-actor must be >= 1, got {args.envs_per_actor}")
    if args.shard_episodes is not None and args.shard_episodes < 1:
        errors.append(f"--shard-episodes must be >= 1, got {args.shard_episodes}")
    args.params, param_errors = _policy_params(args.param)
    errors += param_errors
    if args.noise_max is not None:
        args.params["noise_max"] = args.noise_max
        if args.policy != "noisy-expert":
            errors.append(f"--noise-max applies to --policy noisy-expert only, not {args.policy!r}")
        elif not args.noise_max >= 0:
            errors.append(f"--noise-max must be >= 0, got {args.noise_max}")
    if args.out.exists() and not args.overwrite:
        errors.append(f"--out {args.out} exists; pass --overwrite to replace it")
    if not errors:
        try:
            make_plan(
                args.env,
                args.policy,
                args.episodes,
                args.seed,
                max_episode_steps=args.max_episode_steps,
            )
        except ValueError as exc:
            errors.append(str(exc))
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    errors = _validate(args)
    if errors:
        parser.error("\n  ".join(errors))  # exits with status 2

    from tqdm import tqdm

    from diffpol.contracts.ray_session import ray_session
    from diffpol.rollout.collect import CollectError, collect, resolve_plan

    plan = make_plan(
        args.env, args.policy, args.episodes, args.seed, args.params, args.max_episode_steps
    )
    try:
        resolve_plan(plan)  # policy errors (bad onnx path, params) before Ray starts
    except (ValueError, ImportError) as exc:
        parser.error(str(exc))
    shards = -(-args.episodes // (args.shard_episodes or args.envs_per_actor))
    bar = tqdm(total=shards, unit="shard", desc="rollout", disable=args.no_progress)

    def progress(report) -> None:
        bar.update(1)
        bar.set_postfix(transitions=report.transitions, refresh=False)

    try:
        with ray_session(args.address, log_to_driver=False):
            result = collect(
                plan,
                args.out,
                num_actors=args.actors,
                envs_per_actor=args.envs_per_actor,
                backend=args.backend,
                shard_episodes=args.shard_episodes,
                overwrite=args.overwrite,
                progress=progress,
            )
    except CollectError as exc:
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 1
    bar.close()
    m = result.manifest
    print(
        f"{m.env.env_id} / {m.policy}: {m.episodes} episodes, {m.transitions} transitions, "
        f"mean return {m.returns.mean:.2f} (std {m.returns.std:.2f}, min {m.returns.min:.2f}, "
        f"max {m.returns.max:.2f}) in {result.seconds:.1f} s "
        f"({m.transitions / result.seconds:,.0f} transitions/s) -> {args.out}"
    )
    if result.resubmitted_shards or result.replaced_actors:
        print(
            f"recovered from failures: {result.resubmitted_shards} shard resubmission(s), "
            f"{result.replaced_actors} replaced actor(s)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
