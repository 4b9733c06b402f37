"""The end-to-end job behind ``./pants run components/trainer:main``.

collect (rollout; or, with ``--data``, an existing dataset, a LeRobotDataset imported) ->
preprocess -> train (diffusion + BC + seed-tutorial baselines) -> export (sampler: DDIM as
one ONNX graph) -> evaluate (evaluator, in process and through the gRPC sampler) -> report. The baselines train after the diffusion policy in the same Ray
Train run (``train_policies``). Every stage is resumable: running the same
command again reuses a complete dataset and samples, resumes training from the latest
checkpoint (or returns a finished run) and redoes only the cheap stages after it.

``OUT`` holds::

    policy.onnx      the exported sampler (the artifact users serve)
    checkpoints/     Ray Train storage: a checkpoint every epoch of every policy, each
                     holding every policy trained so far
    metrics.csv      the diffusion policy's metrics, one row per epoch
    ray.log          Ray's own output (its loggers, Ray Data's, the workers'), unless
                     the run is verbose
    plots/*.png      loss curves, return distributions, example trajectories
    summary.json     eval mean/std/n per policy, stage timings, versions
    report.md        what ran, the comparison tables, the plots
    data/ samples/ train/ eval/   each stage's own outputs

Test hook (integration suite): ``DIFFPOL_FAULT_KILL_WORKER_AT_EPOCH=<epoch>`` with
``DIFFPOL_FAULT_MARKER=<file>`` SIGKILLs the diffusion policy's training worker once at
that epoch (``diffpol.pipeline.faults``); Ray Train restarts it from the last checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from diffpol.contracts import Window
from diffpol.contracts.atomic import atomic_write_bytes, atomic_write_json
from diffpol.contracts.ray_session import ray_session
from diffpol.pipeline.console import WatchedRun, epoch_progress, log, progress_bar
from diffpol.pipeline.export import export_torch_policy
from diffpol.pipeline.presets import Preset
from diffpol.trainer.config import Config, ModelConfig, PolicyType
from diffpol.trainer.metrics import METRICS_CSV
from diffpol.trainer.training import PolicyRun, TrainResult, train_many

RAY_LOG = "ray.log"


@contextlib.contextmanager
def stage(name: str, timings: dict[str, float]) -> Iterator[None]:
    log(f"stage {name}: started")
    start = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - start, 2)
    log(f"stage {name}: done in {timings[name]:.1f} s")


FAULT_ENV_PREFIX = "DIFFPOL_FAULT_"


def requested_faults(environ: Mapping[str, str], epochs: int) -> list:
    """The training callbacks the integration suite's fault hook adds when a
    ``DIFFPOL_FAULT_*`` variable asks for one. The hook (``diffpol.pipeline.faults``) ships
    in the repository's main binaries and tests, not in the wheel: it is loaded by name."""
    if not any(key.startswith(FAULT_ENV_PREFIX) for key in environ):
        return []
    try:
        hook = importlib.import_module("diffpol.pipeline.faults")
    except ImportError:
        raise ValueError(
            f"{FAULT_ENV_PREFIX}* is set, but this build of diffpol-pipeline has no fault hook "
            "(it ships in the repository's main binaries and tests only): unset it"
        ) from None
    kill = hook.kill_worker_from_env(environ, epochs)
    return [kill] if kill is not None else []


