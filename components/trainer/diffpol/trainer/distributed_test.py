"""Data parallelism: gradients averaged over real processes, replicas equal after training."""

from __future__ import annotations

import hashlib
import sys

import lightning.pytorch as pl
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from diffpol.contracts import Window
from diffpol.trainer import Config, ModelConfig, OptimConfig, TrainConfig, train
from diffpol.trainer.distributed import GradientAverager, all_reduce_sum, world_rank
from diffpol.trainer.synthetic import bimodal_samples, write_samples


def _average_in_a_group(rank: int, init_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        layer = torch.nn.Linear(3, 2)
        # Rank r's gradients are all r + 1; the bias of rank 1 has none (treated as zero).
        for p in layer.parameters():
            p.grad = torch.full_like(p, rank + 1.0)
        if rank == 1:
            layer.bias.grad = None
        GradientAverager(layer.parameters())()
        total = all_reduce_sum(torch.tensor([rank + 1.0]))
        results[rank] = (layer.weight.grad.clone(), layer.bias.grad.clone(), total)
    finally:
        dist.destroy_process_group()


def test_every_worker_gets_the_mean_gradient(tmp_path):
    results = mp.Manager().dict()
    mp.spawn(_average_in_a_group, args=(str(tmp_path / "init"), results), nprocs=2)
    for rank in (0, 1):
        weight, bias, total = results[rank]
        torch.testing.assert_close(weight, torch.full((2, 3), 1.5))
        torch.testing.assert_close(bias, torch.full((2,), 0.5))
        assert total.item() == 3.0


def test_a_single_process_is_left_alone():
    layer = torch.nn.Linear(3, 2)
    for p in layer.parameters():
        p.grad = torch.ones_like(p)
    GradientAverager(layer.parameters())()
    assert torch.equal(layer.weight.grad, torch.ones(2, 3))
    assert world_rank() == 0


class ReplicaDigest(pl.Callback):
    """Writes a digest of each worker's trained weights to ``<dir>/rank<r>``."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    def on_train_end(self, trainer, pl_module) -> None:
        digest = hashlib.sha256()
        for name, tensor in sorted(pl_module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        with open(f"{self.directory}/rank{world_rank()}", "w") as f:
            f.write(digest.hexdigest())


def test_two_workers_train_equal_replicas_on_their_own_shards(ray_local, tmp_path):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    obs, action = bimodal_samples(600, n_obs_steps=1, horizon=1, seed=2)
    samples = write_samples(tmp_path / "samples", obs, action, val_fraction=0.0)
    config = Config(
        model=ModelConfig(window=Window(1, 1), hidden_width=16, depth=1),
        optim=OptimConfig(warmup_steps=1),
        train=TrainConfig(epochs=2, batch_size=50, workers=2, cpus_per_worker=0.5, max_failures=0),
    )
    result = train(samples, tmp_path / "out", config, callbacks=[ReplicaDigest(str(tmp_path))])
    digests = {path.name: path.read_text() for path in tmp_path.glob("rank*")}
    assert sorted(digests) == ["rank0", "rank1"]
    # Different shards, same weights: the gradients were averaged at every step.
    assert digests["rank0"] == digests["rank1"]
    # 600 rows in two shards of 300, batch 50: 6 steps per epoch on each worker.
    assert result.metrics["global_step"] == 12
