"""Data parallelism across Ray Train workers without DDP: replicas start equal and average
their gradients with one flat all-reduce per optimizer step.

Why not Lightning's DDP strategy: its per-step hooks (``manual_backward``, the Lightning
optimizer's step) cost a noticeable share of a training step of a small control policy
(benchmarks/RESULTS.md), and a 40k-parameter model needs no gradient bucketing. Ray Train sets
up the process group (gloo on CPU, NCCL on GPU) before the training function runs.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def world_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise sum over all workers (collective: every worker must call it)."""
    if world_size() > 1:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_from_rank0(module: nn.Module) -> None:
    """Every worker's parameters and buffers become rank 0's (collective)."""
    if world_size() > 1:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


class GradientAverager:
    """Replaces each parameter's gradient by its mean over the workers (collective)."""

    def __init__(self, parameters: Iterable[nn.Parameter]) -> None:
        self.parameters = [p for p in parameters if p.requires_grad]

    def __call__(self) -> None:
        size = world_size()
        if size == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(size)
        for parameter, mean in zip(
            self.parameters, flat.split([p.numel() for p in self.parameters]), strict=True
        ):
            parameter.grad = mean.view_as(parameter)