def run_pipeline(
    preset: Preset,
    out_dir: str | Path,
    *,
    seed: int,
    address: str | None,
    verbose: bool = False,
    data: str | Path | None = None,
    env_id: str | None = None,
) -> dict:
    """Run every stage into ``out_dir``; Ray's own output goes to ``OUT/ray.log`` unless
    ``verbose``. With ``data``, train on that dataset (diffpol's, or a LeRobotDataset
    imported into ``OUT/data``) and its env (``env_id`` if given) instead of collecting."""
    out = Path(out_dir).resolve()
    # Checked before any work: a bad value is an error now, not after the data stages.
    fault_callbacks = requested_faults(os.environ, preset.config.train.epochs)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    log_file = None if verbose else out / RAY_LOG
    if log_file is not None:
        log(f"Ray's logs: {log_file}")
    with ray_session(address, log_file=log_file):
        if data is None:
            with stage("collect", timings):
                dataset = collect_data(preset, out / "data", seed=seed)
                variants = variant_data(preset, dataset, out, seed=seed, collected=True)
        else:
            with stage("import", timings):
                dataset, preset = use_dataset(preset, Path(data), out / "data", env_id)
                variants = variant_data(preset, dataset, out, seed=seed, collected=False)
        with stage("preprocess", timings):
            samples = make_samples(
                preset, dataset, out / "samples", seed=seed, ray_progress=verbose
            )
            variant_samples = {
                v.name: make_samples(
                    preset,
                    variants[v.name],
                    out / f"samples-{v.name}",
                    seed=seed,
                    ray_progress=verbose,
                    window=v.window,
                )
                for v in preset.variants
                if v.name in variants
            }
        with stage("train", timings):
            runs = train_policies(
                preset,
                samples,
                out,
                seed=seed,
                callbacks=fault_callbacks,
                variant_samples=variant_samples,
            )
        with stage("export", timings):
            onnx_path = export_policy(preset, runs["diffusion"], out / "policy.onnx")
            variant_onnx = {
                v.name: export_policy(
                    preset, runs[VARIANT_PREFIX + v.name], out / "variants" / f"{v.name}.onnx"
                )
                for v in preset.variants
                if VARIANT_PREFIX + v.name in runs
            }
        with stage("evaluate", timings):
            evaluation = evaluate_policies(
                preset, runs, onnx_path, out / "eval", seed=seed, variants=variant_onnx
            )
        sampler_rows = None
        if preset.samplers:
            with stage("samplers", timings):
                sampler_rows = compare_samplers(preset, runs, out, seed=seed)
    timings["total"] = round(time.perf_counter() - start, 2)
    return write_report(
        preset,
        out,
        runs,
        evaluation,
        timings,
        seed=seed,
        dataset=dataset,
        sampler_rows=sampler_rows,
    )


# --- stages -------------------------------------------------------------------------


def collect_data(preset: Preset, data_dir: Path, *, seed: int, episodes: int | None = None) -> Path:
    from diffpol.contracts import ContractError
    from diffpol.contracts.dataset import read_manifest
    from diffpol.rollout import collect, make_plan, resolve_plan

    plan = make_plan(
        preset.env_id,
        preset.data_policy,
        episodes or preset.episodes,
        seed,
        {"noise_max": preset.noise_max},
    )
    resolved, _ = resolve_plan(plan)
    if (data_dir / "manifest.json").exists():
        manifest = read_manifest(data_dir)
        wanted = (resolved.env_id, resolved.policy, resolved.episodes, resolved.seed)
        found = (manifest.env.env_id, manifest.policy, manifest.episodes, manifest.seed)
        if found != wanted:
            raise ContractError(
                f"{data_dir} holds a dataset of {found}, not the {wanted} this run needs: "
                "use another --out"
            )
        log(f"reusing the complete dataset in {data_dir} ({manifest.transitions} transitions)")
        return data_dir
    with progress_bar(resolved.episodes, "episode", "collect") as bar:
        result = collect(
            plan,
            data_dir,
            num_actors=preset.rollout_actors,
            envs_per_actor=preset.envs_per_actor,
            progress=lambda report: bar.update(report.num_episodes),
            overwrite=True,
        )
    returns = result.manifest.returns
    log(
        f"{result.manifest.episodes} episodes, {result.manifest.transitions} transitions, "
        f"data mean return {returns.mean:.1f}"
    )
    return data_dir


