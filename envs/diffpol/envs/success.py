"""What "success" means for each env: one definition, used by rollout (dataset summaries)
and the evaluator (success rates) alike.

Success is judged from what every backend returns after each step (observations, the
termination flag, and the env's own per-step success flag where it reports one), so it is
the same whichever backend produced the episode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

PENDULUM_UPRIGHT_ANGLE = 0.5  # rad
PENDULUM_UPRIGHT_SPEED = 1.0  # rad/s
PENDULUM_HOLD_STEPS = 50
MOUNTAIN_CAR_GOAL = 0.45


class SuccessTracker:
    """Per-episode success over a batch of envs, fed one step at a time.

    ``update(obs [B, obs_dim], terminated [B], active [B], reported [B] | None)``: ``active``
    marks envs whose episode was still running at this step; ``reported`` is the env's own
    success flag for the step where it has one (``info["success"]``).
    """

    def update(
        self,
        obs: np.ndarray,
        terminated: np.ndarray,
        active: np.ndarray,
        reported: np.ndarray | None = None,
    ) -> None:
        raise NotImplementedError

    def result(self) -> np.ndarray:
        """bool [B]: which episodes succeeded."""
        raise NotImplementedError


@dataclass(frozen=True)
class SuccessRule:
    """One env's definition of success: the sentence reports print, and its tracker."""

    definition: str
    new_tracker: Callable[[int], SuccessTracker]


class _UprightHold(SuccessTracker):
    """Pendulum: upright and slow after each of the last ``hold`` steps of the episode."""

    def __init__(self, batch: int, hold: int = PENDULUM_HOLD_STEPS) -> None:
        self._run = np.zeros(batch, np.int64)
        self._hold = hold

    def update(self, obs, terminated, active, reported=None) -> None:
        theta = np.arctan2(obs[:, 1], obs[:, 0])
        upright = (np.abs(theta) < PENDULUM_UPRIGHT_ANGLE) & (
            np.abs(obs[:, 2]) < PENDULUM_UPRIGHT_SPEED
        )
        self._run = np.where(active, np.where(upright, self._run + 1, 0), self._run)

    def result(self) -> np.ndarray:
        return self._run >= self._hold


class _ReachedGoal(SuccessTracker):
    """MountainCar: the episode terminated at the goal."""

    def __init__(self, batch: int) -> None:
        self._reached = np.zeros(batch, bool)

    def update(self, obs, terminated, active, reported=None) -> None:
        self._reached |= active & terminated & (obs[:, 0] >= MOUNTAIN_CAR_GOAL)

    def result(self) -> np.ndarray:
        return self._reached.copy()


class _ReportedAtAnyStep(SuccessTracker):
    """The env's own per-step success flag was set at any step of the episode."""

    def __init__(self, batch: int) -> None:
        self._reached = np.zeros(batch, bool)

    def update(self, obs, terminated, active, reported=None) -> None:
        if reported is None:
            raise ValueError("this env's success is the flag it reports; none was given")
        self._reached |= active & np.asarray(reported, bool)

    def result(self) -> np.ndarray:
        return self._reached.copy()


UPRIGHT_HOLD = SuccessRule(
    definition=(
        f"|theta| < {PENDULUM_UPRIGHT_ANGLE} rad and |theta_dot| < {PENDULUM_UPRIGHT_SPEED} "
        f"rad/s after each of the last {PENDULUM_HOLD_STEPS} steps of the episode "
        "(theta = atan2(obs[1], obs[0]); 0 is upright)"
    ),
    new_tracker=_UprightHold,
)
REACHED_GOAL = SuccessRule(
    definition=(
        f"the car reached the goal (position >= {MOUNTAIN_CAR_GOAL}, which terminates the "
        "episode) before the step limit"
    ),
    new_tracker=_ReachedGoal,
)
REPORTED_AT_ANY_STEP = SuccessRule(
    definition="the env reported success (info['success']) at any step of the episode",
    new_tracker=_ReportedAtAnyStep,
)
