"""What "success" means per env and which variables a trajectory plot shows.

Success is judged from the observations after each step (and the termination flag), so it
is the same whichever env backend produced them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffpol.evaluator.errors import EvaluationConfigError

PENDULUM_UPRIGHT_ANGLE = 0.5  # rad
PENDULUM_UPRIGHT_SPEED = 1.0  # rad/s
PENDULUM_HOLD_STEPS = 50
MOUNTAIN_CAR_GOAL = 0.45


class SuccessTracker:
    """Accumulates per-episode success over a batch, one env step at a time."""

    def update(self, obs: np.ndarray, terminated: np.ndarray, active: np.ndarray) -> None:
        raise NotImplementedError

    def result(self) -> np.ndarray:
        raise NotImplementedError


class _UprightHold(SuccessTracker):
    """Pendulum: success iff upright and slow for the last ``hold`` steps of the episode."""

    def __init__(self, batch: int, hold: int) -> None:
        self._run = np.zeros(batch, np.int64)
        self._hold = hold

    def update(self, obs: np.ndarray, terminated: np.ndarray, active: np.ndarray) -> None:
        theta = np.arctan2(obs[:, 1], obs[:, 0])
        upright = (np.abs(theta) < PENDULUM_UPRIGHT_ANGLE) & (
            np.abs(obs[:, 2]) < PENDULUM_UPRIGHT_SPEED
        )
        self._run = np.where(active, np.where(upright, self._run + 1, 0), self._run)

    def result(self) -> np.ndarray:
        return self._run >= self._hold


class _ReachedGoal(SuccessTracker):
    """MountainCar: success iff the episode terminated (the car reached the goal)."""

    def __init__(self, batch: int) -> None:
        self._reached = np.zeros(batch, bool)

    def update(self, obs: np.ndarray, terminated: np.ndarray, active: np.ndarray) -> None:
        self._reached |= active & terminated & (obs[:, 0] >= MOUNTAIN_CAR_GOAL)

    def result(self) -> np.ndarray:
        return self._reached.copy()


@dataclass(frozen=True)
class TaskView:
    env_id: str
    success_definition: str
    state_label: str
    action_label: str
    # The plotted state is an angle wrapped to [-pi, pi]: plots break the line at wraps.
    state_is_angle: bool = False

    def new_tracker(self, batch: int) -> SuccessTracker:
        if self.env_id == "Pendulum-v1":
            return _UprightHold(batch, PENDULUM_HOLD_STEPS)
        return _ReachedGoal(batch)

    def plotted_state(self, obs: np.ndarray) -> np.ndarray:
        """The state variable a trajectory plot shows, from observations ``[..., obs_dim]``."""
        if self.env_id == "Pendulum-v1":
            return np.arctan2(obs[..., 1], obs[..., 0])
        return obs[..., 0]


_VIEWS = {
    "Pendulum-v1": TaskView(
        env_id="Pendulum-v1",
        success_definition=(
            f"|theta| < {PENDULUM_UPRIGHT_ANGLE} rad and |theta_dot| < "
            f"{PENDULUM_UPRIGHT_SPEED} rad/s after each of the last {PENDULUM_HOLD_STEPS} "
            "steps of the episode (theta = atan2(obs[1], obs[0]); 0 is upright)"
        ),
        state_label="angle theta (rad, 0 = upright)",
        action_label="torque",
        state_is_angle=True,
    ),
    "MountainCarContinuous-v0": TaskView(
        env_id="MountainCarContinuous-v0",
        success_definition=(
            f"the car reached the goal (position >= {MOUNTAIN_CAR_GOAL}, which terminates the "
            "episode) before the step limit"
        ),
        state_label="position",
        action_label="force",
    ),
}


def task_view(env_id: str) -> TaskView:
    try:
        return _VIEWS[env_id]
    except KeyError:
        raise EvaluationConfigError(
            f"the evaluator has no success definition for env {env_id!r}; "
            f"supported: {', '.join(sorted(_VIEWS))}"
        ) from None
