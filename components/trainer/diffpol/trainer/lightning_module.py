"""The LightningModule: one policy model, its EMA, AdamW with warmup + cosine decay."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch

from diffpol.contracts.normalizer import Normalizer
from diffpol.trainer.config import Config, OptimConfig
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
    """Batches are dicts of ``obs`` [B, To*obs_dim] and ``action`` [B, T*act_dim] tensors.

    The validation loss is the EMA model's (the weights that get exported), with noise and
    timesteps drawn from a generator seeded per batch, so epochs are comparable.

    Epoch losses are summed here and read once per epoch (``epoch_losses``) rather than
    passed through ``self.log`` at every step: for a policy this small, ``self.log``'s
    bookkeeping cost about 2 ms a step, as much as the training step itself.
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
        self.config = config
        self.total_steps = total_steps
        self.policy = build_policy_model(config.model, obs_dim, act_dim, normalizer)
        self.ema = EMA(self.policy, config.optim.ema_decay)

    def _reset(self, split: str) -> None:
        setattr(self, f"_{split}_sums", torch.zeros(2, dtype=torch.float64, device=self.device))

    def _accumulate(self, split: str, loss: torch.Tensor, rows: int) -> None:
        sums = getattr(self, f"_{split}_sums")
        sums[0] += loss.detach().double() * rows
        sums[1] += rows

    def on_train_epoch_start(self) -> None:
        self._reset("train")

    def on_validation_epoch_start(self) -> None:
        self._reset("val")

    def epoch_losses(self) -> dict[str, float | None]:
        """Mean train / val loss of the current epoch over all workers (collective: every
        rank must call it)."""
        losses: dict[str, float | None] = {}
        for split in ("train", "val"):
            sums = getattr(self, f"_{split}_sums", None)
            if sums is None:
                losses[f"{split}_loss"] = None
                continue
            total = self.trainer.strategy.reduce(sums.clone(), reduce_op="sum")
            losses[f"{split}_loss"] = float(total[0] / total[1]) if total[1] > 0 else None
        return losses

    def training_step(self, batch, batch_idx):
        loss = self.policy.compute_loss(batch["obs"], batch["action"])
        self._accumulate("train", loss, batch["obs"].shape[0])
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        self.ema.update(self.policy)

    def validation_step(self, batch, batch_idx):
        obs, action = batch["obs"], batch["action"]
        generator = torch.Generator(device=obs.device)
        generator.manual_seed(self.config.train.seed * 1_000_003 + batch_idx)
        loss = self.ema.averaged.compute_loss(obs, action, generator=generator)
        self._accumulate("val", loss, obs.shape[0])
        return loss

    def configure_optimizers(self):
        optim = self.config.optim
        optimizer = make_optimizer(self.policy.parameters(), optim)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, warmup_cosine(self.total_steps, optim.warmup_steps, optim.min_lr_ratio)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }
