"""What runs inside each Ray Train worker: Lightning over this worker's Ray Data shard.

One Ray Train run trains one or more policies on the same data, one after the other in
the same worker processes (a run's fixed cost, the controller, worker and dataset actors,
is paid once). Per epoch, after validation, every worker saves Lightning's training state
and rank 0 adds the policy weights and JSON sidecars; the run's checkpoint for that epoch
holds one directory per policy trained so far (see ``PolicyStates``). After a worker
failure (or when the same run is started again) Ray Train hands the latest checkpoint
back: finished policies are skipped and the interrupted one resumes in Lightning.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pyarrow as pa
import torch
from ray.data.collate_fn import ArrowBatchCollateFn

from diffpol.contracts import derive_seed
from diffpol.contracts.normalizer import Normalizer
from diffpol.contracts.samples import sample_arrays
from diffpol.trainer.checkpoint import (
    LIGHTNING_FILE,
    META_FILE,
    CheckpointMeta,
    package_versions,
    save_policy_weights,
    write_sidecars,
)
from diffpol.trainer.config import Config, SeedStream
from diffpol.trainer.distributed import world_rank, world_size
from diffpol.trainer.lightning_module import PolicyLightningModule
from diffpol.trainer.metrics import (
    LOSS_PLOT,
    METRICS_CSV,
    TENSORBOARD_DIR,
    TensorBoardScalars,
    format_epoch_line,
    plot_losses,
    write_metrics_csv,
)

log = logging.getLogger("diffpol.trainer")

# Seconds between redraws of the live loss plot (workers).
LIVE_PLOT_INTERVAL_S = 30.0


def checkpoint_dir_name(policy: str, epoch: int) -> str:
    return f"{policy}_epoch_{epoch:04d}"


class PolicyStates:
    """This worker's copy of the run's latest checkpoint: one directory per policy
    (``checkpoint``'s layout), each the latest state of that policy. Every epoch's report
    carries all of them, so any one checkpoint restores the whole run; they are small (a
    Pendulum policy with its optimiser state is ~1 MB)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def restore(self) -> None:
        """Fill in the checkpoint Ray Train handed this attempt (after a failure or a
        re-run), if any."""
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            checkpoint.to_directory(str(self.root))

    def meta(self, policy: str) -> CheckpointMeta | None:
        path = self.root / policy / META_FILE
        if not path.is_file():
            return None
        return CheckpointMeta.from_json(json.loads(path.read_text()))

    def lightning_file(self, policy: str) -> Path | None:
        path = self.root / policy / LIGHTNING_FILE
        return path if path.is_file() else None

    def replace(self, policy: str, write) -> None:
        """``write(directory)`` fills a fresh directory that becomes the policy's state."""
        staging = self.root.parent / f"{policy}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        write(staging)
        target = self.root / policy
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)


