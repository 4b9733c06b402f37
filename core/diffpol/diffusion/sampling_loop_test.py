from __future__ import annotations

import pytest
import torch
from torch import nn

from diffpol.diffusion.sampling_loop import SamplingLoopSpec, StepUpdate


def _update(t: int, std: float = 0.0) -> StepUpdate:
    return StepUpdate(t, 1.0, 0.0, 0.5, 0.5, std)


def test_a_spec_counts_its_noisy_steps_and_lists_its_timesteps():
    spec = SamplingLoopSpec(
        nn.Identity(), torch.zeros(3, 8), (_update(9, 0.1), _update(5, 0.2), _update(0)), 1.0
    )
    assert spec.timesteps == (9, 5, 0)
    assert spec.step_noise_steps == 2


def test_inconsistent_specs_are_rejected():
    with pytest.raises(ValueError, match="at least one step"):
        SamplingLoopSpec(nn.Identity(), torch.zeros(0, 8), (), None)
    with pytest.raises(ValueError, match=r"time_features must be \[steps, dim\]"):
        SamplingLoopSpec(nn.Identity(), torch.zeros(2, 8), (_update(0),), None)
    with pytest.raises(ValueError, match="clip_range"):
        SamplingLoopSpec(nn.Identity(), torch.zeros(1, 8), (_update(0),), 0.0)
    with pytest.raises(ValueError, match="noise_std"):
        _update(0, -1.0)
