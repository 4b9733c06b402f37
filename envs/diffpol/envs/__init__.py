"""diffpol envs: the env registry, batched envs over three backends, and what success
means per env. Rollout collects with them and the evaluator scores with them; neither
owns them.
"""

__version__ = "0.1.0"

from diffpol.envs.registry import (
    AUTO,
    BACKENDS,
    MAX_RESET_SEED,
    EnvSpec,
    StepResult,
    VectorEnv,
    check_seeds,
    get_env_spec,
    initial_state,
    known_env_ids,
    make_vector_env,
    obs_from_state,
    resolve_backend,
)
from diffpol.envs.success import SuccessRule, SuccessTracker

__all__ = [
    "AUTO",
    "BACKENDS",
    "MAX_RESET_SEED",
    "EnvSpec",
    "StepResult",
    "SuccessRule",
    "SuccessTracker",
    "VectorEnv",
    "__version__",
    "check_seeds",
    "get_env_spec",
    "initial_state",
    "known_env_ids",
    "make_vector_env",
    "obs_from_state",
    "resolve_backend",
]
