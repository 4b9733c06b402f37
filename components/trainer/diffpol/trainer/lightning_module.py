"""The LightningModule: one policy model, its EMA, AdamW with warmup + cosine decay."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch

from diffpol.contracts import derive_seed
from diffpol.contracts.normalizer import Normalizer
from diffpol.trainer.config import Config, OptimConfig, SeedStream
from diffpol.trainer.distributed import GradientAverager, all_reduce_sum, broadcast_from_rank0
from diffpol.trainer.modeling import EMA, build_policy_model


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float):
    """LR multiplier per optimizer step: linear warmup, then cosine down to ``min_ratio``."""
    total_steps = max(total_steps, 1)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def make_optimizer(parameters, optim: OptimConfig) -> torch.optim.AdamW:
    # foreach: one multi-tensor kernel per update instead of a Python loop over tensors
    # (torch only picks it by default on GPUs).
    return torch.optim.AdamW(
        parameters, lr=optim.lr, weight_decay=optim.weight_decay, betas=optim.betas, foreach=True
    )


class PolicyLightningModule(pl.LightningModule):
    """Lightning batches are *blocks*: dicts of ``obs`` [N, To*obs_dim] and ``action``
    [N, T*act_dim] tensors holding several minibatches. Each ``batch_size`` slice of a
    training block is one optimizer step (manual optimization), its gradients averaged
    over the workers (``distributed``).

    Why: Lightning's per-batch bookkeeping (hooks, progress, closure) and its per-step
    hooks cost a sizeable fraction of a whole training step of this small policy
    (benchmarks/RESULTS.md, "Measurements behind design choices"). Lightning still runs
    the epochs, validation, callbacks and progress bar, and checkpoints the optimizer and
    LR-schedule state; the LR schedule counts the optimizer steps (``optimizer_steps``).

    The validation loss is the EMA model's (the weights that get exported), with noise and
    timesteps drawn from a generator seeded per block, so epochs are comparable.

    Epoch losses are summed here and read once per epoch (``epoch_losses``) rather than
    passed through ``self.log`` at every step: for a policy this small, ``self.log``'s
    bookkeeping costs as much as the training step itself.
    """

    def __init__(
        self,
        config: Config,
        obs_dim: int,
        act_dim: int,
        normalizer: Normalizer,
        total_steps: int,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.config = config
        self.total_steps = total_steps
        self.policy = build_policy_model(config.model, obs_dim, act_dim, normalizer)
        self.ema = EMA(self.policy, config.optim.ema_decay)
        self._average_gradients = GradientAverager(self.policy.parameters())

    @property
    def optimizer_steps(self) -> int:
        """Optimizer steps taken, restored with the checkpoint (the LR schedule is stepped
        once per optimizer step; Lightning's ``global_step`` counts only its own optimizer
        wrapper's steps)."""
        return int(self.lr_schedulers().last_epoch)

    def on_fit_start(self) -> None:
        # Replicas must start equal (fresh or restored, they do; this makes it a fact).
        broadcast_from_rank0(self)

    def _reset(self, split: str) -> None:
        # (loss, rows) per step, summed once per epoch: adding into a running tensor costs
        # four small ops a step (a few percent of a training step).
        setattr(self, f"_{split}_losses", [])

    def _accumulate(self, split: str, loss: torch.Tensor, rows: int) -> None:
        getattr(self, f"_{split}_losses").append((loss.detach(), rows))

    def on_train_epoch_start(self) -> None:
        self._reset("train")

    def on_validation_epoch_start(self) -> None:
        self._reset("val")

    def epoch_losses(self) -> dict[str, float | None]:
        """Mean train / val loss of the current epoch over all workers (collective: every
        rank must call it)."""
        losses: dict[str, float | None] = {}
        for split in ("train", "val"):
            steps = getattr(self, f"_{split}_losses", None)
            if steps is None:
                losses[f"{split}_loss"] = None
                continue
            sums = torch.zeros(2, dtype=torch.float64, device=self.device)
            if steps:
                values = torch.stack([loss for loss, _ in steps]).double()
                rows = torch.tensor([r for _, r in steps], dtype=torch.float64, device=self.device)
                sums = torch.stack([(values * rows).sum(), rows.sum()])
            total = all_reduce_sum(sums)
            losses[f"{split}_loss"] = float(total[0] / total[1]) if total[1] > 0 else None
        return losses

    def training_step(self, block, block_idx) -> None:
        optimizer = self.optimizers(use_pl_optimizer=False)
        scheduler = self.lr_schedulers()
        obs, action = block["obs"], block["action"]
        batch_size = self.config.train.batch_size
        for start in range(0, obs.shape[0], batch_size):
            loss = self.policy.compute_loss(
                obs[start : start + batch_size], action[start : start + batch_size]
            )
            optimizer.zero_grad()
            loss.backward()
            self._average_gradients()
            optimizer.step()
            scheduler.step()
            self.ema.update(self.policy)
            self._accumulate("train", loss, min(batch_size, obs.shape[0] - start))

    def validation_step(self, block, block_idx) -> None:
        obs, action = block["obs"], block["action"]
        generator = torch.Generator(device=obs.device)
        generator.manual_seed(derive_seed(self.config.train.seed, SeedStream.VALIDATION, block_idx))
        loss = self.ema.averaged.compute_loss(obs, action, generator=generator)
        self._accumulate("val", loss, obs.shape[0])

    def configure_optimizers(self):
        optim = self.config.optim
        optimizer = make_optimizer(self.policy.parameters(), optim)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(self.total_steps, optim.warmup_steps, optim.min_lr_ratio)
        )
        # Stepped once per optimizer step by training_step (manual optimization).
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