class EpochCheckpointReporter(pl.Callback):
    """Checkpoint + metrics every epoch; the metric history is part of its state."""

    def __init__(
        self,
        policy: str,
        states: PolicyStates,
        config: Config,
        normalizer: Normalizer,
        data: dict[str, Any],
        out_dir: str | None,
    ) -> None:
        self.policy, self.states = policy, states
        self.config = config
        self.normalizer = normalizer
        self.data = data
        self.out_dir = Path(out_dir) if out_dir else None
        self.history: list[dict[str, Any]] = []
        self._tensorboard: TensorBoardScalars | None = None
        self._epoch_start = self._train_end = 0.0
        self._train_samples = 0
        self._last_plot = -math.inf

    # The history is restored with Lightning's checkpoint, so it survives restarts.
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict["history"])

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = self._train_end = time.perf_counter()
        self._train_samples = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._train_samples += int(batch["obs"].shape[0])
        self._train_end = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        import ray.train

        epoch = trainer.current_epoch
        row = self._epoch_row(trainer, pl_module, epoch)
        self.history = [r for r in self.history if r["epoch"] < epoch] + [row]
        meta = CheckpointMeta(
            epochs_completed=epoch + 1,
            epochs_total=self.config.train.epochs,
            global_step=pl_module.optimizer_steps,
            data=self.data,
            versions=package_versions(),
            history=self.history,
        )
        rank0 = world_rank() == 0
        checkpoint = None
        if rank0:
            # Replicas are equal: rank 0's state is the run's.
            def write(directory: Path) -> None:
                trainer.save_checkpoint(directory / LIGHTNING_FILE, weights_only=False)
                save_policy_weights(directory, pl_module.policy, pl_module.ema.averaged)
                write_sidecars(directory, self.config, self.normalizer, meta)

            self.states.replace(self.policy, write)
            checkpoint = ray.train.Checkpoint.from_directory(self.states.root)
        # Ray Train copies the directory to the run's storage before report() returns.
        ray.train.report(
            {"policy": self.policy, **{k: v for k, v in row.items() if v is not None}},
            checkpoint=checkpoint,
            checkpoint_dir_name=checkpoint_dir_name(self.policy, epoch),
        )
        if rank0:
            self._publish(row)

    def _epoch_row(self, trainer, pl_module, epoch: int) -> dict[str, Any]:
        losses = pl_module.epoch_losses()
        train_seconds = self._train_end - self._epoch_start
        samples = self._train_samples * world_size()
        return {
            "epoch": epoch,
            "train_loss": losses["train_loss"],
            "val_loss": losses["val_loss"],
            "lr": float(trainer.optimizers[0].param_groups[0]["lr"]),
            "global_step": pl_module.optimizer_steps,
            "epoch_time_s": round(time.perf_counter() - self._epoch_start, 4),
            "train_samples_per_s": round(samples / train_seconds, 1) if train_seconds > 0 else None,
        }

    def _publish(self, row: dict[str, Any]) -> None:
        """Live outputs for someone watching: log line, CSV, plot, TensorBoard."""
        # A logger, not print: Ray Train V2 tees print() into its logger, doubling lines.
        log.info(format_epoch_line(row, self.config.train.epochs))
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_metrics_csv(self.history, self.out_dir / METRICS_CSV)
        # Drawing the plot takes about a third of a Pendulum epoch: redraw it now
        # and then (and after the last epoch); the driver redraws it from the final
        # checkpoint in any case.
        now = time.perf_counter()
        last_epoch = row["epoch"] + 1 >= self.config.train.epochs
        if last_epoch or now - self._last_plot >= LIVE_PLOT_INTERVAL_S:
            plot_losses(self.history, self.out_dir / LOSS_PLOT)
            self._last_plot = now
        if self._tensorboard is None:
            self._tensorboard = TensorBoardScalars(
                self.out_dir / TENSORBOARD_DIR, purge_step=row["epoch"]
            )
        self._tensorboard.log(row)

    def on_fit_end(self, trainer, pl_module) -> None:
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None


class SampleTensors(ArrowBatchCollateFn):
    """An Arrow batch of samples as ``obs`` / ``action`` float32 tensors (the other columns
    are not needed for training). Ray's default conversion handles every column on a pool
    of threads and is several times slower per epoch (benchmarks/RESULTS.md)."""

    def __call__(self, batch: pa.Table) -> dict[str, torch.Tensor]:
        return {name: torch.from_numpy(values) for name, values in sample_arrays(batch).items()}


