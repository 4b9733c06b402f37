"""``train()``: preprocess output in, trained checkpoint + metrics out, on Ray Train;
``train_many()``: several policies, one after the other in one Ray Train run, on the same
samples or each on its own (a run's start-up, tens of seconds of actor and process start on a 2-core
machine, is paid once instead of once per policy: benchmarks/RESULTS.md).

A run is identified by ``(storage_path, run_name)``. Running the same command again
resumes it from its latest checkpoint (Ray Train V2 restores a run found under the same
name and storage), or, when every epoch of every policy is done, returns the finished
results without training. A run started with a different model, optimiser, batch size,
seed, dataset or set of policies under the same name is refused rather than silently
mixed.

Outputs in each policy's ``out_dir``::

    checkpoint/      the final epoch's checkpoint (see ``checkpoint``), local even when the
                     Ray storage is remote
    metrics.csv      one row per epoch
    loss.png         train / val loss per epoch
    tensorboard/     scalars per epoch (written live by the rank-0 worker)
    ray_results/     Ray Train's storage (unless ``TrainConfig.storage_path`` says otherwise;
                     with several policies, in the first one's ``out_dir``)

In the storage, each epoch's checkpoint ``<policy>_epoch_<n>/`` holds one directory per
policy trained so far (``worker.PolicyStates``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffpol.contracts.atomic import atomic_directory
from diffpol.contracts.ray_data import data_context, quiet_data_settings
from diffpol.contracts.ray_session import ray_session
from diffpol.trainer.checkpoint import CheckpointError, read_checkpoint, verify_checkpoint_files
from diffpol.trainer.config import Config, TrainConfig
from diffpol.trainer.data import (
    TrainingData,
    check_model_matches,
    make_ray_datasets,
    open_training_data,
)
from diffpol.trainer.metrics import (
    LOSS_PLOT,
    METRICS_CSV,
    TENSORBOARD_DIR,
    plot_losses,
    write_metrics_csv,
)
from diffpol.trainer.worker import train_loop_per_worker

log = logging.getLogger("diffpol.trainer")

CHECKPOINT_DIR = "checkpoint"
RAY_RESULTS_DIR = "ray_results"
RUN_IDENTITY_FILE = "diffpol_run.json"


# What every policy of one run shares: the run's resources and where Ray Train keeps it.
RUN_FIELDS = (
    "workers",
    "gpus",
    "cpus_per_worker",
    "storage_path",
    "run_name",
    "max_failures",
    "keep_checkpoints",
)


class RunMismatchError(ValueError):
    """The run name already holds a run trained with another config or dataset."""


@dataclass(frozen=True)
class PolicyRun:
    """One policy of a training run: what to train, where its outputs go, and extra
    Lightning callbacks for its training on every worker (pickled to the workers)."""

    config: Config
    out_dir: Path
    callbacks: tuple[Any, ...] = ()
    # Its own preprocess output (e.g. another window); None: the run's samples.
    samples_dir: Path | None = None


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    checkpoint_dir: Path
    metrics_csv: Path
    loss_plot: Path
    tensorboard_dir: Path
    # The last epoch's row (see metrics.METRIC_COLUMNS).
    metrics: dict[str, Any]
    epochs_completed: int
    # Where Ray Train keeps the run (storage_path/run_name).
    run_path: str
    # True when the run was already complete and nothing was trained.
    already_complete: bool


def run_identity(config: Config, dataset_fingerprint: str) -> dict[str, Any]:
    """What must not change between attempts of one run (epochs and resources may), in
    its JSON form (tuples as lists) so that stored and current identities compare."""
    raw = config.to_json()
    model = dict(raw["model"])
    # The objective fields at their defaults, and fields only another objective reads,
    # leave the identity of runs started before they existed unchanged, so those runs
    # still resume.
    if model.get("objective") != "flow":
        model.pop("flow_time_sampling", None)
    if model.get("objective") == "ddpm" and model.get("teacher") is None:
        del model["objective"], model["teacher"]
    identity = {
        "model": model,
        "optim": raw["optim"],
        "batch_size": config.train.batch_size,
        "seed": config.train.seed,
        "dataset_fingerprint": dataset_fingerprint,
    }
    return json.loads(json.dumps(identity))


def _differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between two runs' identities (policy name -> ``run_identity``)."""
    found = []
    for name in sorted(set(stored) | set(current)):
        if not isinstance(stored.get(name), dict) or name not in current:
            found.append(f"set of policies ({name})")
            continue
        was, now = stored[name], current[name]
        found += [f"{name} {k}" for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)]
    return found


