"""The evaluator's use of ``diffpol.envs``: env specs and backends with the evaluator's
error type, and the batched envs an episode chunk steps.

The envs return rewards as float32 (the Transition schema's type); the evaluator sums
them in float64 in step order, so a return is exactly the float64 sum of float32 rewards.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from diffpol import envs
from diffpol.evaluator.errors import EvaluationConfigError


def env_spec(env_id: str) -> envs.EnvSpec:
    """The env's spec; an unknown id raises with the known ones listed."""
    try:
        return envs.get_env_spec(env_id)
    except (KeyError, ValueError) as exc:
        raise EvaluationConfigError(str(exc).strip("'\"")) from None


def resolve_backend(env_id: str, backend: str) -> str:
    """The backend ``backend`` ("auto", "numpy", "envpool", "gymnasium") means for ``env_id``."""
    try:
        return envs.resolve_backend(env_id, backend)
    except ValueError as exc:
        raise EvaluationConfigError(f"env backend: {exc}") from None


class VectorEnvAdapter:
    """A batch of envs, one per seed, as ``episodes.BatchEnv``; ``use_seeds`` points it at
    the next chunk's seeds, so one batch serves every chunk of its size (building a MuJoCo
    env costs far more than an episode's worth of its steps)."""

    def __init__(self, env_id: str, seeds: Sequence[int], backend: str) -> None:
        self._env = envs.make_vector_env(env_id, len(seeds), list(seeds), backend=backend)
        self._seeds = list(seeds)
        self.backend: str = self._env.backend

    @property
    def num_envs(self) -> int:
        return self._env.num_envs

    def use_seeds(self, seeds: Sequence[int]) -> None:
        """The seeds the next ``reset`` starts episodes from (one per env)."""
        if len(seeds) != self._env.num_envs:
            raise ValueError(f"{len(seeds)} seeds for a batch of {self._env.num_envs} envs")
        self._seeds = list(seeds)

    def reset(self) -> np.ndarray:
        return self._env.reset(self._seeds)

    def step(self, actions: np.ndarray):
        result = self._env.step(actions)
        return result.obs, result.reward, result.terminated, result.truncated, result.success

    def close(self) -> None:
        self._env.close()