class ShardBlocks:
    """Blocks of ``steps_per_block`` minibatches from a Ray Data shard, re-iterable once
    per epoch; the module steps through each block (see ``PolicyLightningModule``).

    Ray Data hands over one block at a time (one ``iter_torch_batches`` batch). Ray Data's
    and Lightning's costs are per batch, and together they can exceed a whole training
    step of a small control policy at batch 256, so a block holds 64 minibatches
    (benchmarks/trainer_bench_test.py; the measurements are in benchmarks/RESULTS.md).

    When shuffling, rows pass through a shuffle buffer of ``shuffle_buffer_rows`` kept
    here as tensors: each block is a uniform random draw from the rows buffered so far,
    and every row is yielded exactly once per epoch. Ray Data's own local shuffle buffer
    (``local_shuffle_buffer_size``) does the same on Arrow tables at a higher cost per
    epoch. Batches are converted on this thread (``prefetch_batches=0``): Ray Data's
    prefetch thread contends for the GIL with the training loop.

    Each epoch's first block waits while Ray Data starts the epoch's execution (under a
    tenth of an epoch of a 3x64 model). With ``epochs`` given, the next epoch is started in
    the background as soon as this one's last Ray batch is in, while the model still trains
    on the buffer's last rows.
    """

    def __init__(
        self,
        shard,
        batch_size: int,
        *,
        shuffle: bool,
        shuffle_buffer_rows: int = 0,
        steps_per_block: int = 64,
        seed: int = 0,
        epochs: int = 0,
    ) -> None:
        self.shard = shard
        self.shuffle = shuffle
        self.shuffle_buffer_rows = shuffle_buffer_rows
        self.block_rows = batch_size * steps_per_block
        self._generator = torch.Generator().manual_seed(seed)
        self._epochs_left = epochs  # epochs still to be iterated, when known
        self._next_epoch: Future | None = None
        # Only a shard iterated for several known epochs opens the next one early.
        self._opener = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="next-epoch")
            if epochs > 1
            else None
        )

    def _open_epoch(self) -> tuple[Iterator[dict[str, torch.Tensor]], dict | None]:
        """An epoch's Ray batches and its first one (the wait for which starts the epoch)."""
        batches = self.shard.iter_torch_batches(
            batch_size=self.block_rows, collate_fn=SampleTensors(), prefetch_batches=0
        )
        batches = iter(batches)
        return batches, next(batches, None)

    def _ray_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        self._epochs_left -= 1
        opening, self._next_epoch = self._next_epoch, None
        batches, first = opening.result() if opening is not None else self._open_epoch()
        yield from itertools.chain([] if first is None else [first], batches)
        if self._epochs_left > 0 and self._opener is not None:
            self._next_epoch = self._opener.submit(self._open_epoch)

    def __iter__(self):
        if not self.shuffle:
            yield from self._ray_batches()
            return
        buffered: dict[str, torch.Tensor] | None = None
        for incoming in self._ray_batches():
            buffered = incoming if buffered is None else _concat(buffered, incoming)
            while _rows(buffered) >= self.shuffle_buffer_rows + self.block_rows:
                order = torch.randperm(_rows(buffered), generator=self._generator)
                yield _take(buffered, order[: self.block_rows])
                buffered = _take(buffered, order[self.block_rows :])
        if buffered is not None:  # the epoch's last rows, in random order
            order = torch.randperm(_rows(buffered), generator=self._generator)
            for start in range(0, len(order), self.block_rows):
                yield _take(buffered, order[start : start + self.block_rows])


def _rows(columns: dict[str, torch.Tensor]) -> int:
    return next(iter(columns.values())).shape[0]


def _concat(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([a[k], b[k]]) for k in a}