def use_dataset(
    preset: Preset, data: Path, data_dir: Path, env_id: str | None
) -> tuple[Path, Preset]:
    """An existing dataset to train on, and the preset with its env: a diffpol dataset is
    used where it is (verified), a LeRobotDataset is imported into ``data_dir``."""
    from diffpol.contracts import ContractError
    from diffpol.contracts.dataset import read_manifest
    from diffpol.rollout.lerobot import import_lerobot, is_lerobot_dataset

    if is_lerobot_dataset(data):
        # Imported again on every run (seconds): the source may have changed.
        manifest = import_lerobot(data, data_dir, env_id, overwrite=True)
        log(f"imported the LeRobotDataset {data} into {data_dir}")
        dataset = data_dir
    else:
        manifest = read_manifest(data)
        dataset = data
        if env_id is not None and env_id != manifest.env.env_id:
            raise ContractError(f"{data} holds {manifest.env.env_id} data, not {env_id}")
    log(
        f"training on {manifest.episodes} episodes, {manifest.transitions} transitions of "
        f"{manifest.env.env_id} ({manifest.policy}), data mean return {manifest.returns.mean:.1f}"
    )
    return dataset, dataclasses.replace(preset, env_id=manifest.env.env_id)


def variant_data(
    preset: Preset, dataset: Path, out: Path, *, seed: int, collected: bool
) -> dict[str, Path]:
    """Each variant's dataset: the run's own, or for a variant with fewer episodes the first
    ones collected again (episode i is reset with seed + i, so they are the same tasks and
    starts). A dataset given with ``--data`` is not re-collected: such variants are left
    out, and the log says so."""
    data = {}
    for v in preset.variants:
        if v.episodes is None:
            data[v.name] = dataset
        elif collected:
            log(f"variant {v.name}: its {v.episodes} episodes")
            data[v.name] = collect_data(
                preset, out / f"data-{v.name}", seed=seed, episodes=v.episodes
            )
        else:
            log(f"variant {v.name} ({v.label}) left out: it re-collects, and --data was given")
    return data


def make_samples(
    preset: Preset,
    dataset: Path,
    samples_dir: Path,
    *,
    seed: int,
    ray_progress: bool = False,
    window: Window | None = None,
) -> Path:
    """Preprocess ``dataset`` with the preset's window (or ``window``) into ``samples_dir``."""
    from diffpol.contracts.samples import SAMPLES_FILE, load_samples
    from diffpol.preprocess import PreprocessConfig, preprocess

    window = window or preset.window
    if (samples_dir / SAMPLES_FILE).exists():
        info = load_samples(samples_dir).info
        if info.window == window:
            log(f"reusing the samples in {samples_dir}")
            return samples_dir
    config = PreprocessConfig(
        window=window,
        val_fraction=preset.val_fraction,
        seed=seed,
        progress=ray_progress,
    )
    preprocess([dataset], samples_dir, config, overwrite=True)
    return samples_dir


def _denoiser(model: ModelConfig) -> str:
    if model.denoiser == "unet":
        return (
            f"temporal U-Net {'/'.join(map(str, model.unet_down_dims))} "
            f"(kernel {model.unet_kernel_size})"
        )
    return f"MLP {model.depth} x {model.hidden_width} ({model.activation})"


def policy_config(preset: Preset, policy_type: PolicyType, *, seed: int) -> Config:
    config = preset.config
    model: ModelConfig = dataclasses.replace(config.model, policy_type=policy_type)
    epochs = config.train.epochs if policy_type == "diffusion" else preset.baseline_epochs
    train_config = dataclasses.replace(config.train, epochs=epochs, seed=seed)
    return dataclasses.replace(config, model=model, train=train_config)


def few_step_config(preset: Preset, objective: str, *, seed: int) -> Config:
    """The diffusion policy's config with another objective (``--samplers``)."""
    config = policy_config(preset, "diffusion", seed=seed)
    teacher = "diffusion" if objective == "consistency" else None
    model = dataclasses.replace(config.model, objective=objective, teacher=teacher)
    if objective == "flow":
        epochs = preset.flow_epochs or config.train.epochs
    else:
        epochs = preset.consistency_epochs
    return dataclasses.replace(
        config, model=model, train=dataclasses.replace(config.train, epochs=epochs)
    )


