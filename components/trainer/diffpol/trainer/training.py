"""``train()``: preprocess output in, trained checkpoint + metrics out, on Ray Train.

A run is identified by ``(storage_path, run_name)``. Running the same command again
resumes it from its latest checkpoint (Ray Train V2 restores a run found under the same
name and storage), or, when every epoch is done, returns the finished result without
training. A run started with a different model, optimiser, batch size, seed or dataset
under the same name is refused rather than silently mixed.

Outputs in ``out_dir``::

    checkpoint/      the final epoch's checkpoint (see ``checkpoint``), local even when the
                     Ray storage is remote
    metrics.csv      one row per epoch
    loss.png         train / val loss per epoch
    tensorboard/     scalars per epoch (written live by the rank-0 worker)
    ray_results/     Ray Train's storage (unless ``TrainConfig.storage_path`` says otherwise)
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffpol.contracts.atomic import atomic_directory
from diffpol.trainer.checkpoint import CheckpointError, read_checkpoint, verify_checkpoint_files
from diffpol.trainer.config import Config, TrainConfig
from diffpol.trainer.data import (
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
from diffpol.trainer.ray_session import ray_session
from diffpol.trainer.worker import steps_per_epoch, train_loop_per_worker

log = logging.getLogger("diffpol.trainer")

CHECKPOINT_DIR = "checkpoint"
RAY_RESULTS_DIR = "ray_results"
RUN_IDENTITY_FILE = "diffpol_run.json"


class RunMismatchError(ValueError):
    """The run name already holds a run trained with another config or dataset."""


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
    identity = {
        "model": raw["model"],
        "optim": raw["optim"],
        "batch_size": config.train.batch_size,
        "seed": config.train.seed,
        "dataset_fingerprint": dataset_fingerprint,
    }
    return json.loads(json.dumps(identity))


def _differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))


def _storage(storage_path: str):
    """(pyarrow filesystem, path) of a local directory or a filesystem URI."""
    import pyarrow.fs

    if "://" in storage_path:
        return pyarrow.fs.FileSystem.from_uri(storage_path)
    return pyarrow.fs.LocalFileSystem(), str(Path(storage_path).resolve())


def _claim_run(storage_path: str, run_name: str, identity: dict[str, Any]) -> str:
    """Record the run's identity in its storage, or check it against the recorded one."""
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


def _check_resources(config: Config) -> None:
    import ray

    resources = ray.cluster_resources()
    train = config.train
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


_data_context_lock = threading.Lock()
_data_context_users = 0
_data_context_saved: dict[str, Any] = {}


@contextlib.contextmanager
def _data_context(progress: bool) -> Iterator[None]:
    """Ray Data's progress bars and per-execution log lines follow ``progress``; restored
    after the run (``DataContext`` is process-global, and Train ships it to the workers).
    Runs training concurrently in one process (the pipeline's) share it: the first one in
    saves the previous settings, the last one out restores them."""
    from ray.data import DataContext

    global _data_context_users
    ctx = DataContext.get_current()
    settings = {"enable_progress_bars": progress, "print_on_execution_start": progress}
    with _data_context_lock:
        if _data_context_users == 0:
            _data_context_saved.update({name: getattr(ctx, name) for name in settings})
        _data_context_users += 1
        for name, value in settings.items():
            setattr(ctx, name, value)
    try:
        yield
    finally:
        with _data_context_lock:
            _data_context_users -= 1
            if _data_context_users == 0:
                for name, value in _data_context_saved.items():
                    setattr(ctx, name, value)
                _data_context_saved.clear()


def _datasets_to_split(train_config: TrainConfig) -> list[str] | str:
    """Split every dataset among several workers. A single worker reads the validation
    set whole, which spares the run that split's coordinator actor (a process, ~3 s of
    start-up on 2 cores); the training set stays split even then, because its coordinator
    runs Ray Data's executor outside the training process: unsplit, the executor's thread
    shares the worker's GIL, and ingest measured 79-84% of the plain loop instead of
    86-87% (benchmarks/trainer_bench_test.py, alternating runs in one session)."""
    return "all" if train_config.workers > 1 else ["train"]


def _finished_result(out_dir: Path, config: Config, identity: dict[str, Any]) -> TrainResult | None:
    """The result of a previous, complete run of the same command, if there is one.

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
    are pickled to the workers).

    Raises ValueError (ContractError, RunMismatchError) for bad inputs, before any training.
    """
    config = config or Config()
    out_dir = Path(out_dir).resolve()
    data = open_training_data(samples_dir)
    check_model_matches(config.model, data)
    identity = run_identity(config, data.fingerprint)
    finished = _finished_result(out_dir, config, identity)
    if finished is not None:
        log.info("%s already holds the finished run; nothing to train", out_dir)
        history = read_checkpoint(finished.checkpoint_dir).meta.history
        write_metrics_csv(history, finished.metrics_csv)
        plot_losses(history, finished.loss_plot)
        return finished

    storage_path = config.train.storage_path or str(out_dir / RAY_RESULTS_DIR)
    with ray_session(address), _data_context(config.train.progress_bar):
        from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        _check_resources(config)
        run_path = _claim_run(storage_path, config.train.run_name, identity)
        info = data.info
        train_config = config.train
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={
                "config": config.to_json(),
                "normalizer": data.samples.normalizer.to_json(),
                "data": data.describe(),
                "has_val": info.val.rows > 0,
                "steps_per_epoch": steps_per_epoch(
                    info.train.rows, train_config.workers, train_config.batch_size
                ),
                "out_dir": str(out_dir),
                "callbacks": list(callbacks),
            },
            scaling_config=ScalingConfig(
                num_workers=train_config.workers,
                use_gpu=train_config.gpus > 0,
                resources_per_worker={
                    "CPU": train_config.cpus_per_worker,
                    **(
                        {"GPU": train_config.gpus / train_config.workers}
                        if train_config.gpus
                        else {}
                    ),
                },
            ),
            run_config=RunConfig(
                name=train_config.run_name,
                storage_path=storage_path,
                checkpoint_config=CheckpointConfig(num_to_keep=train_config.keep_checkpoints),
                failure_config=FailureConfig(max_failures=train_config.max_failures),
            ),
            datasets=make_ray_datasets(data, seed=train_config.seed),
            dataset_config=DataConfig(datasets_to_split=_datasets_to_split(train_config)),
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError(f"run {run_path} ended without a checkpoint")
        final_dir = out_dir / CHECKPOINT_DIR
        with atomic_directory(final_dir, overwrite=True) as staging:
            result.checkpoint.to_directory(str(staging))
    contents = read_checkpoint(final_dir)
    verify_checkpoint_files(final_dir)
    if contents.meta.epochs_completed < config.train.epochs:
        raise RuntimeError(
            f"run {run_path} stopped after {contents.meta.epochs_completed} of "
            f"{config.train.epochs} epochs"
        )
    # Authoritative copies, rebuilt from the checkpoint's history (the worker's live
    # copies need out_dir on a filesystem the workers share).
    write_metrics_csv(contents.meta.history, out_dir / METRICS_CSV)
    plot_losses(contents.meta.history, out_dir / LOSS_PLOT)
    return _result(out_dir, contents, run_path=run_path, already_complete=False)
