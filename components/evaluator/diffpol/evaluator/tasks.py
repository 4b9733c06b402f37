"""How the evaluator shows an env: which variable a trajectory plot draws, and the env's
one definition of success (``diffpol.envs``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffpol.envs import SuccessTracker, get_env_spec
from diffpol.evaluator.errors import EvaluationConfigError


@dataclass(frozen=True)
class TaskView:
    env_id: str
    state_label: str
    action_label: str
    # The plotted state is an angle wrapped to [-pi, pi]: plots break the line at wraps.
    state_is_angle: bool = False

    @property
    def success_definition(self) -> str:
        return get_env_spec(self.env_id).success.definition

    def new_tracker(self, batch: int) -> SuccessTracker:
        return get_env_spec(self.env_id).success.new_tracker(batch)

    def plotted_state(self, obs: np.ndarray) -> np.ndarray:
        """The state variable a trajectory plot shows, from observations ``[..., obs_dim]``."""
        if self.state_is_angle:
            return np.arctan2(obs[..., 1], obs[..., 0])
        return obs[..., 0]


_VIEWS = {
    "Pendulum-v1": TaskView(
        env_id="Pendulum-v1",
        state_label="angle theta (rad, 0 = upright)",
        action_label="torque",
        state_is_angle=True,
    ),
    "MountainCarContinuous-v0": TaskView(
        env_id="MountainCarContinuous-v0",
        state_label="position",
        action_label="force",
    ),
}


def task_view(env_id: str) -> TaskView:
    if env_id.startswith("metaworld/"):
        get_env_spec(env_id)  # an unknown task is an error naming the known ones
        return TaskView(env_id=env_id, state_label="hand x (m)", action_label="dx")
    try:
        return _VIEWS[env_id]
    except KeyError:
        raise EvaluationConfigError(
            f"the evaluator has no view of env {env_id!r}; supported: {', '.join(sorted(_VIEWS))}"
        ) from None