def few_step_policies(preset: Preset) -> tuple[str, ...]:
    """The extra policies the sampler comparison needs, in training order."""
    if not preset.samplers:
        return ()
    from diffpol.pipeline.samplers import parse_samplers

    needed = {c.policy for c in parse_samplers(preset.samplers)}
    return tuple(p for p in ("consistency", "flow") if p in needed)


# The Ray Train run (under OUT/checkpoints) that trains every policy of the pipeline.
TRAIN_RUN_NAME = "policies"


# A variant's policy name in the training run, its outputs and the report.
VARIANT_PREFIX = "variant-"


def train_policies(
    preset: Preset,
    samples: Path,
    out: Path,
    *,
    seed: int,
    callbacks: Sequence[Any] = (),
    variant_samples: Mapping[str, Path] | None = None,
) -> dict[str, TrainResult]:
    """Train the diffusion policy, then the few-step policies and baselines, then each
    variant on its own samples (``variant_samples``), in one Ray Train run.

    A run's fixed cost (controller, placement group, worker process importing torch and
    Lightning, dataset and split-coordinator actors; tens of seconds on a laptop)
    is paid once rather than once per policy, and the policies do not fight for the CPUs
    while they start (benchmarks/RESULTS.md). Each policy keeps its own outputs, metrics
    and epoch checkpoints. ``callbacks`` go to the diffusion policy's training.
    """
    runs = {}
    extra = few_step_policies(preset)
    for policy_type in ("diffusion", *extra, *preset.baselines):
        if policy_type in extra:
            config = few_step_config(preset, policy_type, seed=seed)
        else:
            config = policy_config(preset, policy_type, seed=seed)
        config = dataclasses.replace(
            config,
            train=dataclasses.replace(
                config.train, storage_path=str(out / "checkpoints"), run_name=TRAIN_RUN_NAME
            ),
        )
        runs[policy_type] = PolicyRun(
            config,
            out / "train" / policy_type,
            tuple(callbacks) if policy_type == "diffusion" else (),
        )
    for v in preset.variants:
        if v.name not in (variant_samples or {}):
            continue
        config = runs["diffusion"].config
        config = dataclasses.replace(
            config,
            model=dataclasses.replace(config.model, window=v.window or config.model.window),
            train=dataclasses.replace(config.train, epochs=v.epochs or config.train.epochs),
        )
        name = VARIANT_PREFIX + v.name
        runs[name] = PolicyRun(config, out / "train" / name, samples_dir=variant_samples[v.name])
    log(
        "training "
        + ", then ".join(f"{name} ({run.config.train.epochs} epochs)" for name, run in runs.items())
        + " in one Ray Train run"
    )
    watched = [
        WatchedRun(
            name,
            run.out_dir / METRICS_CSV,
            run.config.train.epochs,
            _steps_per_epoch(run.samples_dir or samples, run.config),
        )
        for name, run in runs.items()
    ]
    with epoch_progress(watched):
        results = train_many(samples, runs)
    log(
        "trained "
        + ", ".join(
            f"{name} ({result.epochs_completed} epochs)" for name, result in results.items()
        )
    )
    return results


def _steps_per_epoch(samples: Path, config: Config) -> int:
    from diffpol.contracts.samples import load_samples
    from diffpol.trainer import steps_per_epoch

    rows = load_samples(samples).info.train.rows
    return steps_per_epoch(rows, config.train.workers, config.train.batch_size)


def export_policy(preset: Preset, run: TrainResult, path: Path) -> Path:
    from diffpol.trainer.policy import load_policy

    return export_torch_policy(load_policy(run.checkpoint_dir, "ddim", preset.ddim_steps), path)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    headline: Any  # EvaluationResult
    headline_table: Any  # Comparison
    side_by_side: Any
    side_by_side_table: Any