def _storage(storage_path: str):
    """(pyarrow filesystem, path) of a local directory or a filesystem URI."""
    import pyarrow.fs

    if "://" in storage_path:
        return pyarrow.fs.FileSystem.from_uri(storage_path)
    return pyarrow.fs.LocalFileSystem(), str(Path(storage_path).resolve())


def _claim_run(storage_path: str, run_name: str, identity: dict[str, Any]) -> str:
    """Record the run's identity (policy name -> ``run_identity``) in its storage, or
    check it against the recorded one."""
    import pyarrow.fs

    fs, root = _storage(storage_path)
    run_dir = f"{root.rstrip('/')}/{run_name}"
    path = f"{run_dir}/{RUN_IDENTITY_FILE}"
    if fs.get_file_info(path).type == pyarrow.fs.FileType.File:
        with fs.open_input_stream(path) as f:
            stored = json.loads(f.read().decode())
        changed = _differences(stored, identity)
        if changed:
            raise RunMismatchError(
                f"run {run_name!r} in {storage_path} was started with a different "
                f"{', '.join(changed)}: choose another run_name (or out_dir), or delete "
                f"{run_dir} to start over"
            )
    else:
        fs.create_dir(run_dir, recursive=True)
        with fs.open_output_stream(path) as f:
            f.write((json.dumps(identity, indent=2, sort_keys=True) + "\n").encode())
    return run_dir


def _check_resources(train: TrainConfig) -> None:
    import ray

    resources = ray.cluster_resources()
    cpus = resources.get("CPU", 0)
    if train.workers * train.cpus_per_worker > cpus:
        raise ValueError(
            f"{train.workers} workers x {train.cpus_per_worker} CPUs need "
            f"{train.workers * train.cpus_per_worker:g} CPUs, the Ray cluster has {cpus:g}: "
            "use fewer workers or cpus_per_worker"
        )
    gpus = resources.get("GPU", 0)
    if train.gpus > gpus:
        raise ValueError(
            f"asked for {train.gpus:g} GPUs, the Ray cluster has {gpus:g}: "
            "train with gpus=0 (CPU) or on a cluster with GPUs"
        )


def _policy_data(data: TrainingData, suffix: str) -> dict[str, Any]:
    """What a policy's training reads of its samples, and the names of their datasets."""
    has_val = data.info.val.rows > 0
    return {
        "normalizer": data.samples.normalizer.to_json(),
        "data": data.describe(),
        "train_rows": data.info.train.rows,
        "train_dataset": f"train{suffix}",
        "val_dataset": f"val{suffix}" if has_val else None,
    }


def _datasets_to_split(
    train_config: TrainConfig, suffixes: Sequence[str] = ("",)
) -> list[str] | str:
    """Split every dataset among several workers. A single worker reads the validation
    set whole, which spares the run that split's coordinator actor (a process to start);
    the training set stays split even then, because its coordinator runs Ray Data's
    executor outside the training process: unsplit, the executor's thread shares the
    worker's GIL and ingest is slower (benchmarks/trainer_bench_test.py; the numbers are
    in benchmarks/RESULTS.md)."""
    return "all" if train_config.workers > 1 else [f"train{s}" for s in suffixes]


