"""Activations written for fast ONNX inference."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class FastMish(nn.Module):
    """Mish, x * tanh(softplus(x)), with softplus as relu(x) + log1p(exp(-|x|)): same values
    as ``nn.Mish``, but onnxruntime runs it as cheap vectorised elementwise ops instead of
    its scalar Softplus kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.tanh(F.relu(x) + torch.log1p(torch.exp(-x.abs())))