def evaluate_policies(
    preset: Preset,
    runs: dict[str, TrainResult],
    onnx_path: Path,
    eval_dir: Path,
    *,
    seed: int,
    variants: Mapping[str, Path] | None = None,
) -> Evaluation:
    """The headline and side-by-side comparisons (``Preset.headline`` / ``side_by_side``)
    on one set of episode actors, with the gRPC sampler serving the ONNX policy if asked."""
    import ray

    from diffpol.evaluator import EpisodeWorkers, SeedRange, compare
    from diffpol.sampler import start_sampler_actor

    variants = dict(variants or {})
    roles = {*preset.headline, *preset.side_by_side}
    actor, grpc = None, None
    if "grpc" in roles:
        # The sampler first: the episode workers share out the CPUs it leaves free.
        actor, address = start_sampler_actor(onnx_path)
        grpc = f"grpc://{address}"
        log(f"sampler serving {onnx_path.name} at {grpc}")
    try:
        policies = _role_policies(preset, runs, onnx_path, grpc, variants)
        parts = {
            "headline": (preset.eval_seeds, preset.headline),
            "side_by_side": (preset.torch_eval_seeds, preset.side_by_side),
        }
        parts = {
            part: (seeds, dict(policies[r]() for r in part_roles if r in policies))
            for part, (seeds, part_roles) in parts.items()
        }
        episodes = sum(len(SeedRange.parse(seeds)) * len(p) for seeds, p in parts.values())
        # Both comparisons run on one set of episode actors (each a process to start).
        # Example trajectories are replayed for envs without tasks (a Meta-World plot of
        # hand x says little); tasks get the per-task success table and plot instead.
        has_tasks = bool(_env_tasks(preset.env_id))
        with (
            EpisodeWorkers(preset.env_id, noise_seed=seed) as pool,
            progress_bar(episodes, "episode", "evaluate") as bar,
        ):
            results = {
                part: compare(
                    part_policies,
                    preset.env_id,
                    seeds,
                    noise_seed=seed,
                    out=eval_dir / part,
                    progress=bar.update,
                    pool=pool,
                    record_examples=not has_tasks,
                )
                for part, (seeds, part_policies) in parts.items()
            }
    finally:
        if actor is not None:
            ray.kill(actor, no_restart=True)
    return Evaluation(*results["headline"], *results["side_by_side"])


def _env_tasks(env_id: str) -> tuple[str, ...]:
    from diffpol.envs import get_env_spec

    return get_env_spec(env_id).tasks


def _role_policies(
    preset: Preset,
    runs: dict[str, TrainResult],
    onnx_path: Path,
    grpc: str | None,
    variants: Mapping[str, Path],
) -> dict:
    """Each evaluation role as a thunk giving (label, policy input); PyTorch policies are
    loaded only for the roles asked for. Variants without a trained policy (``--data``
    leaves the re-collecting ones out) have no entry."""
    from diffpol.trainer.policy import load_policy

    checkpoint = runs["diffusion"].checkpoint_dir
    ddim = f"diffusion DDIM-{preset.ddim_steps}"
    policies = {
        "expert": lambda: ("expert", "expert"),
        "random": lambda: ("random", "random"),
        "zero": lambda: ("zero", "zero"),
        "onnx": lambda: (f"{ddim} (ONNX)", str(onnx_path)),
        "grpc": lambda: (f"{ddim} (gRPC)", grpc),
        "ddim": lambda: (f"{ddim} (PyTorch)", load_policy(checkpoint, "ddim", preset.ddim_steps)),
        "ddpm": lambda: (
            f"diffusion DDPM-{preset.ddpm_steps} (PyTorch)",
            load_policy(checkpoint, "ddpm", preset.ddpm_steps),
        ),
    }
    labels = {"bc": "BC", "seed-tutorial": "seed-tutorial"}
    for name in preset.baselines:
        policies[name] = lambda name=name: (labels[name], load_policy(runs[name].checkpoint_dir))
    for v in preset.variants:
        if v.name in variants:
            policies[f"variant:{v.name}"] = lambda v=v: (v.label, str(variants[v.name]))
    return policies


