"""The evaluator's view of rollout's env registry and batched env factory.

Rollout's envs return rewards as float32 (the Transition schema's type); the evaluator sums
them in float64 in step order, so a return is exactly the float64 sum of float32 rewards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from diffpol.evaluator.errors import EvaluationConfigError

AUTO_BACKEND = "auto"


@dataclass(frozen=True)
class EnvInfo:
    env_id: str
    obs_dim: int
    act_dim: int
    max_episode_steps: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    # The registry's own notion of a good episode: return >= threshold (see summary.json).
    return_threshold: float | None = None
    return_threshold_definition: str = ""


def env_info(env_id: str) -> EnvInfo:
    """Look ``env_id`` up in rollout's registry; unknown ids raise with the known ones listed."""
    from diffpol.rollout.envs import get_env_spec

    try:
        spec = get_env_spec(env_id)
    except (KeyError, ValueError) as exc:
        raise EvaluationConfigError(str(exc).strip("'\"")) from None
    threshold = getattr(spec, "success_threshold", None)
    return EnvInfo(
        env_id=spec.env_id,
        obs_dim=int(spec.obs_dim),
        act_dim=int(spec.act_dim),
        max_episode_steps=int(spec.max_episode_steps),
        action_low=tuple(float(x) for x in spec.action_low),
        action_high=tuple(float(x) for x in spec.action_high),
        return_threshold=float(threshold) if threshold is not None else None,
        return_threshold_definition=str(getattr(spec, "success_definition", "")),
    )


def resolve_backend(env_id: str, backend: str) -> str:
    """The backend ``backend`` ("auto", "numpy", "envpool", "gymnasium") means for ``env_id``."""
    from diffpol.rollout.envs import resolve_backend as rollout_resolve

    try:
        return rollout_resolve(env_id, backend)
    except ValueError as exc:
        raise EvaluationConfigError(f"env backend: {exc}") from None


class VectorEnvAdapter:
    """A batch of envs made by rollout's factory, one per seed, as ``episodes.BatchEnv``."""

    def __init__(self, env_id: str, seeds: Sequence[int], backend: str) -> None:
        from diffpol.rollout.envs import make_vector_env

        self._env = make_vector_env(env_id, len(seeds), list(seeds), backend=backend)
        self.backend: str = self._env.backend

    def reset(self) -> np.ndarray:
        return self._env.reset()

    def step(self, actions: np.ndarray):
        result = self._env.step(actions)
        return result.obs, result.reward, result.terminated, result.truncated

    def close(self) -> None:
        self._env.close()