def _finished_result(out_dir: Path, config: Config, identity: dict[str, Any]) -> TrainResult | None:
    """The result of a previous, complete run of the same policy, if there is one.

    Its weight files must load too: a final checkpoint damaged after the run (a truncated
    copy, a full disk) is not "finished"; training then restores the run from its Ray
    Train storage (whose copy replaces the damaged one) or, without one, trains again."""
    try:
        contents = read_checkpoint(out_dir / CHECKPOINT_DIR)
    except CheckpointError:
        return None
    meta = contents.meta
    previous = run_identity(contents.config, meta.fingerprint)
    if previous != identity or meta.epochs_completed < config.train.epochs:
        return None
    try:
        verify_checkpoint_files(contents.directory)
    except CheckpointError as exc:
        log.warning("not reusing the finished run in %s: %s", out_dir, exc)
        return None
    return _result(out_dir, contents, run_path="", already_complete=True)


def _result(out_dir: Path, contents, run_path: str, already_complete: bool) -> TrainResult:
    history = contents.meta.history
    return TrainResult(
        out_dir=out_dir,
        checkpoint_dir=contents.directory,
        metrics_csv=out_dir / METRICS_CSV,
        loss_plot=out_dir / LOSS_PLOT,
        tensorboard_dir=out_dir / TENSORBOARD_DIR,
        metrics=dict(history[-1]) if history else {},
        epochs_completed=contents.meta.epochs_completed,
        run_path=run_path,
        already_complete=already_complete,
    )


