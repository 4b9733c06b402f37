from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from diffpol.diffusion.activations import FastMish
from diffpol.diffusion.embedding import sinusoidal_embedding


def test_sinusoidal_embedding():
    emb = sinusoidal_embedding(torch.tensor([0.0, 5.0]), 16)
    assert emb.shape == (2, 16)
    torch.testing.assert_close(emb[0], torch.cat([torch.zeros(8), torch.ones(8)]))
    # The first frequency is 1: sin(t), cos(t); the last 10_000^(-7/8).
    assert emb[1, 0].item() == pytest.approx(math.sin(5.0), abs=1e-6)
    assert emb[1, 8].item() == pytest.approx(math.cos(5.0), abs=1e-6)
    assert emb[1, 7].item() == pytest.approx(math.sin(5.0 * 10_000 ** (-7 / 8)), abs=1e-6)


def test_fast_mish_equals_mish():
    x = torch.linspace(-30, 30, 2001)
    torch.testing.assert_close(FastMish()(x), F.mish(x), atol=1e-6, rtol=1e-5)