def compare_samplers(
    preset: Preset, runs: dict[str, TrainResult], out: Path, *, seed: int
) -> list[dict]:
    """Each ``--samplers`` sampler exported, evaluated on the headline seeds and timed at
    batch 1 in process; the rows of the report's sampler table (``samplers``)."""
    from diffpol.evaluator import SeedRange, compare
    from diffpol.pipeline.samplers import (
        batch1_latency_us,
        export_samplers,
        parse_samplers,
        sampler_rows,
    )

    choices = parse_samplers(preset.samplers)
    checkpoints = {name: run.checkpoint_dir for name, run in runs.items()}
    paths = export_samplers(choices, checkpoints, out / "samplers")
    log(f"comparing {len(choices)} samplers on the held-out seeds {preset.eval_seeds}")
    episodes = len(SeedRange.parse(preset.eval_seeds)) * len(paths)
    with progress_bar(episodes, "episode", "samplers") as bar:
        result, _ = compare(
            {name: str(path) for name, path in paths.items()},
            preset.env_id,
            preset.eval_seeds,
            noise_seed=seed,
            out=out / "eval" / "samplers",
            progress=bar.update,
        )
    score = "success" if _env_tasks(preset.env_id) else "return"
    summaries = {p.label: _score(p.summary, score) for p in result.policies}
    latency = batch1_latency_us(paths, (preset.window.n_obs_steps, _obs_dim(paths)))
    return sampler_rows(choices, summaries, latency, score=score)


def _score(summary, score: str) -> dict:
    """A sampler's mean and standard error in ``samplers.SCORES``' unit: the return, or
    the success rate in percent (binomial standard error) for envs with tasks."""
    if score == "return":
        return summary.to_json()
    p, n = summary.success_rate, summary.n
    return {"mean": 100 * p, "stderr": 100 * math.sqrt(p * (1 - p) / n), "n": n}


def _obs_dim(paths: dict[str, Path]) -> int:
    from diffpol.sampler import OnnxPolicy

    return OnnxPolicy(next(iter(paths.values()))).metadata.env.obs_dim


# --- report -------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import importlib

    names = ["contracts", "rollout", "preprocess", "trainer", "sampler", "evaluator"]
    versions = {f"diffpol-{n}": importlib.import_module(f"diffpol.{n}").__version__ for n in names}
    for package in ("torch", "ray", "lightning", "onnxruntime", "gymnasium"):
        with contextlib.suppress(ImportError):
            versions[package] = importlib.import_module(package).__version__
    return versions


def _summaries(result) -> dict[str, dict]:
    from diffpol.evaluator import task_json

    return {
        p.label: {**p.summary.to_json(), "wall_time_s": p.wall_time_s, **task_json(p)}
        for p in result.policies
    }


def _collect_plots(out: Path, runs: dict[str, TrainResult], evaluation: Evaluation) -> list[Path]:
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    copied = []
    for name, run in runs.items():
        target = plots / f"loss_{name}.png"
        shutil.copyfile(run.loss_plot, target)
        copied.append(target)
    for part in ("headline", "side_by_side"):
        for png in sorted((out / "eval" / part).glob("*.png")):
            target = plots / f"{part}_{png.name}"
            shutil.copyfile(png, target)
            copied.append(target)
    return copied