def train(
    samples_dir: str | Path,
    out_dir: str | Path,
    config: Config | None = None,
    address: str | None = None,
    *,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Train a policy on a preprocess output with Ray Train; see the module doc.

    ``address``: a Ray cluster to use; None uses the Ray this process is connected to, or
    starts a local one. ``callbacks``: extra Lightning callbacks for every worker (they
    are pickled to the workers). The policy is named after ``config.train.run_name`` in
    the run's checkpoints.

    Raises ValueError (ContractError, RunMismatchError) for bad inputs, before any training.
    """
    config = config or Config()
    name = config.train.run_name
    run = PolicyRun(config, Path(out_dir), tuple(callbacks))
    return train_many(samples_dir, {name: run}, address)[name]


def run_settings(configs: Sequence[Config]) -> TrainConfig:
    """The run-level settings (``RUN_FIELDS``) the policies of one run share."""
    lead = configs[0].train
    for config in configs[1:]:
        differ = [f for f in RUN_FIELDS if getattr(config.train, f) != getattr(lead, f)]
        if differ:
            raise ValueError(
                f"policies trained in one run must share its {', '.join(differ)}: got "
                + "; ".join(
                    f"{f} {getattr(lead, f)!r} and {getattr(config.train, f)!r}" for f in differ
                )
            )
    return lead


def train_many(
    samples_dir: str | Path,
    policies: Mapping[str, PolicyRun],
    address: str | None = None,
) -> dict[str, TrainResult]:
    """Train ``policies`` (name -> ``PolicyRun``) in order, in one Ray Train run, each on
    ``samples_dir`` or its own ``PolicyRun.samples_dir``; see the module doc. Returns one
    ``TrainResult`` per policy.

    Raises ValueError (ContractError, RunMismatchError) for bad inputs, before any training.
    """
    if not policies:
        raise ValueError("no policies to train")
    for name in policies:
        if not name or "/" in name:
            raise ValueError(f"a policy name must be non-empty without '/', got {name!r}")
    names = list(policies)
    for i, (name, run) in enumerate(policies.items()):
        teacher = run.config.model.teacher
        if teacher is not None and teacher not in names[:i]:
            raise ValueError(
                f"{name}'s teacher {teacher!r} must be a policy trained before it in the same "
                f"run (this run trains {', '.join(names)})"
            )
    runs = {
        name: dataclasses.replace(run, out_dir=Path(run.out_dir).resolve())
        for name, run in policies.items()
    }
    settings = run_settings([run.config for run in runs.values()])
    policy_dir = {
        name: Path(run.samples_dir or samples_dir).resolve() for name, run in runs.items()
    }
    # Each distinct preprocess output once, the run's own first: its Ray datasets are
    # "train" and "val", another's "train-<k>" and "val-<k>".
    dirs = list(dict.fromkeys([Path(samples_dir).resolve(), *policy_dir.values()]))
    data_of = {d: open_training_data(d) for d in dirs}
    suffix_of = {d: "" if k == 0 else f"-{k}" for k, d in enumerate(dirs)}
    identities = {}
    for name, run in runs.items():
        data = data_of[policy_dir[name]]
        check_model_matches(run.config.model, data)
        identities[name] = run_identity(run.config, data.fingerprint)
    finished = {
        name: _finished_result(run.out_dir, run.config, identities[name])
        for name, run in runs.items()
    }
    if all(result is not None for result in finished.values()):
        for name, result in finished.items():
            log.info(
                "%s already holds the finished run of %s; nothing to train", result.out_dir, name
            )
            _write_history_outputs(
                read_checkpoint(result.checkpoint_dir).meta.history, result.out_dir
            )
        return finished

    first_out = next(iter(runs.values())).out_dir
    storage_path = settings.storage_path or str(first_out / RAY_RESULTS_DIR)
    # Ray Data's progress bars and per-execution log lines follow the run's progress_bar
    # (Train ships the driver's DataContext to the workers).
    with ray_session(address), data_context(quiet_data_settings(progress=settings.progress_bar)):
        from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        _check_resources(settings)
        run_path = _claim_run(storage_path, settings.run_name, identities)
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={
                "policies": [
                    {
                        "name": name,
                        "config": run.config.to_json(),
                        "out_dir": str(run.out_dir),
                        "callbacks": list(run.callbacks),
                        **_policy_data(data_of[policy_dir[name]], suffix_of[policy_dir[name]]),
                    }
                    for name, run in runs.items()
                ],
            },
            scaling_config=ScalingConfig(
                num_workers=settings.workers,
                use_gpu=settings.gpus > 0,
                resources_per_worker={
                    "CPU": settings.cpus_per_worker,
                    **({"GPU": settings.gpus / settings.workers} if settings.gpus else {}),
                },
            ),
            run_config=RunConfig(
                name=settings.run_name,
                storage_path=storage_path,
                checkpoint_config=CheckpointConfig(num_to_keep=settings.keep_checkpoints),
                failure_config=FailureConfig(max_failures=settings.max_failures),
            ),
            datasets={
                f"{split}{suffix_of[d]}": dataset
                for d, data in data_of.items()
                for split, dataset in make_ray_datasets(data, seed=settings.seed).items()
            },
            dataset_config=DataConfig(
                datasets_to_split=_datasets_to_split(settings, list(suffix_of.values()))
            ),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError(f"run {run_path} ended without a checkpoint")
        # Local storage is read in place; remote storage is downloaded once.
        with result.checkpoint.as_directory() as last:
            for name, run in runs.items():
                if not (Path(last) / name).is_dir():
                    raise RuntimeError(f"run {run_path}'s last checkpoint has no {name} policy")
                with atomic_directory(run.out_dir / CHECKPOINT_DIR, overwrite=True) as staging:
                    shutil.copytree(Path(last) / name, staging, dirs_exist_ok=True)
    return {name: _final_result(run, run_path) for name, run in runs.items()}


def _final_result(run: PolicyRun, run_path: str) -> TrainResult:
    final_dir = run.out_dir / CHECKPOINT_DIR
    contents = read_checkpoint(final_dir)
    verify_checkpoint_files(final_dir)
    if contents.meta.epochs_completed < run.config.train.epochs:
        raise RuntimeError(
            f"run {run_path} stopped after {contents.meta.epochs_completed} of "
            f"{run.config.train.epochs} epochs"
        )
    _write_history_outputs(contents.meta.history, run.out_dir)
    return _result(run.out_dir, contents, run_path=run_path, already_complete=False)


def _write_history_outputs(history: list[dict[str, Any]], out_dir: Path) -> None:
    """``metrics.csv`` and ``loss.png``: authoritative copies, rebuilt from a checkpoint's
    history (the worker's live copies need out_dir on a filesystem the workers share)."""
    write_metrics_csv(history, out_dir / METRICS_CSV)
    plot_losses(history, out_dir / LOSS_PLOT)
