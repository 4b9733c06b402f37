"""The policy interface shared by data policies, trained policies and remote samplers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class PolicySpec:
    """What a policy consumes and produces.

    A policy sees the last ``n_obs_steps`` observations and returns ``n_action_steps``
    actions to execute before it is asked again (receding horizon).
    """

    obs_dim: int
    act_dim: int
    n_obs_steps: int = 1
    n_action_steps: int = 1


@runtime_checkable
class Policy(Protocol):
    spec: PolicySpec

    def act(self, obs: np.ndarray, seed: int | None = None) -> np.ndarray:
        """Map observations ``[B, n_obs_steps, obs_dim]`` (float32, env units) to actions
        ``[B, n_action_steps, act_dim]`` (float32, env units). ``seed`` fixes any noise the
        policy draws (see ``draw_noise``), so evaluation is reproducible."""
        ...