def write_report(
    preset: Preset,
    out: Path,
    runs: dict[str, TrainResult],
    evaluation: Evaluation,
    timings: dict[str, float],
    *,
    seed: int,
    dataset: Path,
    sampler_rows: list[dict] | None = None,
) -> dict:
    shutil.copyfile(runs["diffusion"].metrics_csv, out / "metrics.csv")
    plots = _collect_plots(out, runs, evaluation)
    if sampler_rows:
        from diffpol.pipeline.samplers import pareto_figure

        pareto = out / "plots" / "samplers_pareto.png"
        title = (
            f"{preset.env_id}, seeds {preset.eval_seeds}: "
            f"{sampler_rows[0]['score']} vs batch-1 latency"
        )
        atomic_write_bytes(pareto, pareto_figure(sampler_rows, title))
        plots.insert(0, pareto)
    headline = _summaries(evaluation.headline)
    ddim_onnx = next(label for label in headline if label.endswith("(ONNX)"))
    summary = {
        "env_id": preset.env_id,
        "seed": seed,
        "data": str(dataset),
        "eval": {
            "policy": ddim_onnx,
            "seeds": preset.eval_seeds,
            **{
                k: headline[ddim_onnx][k]
                for k in ("mean", "std", "stderr", "n", "success_rate", "mean_task_success_rate")
                if k in headline[ddim_onnx]
            },
            # In return; an env with tasks scores success instead (its episodes end there).
            **(
                {"gap_to_expert": headline[ddim_onnx]["mean"] - headline["expert"]["mean"]}
                if "expert" in headline and "mean_task_success_rate" not in headline[ddim_onnx]
                else {}
            ),
        },
        "headline": headline,
        "side_by_side": _summaries(evaluation.side_by_side),
        "samplers": sampler_rows or [],
        "training_seconds": _training_seconds(runs),
        "training": {name: run.metrics for name, run in runs.items()},
        "stage_seconds": timings,
        "versions": _versions(),
        "preset": dataclasses.asdict(preset),
    }
    atomic_write_json(out / "summary.json", json.loads(json.dumps(summary, default=str)))
    report = _report_markdown(
        preset, out, evaluation, {**summary, "data_description": _describe_data(dataset)}, plots
    )
    atomic_write_bytes(out / "report.md", report.encode())
    return summary


def _describe_data(dataset: Path) -> str:
    from diffpol.contracts.dataset import read_manifest

    m = read_manifest(dataset, verify=False)
    source = m.provenance.get("source", "collect")
    return f"{m.episodes} episodes of `{m.policy}` ({source}, seed {m.seed}) in `{dataset}`"


def _section(title: str, table) -> list[str]:
    """A report section holding an evaluator comparison table under one heading: the
    table's own heading (env, seeds, n, noise seed) is folded into the section's."""
    lines = table.to_markdown().rstrip("\n").split("\n")
    if lines and lines[0].startswith("## "):
        lines = [f"## {title}: {lines[0].removeprefix('## ')}", *lines[1:]]
    else:
        lines = [f"## {title}", "", *lines]
    return [*lines, ""]


def _report_markdown(preset, out: Path, evaluation: Evaluation, summary: dict, plots) -> str:
    model = preset.config.model
    lines = ["# diffpol run report", "", _headline_sentence(preset, summary), ""]
    lines += [
        "## What ran",
        "",
        f"- data: {summary['data_description']}",
        f"- split: evaluation on env seeds {preset.eval_seeds} (side by side "
        f"{preset.torch_eval_seeds}); a collected episode i is reset with seed + i, so data and "
        "evaluation start from disjoint seeds and goal configurations",
        f"- model: {model.policy_type}, To={model.window.n_obs_steps}, "
        f"T={model.window.horizon}, Ta={model.window.n_action_steps}, {_denoiser(model)}, "
        f"{model.schedule.beta_schedule} schedule with "
        f"{model.schedule.num_train_timesteps} steps, {preset.config.train.epochs} epochs",
        f"- baselines: {', '.join(preset.baselines)} ({preset.baseline_epochs} epochs)",
        *[f"- variant {v.name}: {v.label}" for v in preset.variants],
        *(
            [
                "- rollout GIFs: none (not implemented: MuJoCo could not render offscreen "
                "where this pipeline was built, so nothing could check them)"
            ]
            if preset.env_id.startswith("metaworld/")
            else []
        ),
        "- stage seconds: "
        + ", ".join(f"{k} {v:.0f}" for k, v in summary["stage_seconds"].items()),
        "",
        *_evaluation_sections(evaluation),
        *_sampler_section(preset, summary),
        "## Plots",
        "",
        *[f"![{p.stem}](plots/{p.name})" for p in plots],
        "",
    ]
    return "\n".join(lines)