def _take(columns: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v.index_select(0, index) for k, v in columns.items()}


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Trains ``loop_config["policies"]`` in order, each a dict of ``name``, ``config``,
    ``out_dir``, ``callbacks`` and its data (``training._policy_data``: normalizer, data
    description, train rows and the names of its train and val datasets)."""
    import ray.train

    warnings.filterwarnings("ignore", message="barrier.*using the device under current context")
    # Lightning suggests DataLoader workers; batches come from Ray Data, which has its own.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`IterableDataset` has `__len__`.*")
    # The EMA copy is in eval mode on purpose.
    warnings.filterwarnings(
        "ignore", message=".*module\\(s\\) in eval mode at the start of training.*"
    )
    # Lightning 2.6 on torch 2.13 (internal, harmless).
    warnings.filterwarnings(
        "ignore", message=".*isinstance\\(treespec, LeafSpec\\)` is deprecated.*"
    )
    logging.getLogger("diffpol.trainer").setLevel(logging.INFO)
    # Lightning's start-up banners (GPU/TPU availability, tips) would print twice.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)

    policies = loop_config["policies"]
    # The run's resources are the same for every policy (``training.run_settings``).
    cpus = Config.from_json(policies[0]["config"]).train.cpus_per_worker
    # As many intra-op threads as the worker has CPUs. Ray sets OMP_NUM_THREADS for the
    # worker, but torch in Ray Train's training thread still starts one per core: on a
    # 2-core machine shared with the evaluator, that oversubscription (OpenMP threads spin
    # while they wait) made the default pipeline's training ~4x slower than the same run
    # alone.
    torch.set_num_threads(max(1, math.floor(cpus)))
    shards = {}  # one iterator per dataset, shared by the policies that train on it

    def shard(name: str | None):
        if name is not None and name not in shards:
            shards[name] = ray.train.get_dataset_shard(name)
        return shards.get(name)

    with tempfile.TemporaryDirectory(prefix="diffpol-train-") as tmp:
        states = PolicyStates(Path(tmp) / "states")
        states.restore()
        for policy in policies:
            train_shard, val_shard = shard(policy["train_dataset"]), shard(policy["val_dataset"])
            _train_policy(policy, states, train_shard, val_shard)


def _train_policy(policy: dict[str, Any], states: PolicyStates, train_shard, val_shard) -> None:
    import ray.train
    import ray.train.torch
    from lightning.pytorch.strategies import SingleDeviceStrategy

    name = policy["name"]
    config = Config.from_json(policy["config"])
    normalizer = Normalizer.from_json(policy["normalizer"])
    data = policy["data"]
    rank = ray.train.get_context().get_world_rank()
    restored = states.meta(name)
    epochs_done = restored.epochs_completed if restored else 0
    if epochs_done >= config.train.epochs:
        if rank == 0:
            log.info("%s: all %d epochs trained; nothing to do", name, config.train.epochs)
        return
    if rank == 0 and restored is not None:
        log.info(
            "%s: resuming after epoch %d of %d from the latest checkpoint",
            name,
            epochs_done,
            config.train.epochs,
        )
    torch.manual_seed(derive_seed(config.train.seed, SeedStream.INIT, rank))
    batch_size = config.train.batch_size
    train_blocks = ShardBlocks(
        train_shard,
        batch_size,
        shuffle=True,
        shuffle_buffer_rows=config.train.shuffle_buffer_rows,
        # A different permutation stream per attempt: a resumed run does not replay.
        seed=derive_seed(config.train.seed, SeedStream.SHUFFLE, rank, epochs_done),
        epochs=config.train.epochs - epochs_done,
    )
    val_blocks = None if val_shard is None else ShardBlocks(val_shard, batch_size, shuffle=False)
    steps = steps_per_epoch(policy["train_rows"], world_size(), batch_size)
    module = PolicyLightningModule(
        config,
        obs_dim=data["obs_dim"],
        act_dim=data["act_dim"],
        normalizer=normalizer,
        total_steps=steps * config.train.epochs,
    )
    if config.model.objective == "consistency":
        _attach_teacher(module, states, config, data, fresh=restored is None)
    reporter = EpochCheckpointReporter(name, states, config, normalizer, data, policy["out_dir"])
    with tempfile.TemporaryDirectory(prefix=f"diffpol-{name}-") as scratch:
        trainer = pl.Trainer(
            max_epochs=config.train.epochs,
            accelerator="auto" if config.train.gpus > 0 else "cpu",
            # Each worker trains its replica on its device; gradients are averaged across
            # workers by the module (see ``distributed``), not by a Lightning DDP strategy.
            strategy=SingleDeviceStrategy(device=ray.train.torch.get_device()),
            callbacks=[reporter, *policy["callbacks"]],
            enable_checkpointing=False,
            logger=False,
            enable_progress_bar=config.train.progress_bar and rank == 0,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            **({} if val_blocks is not None else {"limit_val_batches": 0}),
            default_root_dir=scratch,
        )
        lightning_file = states.lightning_file(name)
        trainer.fit(
            module,
            train_dataloaders=train_blocks,
            val_dataloaders=val_blocks,
            ckpt_path=str(lightning_file) if lightning_file else None,
            weights_only=True,
        )


def _attach_teacher(module, states: PolicyStates, config: Config, data, *, fresh: bool) -> None:
    """A consistency policy's teacher, trained earlier in this run, goes to the student and
    its EMA copy; a fresh student starts as the teacher (a resumed one is restored)."""
    from diffpol.trainer.fewstep import load_teacher

    teacher = load_teacher(
        states.root / config.model.teacher, config.model, data["obs_dim"], data["act_dim"]
    )
    for student in (module.policy, module.ema.averaged):
        student.set_teacher(teacher)
        if fresh:
            student.load_state_dict(teacher.state_dict())


def steps_per_epoch(train_rows: int, workers: int, batch_size: int) -> int:
    """Optimizer steps per epoch: each worker gets an equal shard of the rows."""
    return max(1, math.ceil((train_rows // workers) / batch_size))