def _headline_sentence(preset: Preset, summary: dict) -> str:
    e = summary["eval"]
    where = f"on {preset.env_id}, env seeds {e['seeds']} (held out from the data)"
    if "mean_task_success_rate" in e:
        expert = summary["headline"].get("expert", {}).get("mean_task_success_rate")
        versus = f"; the scripted expert {100 * expert:.1f}%" if expert is not None else ""
        return (
            f"**{e['policy']}** {where}: mean success over tasks "
            f"**{100 * e['mean_task_success_rate']:.1f}%** (n = {e['n']}){versus}."
        )
    gap = f"; gap to the data's expert {e['gap_to_expert']:+.1f}" if "gap_to_expert" in e else ""
    return (
        f"**{e['policy']}** {where}: mean return **{e['mean']:.1f}** ± {e['stderr']:.1f} "
        f"(standard error, n = {e['n']}){gap}."
    )


def _evaluation_sections(evaluation: Evaluation) -> list[str]:
    """The comparison tables: success per task for envs with named tasks (their returns,
    which end at the first success, are left to ``eval/*/comparison.md``), otherwise
    returns with paired differences."""
    from diffpol.evaluator import success_table

    parts = (
        ("Headline", evaluation.headline, evaluation.headline_table),
        ("Every policy side by side", evaluation.side_by_side, evaluation.side_by_side_table),
    )
    if not evaluation.headline.env.tasks:
        return [line for title, _, table in parts for line in _section(title, table)]
    lines = []
    for title, result, _ in parts:
        text = success_table(result).rstrip("\n").split("\n")
        lines += [f"## {title}: {text[0].removeprefix('## ')}", *text[1:], ""]
    lines += [
        "Returns with paired differences: `eval/headline/comparison.md`, "
        "`eval/side_by_side/comparison.md`.",
        "",
    ]
    return lines


def _training_seconds(runs: dict[str, TrainResult]) -> dict[str, float]:
    """Each policy's training time: the sum of its epochs' times (start-up excluded)."""
    from diffpol.trainer.checkpoint import read_checkpoint

    return {
        name: round(
            sum(
                float(row.get("epoch_time_s") or 0)
                for row in read_checkpoint(run.checkpoint_dir).meta.history
            ),
            1,
        )
        for name, run in runs.items()
    }


def _sampler_section(preset, summary: dict) -> list[str]:
    rows = summary.get("samplers") or []
    if not rows:
        return []
    from diffpol.pipeline.samplers import markdown_table

    seconds = summary["training_seconds"]
    ddpm = seconds["diffusion"]
    cost = [f"diffusion (DDPM) {ddpm:.0f} s"]
    if "flow" in seconds:
        cost.append(f"flow matching {seconds['flow']:.0f} s ({seconds['flow'] / ddpm:.2f}x)")
    if "consistency" in seconds:
        cost.append(
            f"consistency distillation {seconds['consistency']:.0f} s on top "
            f"({seconds['consistency'] / ddpm:.0%} of the teacher's)"
        )

    return [
        f"## Samplers: {rows[0]['score']} and batch-1 latency ({preset.env_id}, seeds "
        f"{preset.eval_seeds}, ONNX in process)",
        "",
        *markdown_table(rows),
        "",
        "act: a whole `OnnxPolicy.act` call (seeded noise drawn, inputs checked); graph "
        "alone: the onnxruntime run on inputs drawn once. Speed-ups are against ddim-10 "
        "in the same measurement. Pareto: no other sampler has both a higher score "
        "and a lower act latency. Plot: `plots/samplers_pareto.png`.",
        "",
        "Training time (sum of epoch times): " + ", ".join(cost) + ".",
        "",
    ]
