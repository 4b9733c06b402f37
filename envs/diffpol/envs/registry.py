"""Env registry and batched envs with one interface over three backends.

Backends, per env (``EnvSpec.backends`` lists them, the default first):

- ``numpy`` (Pendulum-v1 only): ``dynamics.pendulum_step`` on a batch. Gymnasium's own
  equations and reset seeding, so an episode is bit for bit the one gymnasium produces
  for the same seed and actions, and it is the fastest.
- ``envpool``: EnvPool's C++ envs. Reset seeds are fixed when a pool is created, so a
  pool is made per batch of episodes (cheap: benchmarks/RESULTS.md). EnvPool 1.2.5's
  Pendulum-v1 is NOT gymnasium's: it advances the angle with the *unclipped* velocity when
  |theta_dot| would exceed 8 (gymnasium's v1 clips first), so episodes that reach the
  speed limit (expert swing-ups do) differ; it is selectable for Pendulum-v1 but never
  chosen by ``auto``. Its MountainCarContinuous-v0 matches gymnasium within float32
  rounding (gymnasium stores that state in float32).
- ``gymnasium``: ``gymnasium.make_vec(..., vectorization_mode="sync")``, the reference.
- ``metaworld`` (the ``metaworld/...`` ids only): Meta-World v3 envs stepped in one
  process; ``metaworld_env`` documents the ids, the seeding and the episode end.

Every backend's episode is determined by its reset seed; ``initial_state(env_id, backend,
seed)`` returns the exact float64 state a seed gives, which is what a replay needs.
"""

from __future__ import annotations

import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from diffpol.contracts import EnvShape
from diffpol.envs import dynamics
from diffpol.envs.envpool_seeding import uniform_draws
from diffpol.envs.success import (
    REACHED_GOAL,
    REPORTED_AT_ANY_STEP,
    UPRIGHT_HOLD,
    SuccessRule,
)

AUTO = "auto"
BACKENDS = ("numpy", "envpool", "gymnasium", "metaworld")
# EnvPool takes int32 seeds; the same range applies to every backend so a plan means the
# same episodes whichever backend runs it.
MAX_RESET_SEED = 2**31 - 2


@dataclass(frozen=True)
class EnvSpec:
    """What diffpol knows about an env: its spaces (``shape``, the contract every artifact
    carries), its step limit, the backends that can step it and what success means."""

    shape: EnvShape
    max_episode_steps: int
    # EnvPool has this id; whether its episodes are gymnasium's is a separate question.
    has_envpool: bool
    envpool_matches_gymnasium: bool
    # Backends this package can step for the env; ``auto`` picks the first.
    backends: tuple[str, ...]
    state_dim: int
    success: SuccessRule
    # Control steps per second (LeRobotDataset's ``fps``) and what each obs/action entry is.
    control_fps: int = 0
    obs_names: tuple[str, ...] = ()
    act_names: tuple[str, ...] = ()
    # Named tasks the env runs; the episode with reset seed s runs tasks[s % len(tasks)]
    # (Meta-World; empty for envs with one unnamed task).
    tasks: tuple[str, ...] = ()

    def task_of(self, seed: int) -> str:
        """The task name the episode with reset seed ``seed`` runs ("" when unnamed)."""
        return self.tasks[int(seed) % len(self.tasks)] if self.tasks else ""

    @property
    def default_backend(self) -> str:
        return self.backends[0]

    # The shape's fields, read often enough to deserve the short names.
    @property
    def env_id(self) -> str:
        return self.shape.env_id

    @property
    def obs_dim(self) -> int:
        return self.shape.obs_dim

    @property
    def act_dim(self) -> int:
        return self.shape.act_dim

    @property
    def action_low(self) -> tuple[float, ...]:
        return self.shape.action_low

    @property
    def action_high(self) -> tuple[float, ...]:
        return self.shape.action_high


class StepResult(NamedTuple):
    obs: np.ndarray  # float32 [N, obs_dim]
    reward: np.ndarray  # float32 [N]
    terminated: np.ndarray  # bool [N]
    truncated: np.ndarray  # bool [N]
    # The env's own per-step success flag (Meta-World's info["success"]); None where the
    # env reports none. SuccessTracker.update takes it as ``reported``.
    success: np.ndarray | None = None  # bool [N]


@dataclass(frozen=True)
class _EnvModel:
    """What the registry knows about an env beyond its spec: state <-> observation maps
    and EnvPool's initial-state draw."""

    obs_from_state: Callable[[np.ndarray], np.ndarray]
    envpool_initial_state: Callable[[int], np.ndarray]


def _pendulum_obs(state: np.ndarray) -> np.ndarray:
    return dynamics.pendulum_obs(state[..., 0], state[..., 1])


def _pendulum_envpool_state(seed: int) -> np.ndarray:
    return np.array(uniform_draws(seed, [(-math.pi, math.pi), (-1.0, 1.0)]))


def _mountain_car_envpool_state(seed: int) -> np.ndarray:
    return np.array([uniform_draws(seed, [(-0.6, -0.4)])[0], 0.0])


_SPECS = {
    "Pendulum-v1": EnvSpec(
        shape=EnvShape("Pendulum-v1", obs_dim=3, act_dim=1, action_low=(-2.0,), action_high=(2.0,)),
        max_episode_steps=200,
        has_envpool=True,
        envpool_matches_gymnasium=False,
        backends=("numpy", "gymnasium", "envpool"),
        state_dim=2,
        success=UPRIGHT_HOLD,
        control_fps=20,  # dt = 0.05 s
        obs_names=("cos_theta", "sin_theta", "theta_dot"),
        act_names=("torque",),
    ),
    "MountainCarContinuous-v0": EnvSpec(
        shape=EnvShape(
            "MountainCarContinuous-v0", obs_dim=2, act_dim=1, action_low=(-1.0,), action_high=(1.0,)
        ),
        max_episode_steps=999,
        has_envpool=True,
        envpool_matches_gymnasium=True,
        backends=("envpool", "gymnasium"),
        state_dim=2,
        success=REACHED_GOAL,
        control_fps=30,  # no dt in gymnasium; its render_fps
        obs_names=("position", "velocity"),
        act_names=("force",),
    ),
}

_MODELS = {
    "Pendulum-v1": _EnvModel(_pendulum_obs, _pendulum_envpool_state),
    "MountainCarContinuous-v0": _EnvModel(
        lambda state: np.asarray(state, dtype=np.float32), _mountain_car_envpool_state
    ),
}


def known_env_ids() -> list[str]:
    return sorted(_SPECS)


def get_env_spec(env_id: str) -> EnvSpec:
    try:
        return _SPECS[env_id]
    except KeyError:
        if env_id.startswith(_mw.PREFIX) and "+" in env_id:
            return _metaworld_task_set(env_id)
        if env_id.startswith(_mw.PREFIX):
            raise ValueError(
                f"unknown Meta-World task {env_id[len(_mw.PREFIX) :]!r} in {env_id!r}; known: "
                f"{', '.join(sorted(i for i in _SPECS if i.startswith(_mw.PREFIX)))}"
            ) from None
        raise ValueError(
            f"unknown env id {env_id!r}; known: {', '.join(known_env_ids())}"
        ) from None


def resolve_backend(env_id: str, backend: str = AUTO) -> str:
    spec = get_env_spec(env_id)
    if backend == AUTO:
        return spec.default_backend
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; use auto or one of {', '.join(BACKENDS)}")
    if backend not in spec.backends:
        raise ValueError(
            f"backend {backend!r} is not available for {env_id}; use one of "
            f"{', '.join(spec.backends)}"
        )
    return backend


def check_seeds(seeds: Sequence[int], count: int | None = None) -> list[int]:
    seeds = [int(s) for s in seeds]
    if count is not None and len(seeds) != count:
        raise ValueError(f"need {count} reset seeds (one per env), got {len(seeds)}")
    bad = [s for s in seeds if not 0 <= s <= MAX_RESET_SEED]
    if bad:
        raise ValueError(f"reset seeds must be in [0, {MAX_RESET_SEED}], got {bad[:5]}")
    return seeds


def initial_state(env_id: str, backend: str, seed: int) -> np.ndarray:
    """The exact float64 env state (``env.unwrapped.state`` in gymnasium terms) that a
    reset with ``seed`` gives on ``backend``."""
    backend = resolve_backend(env_id, backend)
    (seed,) = check_seeds([seed])
    if backend == "metaworld":
        raise ValueError(f"{env_id}: a Meta-World episode is replayed from its seed alone")
    if backend == "envpool":
        return _MODELS[env_id].envpool_initial_state(seed)
    if backend == "numpy":
        return _pendulum_numpy_initial_states([seed])[0]
    import gymnasium as gym

    env = gym.make(env_id)
    try:
        env.reset(seed=seed)
        return np.array(env.unwrapped.state, dtype=np.float64)
    finally:
        env.close()


def obs_from_state(env_id: str, state: np.ndarray) -> np.ndarray:
    get_env_spec(env_id)
    return _MODELS[env_id].obs_from_state(np.asarray(state, dtype=np.float64))


class VectorEnv(ABC):
    """``num_envs`` copies of one env stepped together.

    ``reset`` starts one episode in every env (with per-env seeds when given). After an
    env's episode ends (terminated or truncated) its outputs mean nothing until the next
    ``reset``: backends may auto-reset it meanwhile.
    """

    backend: str

    def __init__(self, spec: EnvSpec, num_envs: int, seeds: Sequence[int]):
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.spec = spec
        self.num_envs = num_envs
        self.seeds = check_seeds(seeds, num_envs)

    @abstractmethod
    def reset(self, seeds: Sequence[int] | None = None) -> np.ndarray:
        """Start new episodes; returns observations float32 [num_envs, obs_dim]."""

    @abstractmethod
    def step(self, actions: np.ndarray) -> StepResult: ...

    def initial_states(self) -> np.ndarray:
        """Exact float64 states [num_envs, state_dim] the last seeded reset started from."""
        return np.stack([initial_state(self.spec.env_id, self.backend, s) for s in self.seeds])

    def close(self) -> None:
        return None

    def __enter__(self) -> VectorEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _actions(self, actions: np.ndarray) -> np.ndarray:
        actions = np.asarray(actions, dtype=np.float32)
        expected = (self.num_envs, self.spec.act_dim)
        if actions.shape != expected:
            raise ValueError(f"actions must have shape {expected}, got {actions.shape}")
        return actions


def _pendulum_numpy_initial_states(seeds: Sequence[int]) -> np.ndarray:
    # gymnasium's PendulumEnv.reset(seed): Generator(PCG64(SeedSequence(seed))).uniform.
    high = np.array([np.pi, 1.0])
    return np.stack(
        [
            np.random.Generator(np.random.PCG64(np.random.SeedSequence(s))).uniform(-high, high)
            for s in seeds
        ]
    )


class NumpyPendulumVectorEnv(VectorEnv):
    backend = "numpy"

    def __init__(self, spec: EnvSpec, num_envs: int, seeds: Sequence[int]):
        super().__init__(spec, num_envs, seeds)
        self._theta = self._theta_dot = None
        self._elapsed = 0

    def reset(self, seeds: Sequence[int] | None = None) -> np.ndarray:
        if seeds is not None:
            self.seeds = check_seeds(seeds, self.num_envs)
        elif self._theta is not None:
            raise ValueError("the numpy backend needs seeds for every reset after the first")
        state = _pendulum_numpy_initial_states(self.seeds)
        self._initial = state
        self._theta, self._theta_dot = state[:, 0].copy(), state[:, 1].copy()
        self._elapsed = 0
        return dynamics.pendulum_obs(self._theta, self._theta_dot)

    def step(self, actions: np.ndarray) -> StepResult:
        if self._theta is None:
            raise RuntimeError("call reset() before step()")
        u = self._actions(actions)[:, 0]
        self._theta, self._theta_dot, reward = dynamics.pendulum_step(
            self._theta, self._theta_dot, u
        )
        self._elapsed += 1
        done = np.full(self.num_envs, self._elapsed >= self.spec.max_episode_steps)
        return StepResult(
            dynamics.pendulum_obs(self._theta, self._theta_dot),
            reward.astype(np.float32),
            np.zeros(self.num_envs, dtype=bool),
            done,
        )

    def initial_states(self) -> np.ndarray:
        return self._initial.copy()


class EnvpoolVectorEnv(VectorEnv):
    backend = "envpool"

    def __init__(self, spec: EnvSpec, num_envs: int, seeds: Sequence[int], num_threads: int = 1):
        super().__init__(spec, num_envs, seeds)
        self.num_threads = num_threads
        self._pool = None
        if not spec.envpool_matches_gymnasium:
            warnings.warn(
                f"EnvPool's {spec.env_id} differs from gymnasium's (it integrates the angle "
                "with the unclipped velocity at the speed limit); use the numpy or gymnasium "
                "backend for data that must replay in gymnasium",
                stacklevel=3,
            )

    def reset(self, seeds: Sequence[int] | None = None) -> np.ndarray:
        import envpool

        if seeds is not None:
            self.seeds = check_seeds(seeds, self.num_envs)
        # EnvPool fixes reset seeds at creation: a seeded reset is a new pool.
        if self._pool is None or seeds is not None:
            self.close()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # gymnasium's Box precision notes
                self._pool = envpool.make(
                    self.spec.env_id,
                    env_type="gymnasium",
                    num_envs=self.num_envs,
                    env_seed=self.seeds,
                    num_threads=self.num_threads,
                    max_episode_steps=self.spec.max_episode_steps,
                )
                _ = (self._pool.observation_space, self._pool.action_space)  # built lazily
        obs, _ = self._pool.reset()
        return np.asarray(obs, dtype=np.float32)

    def step(self, actions: np.ndarray) -> StepResult:
        if self._pool is None:
            raise RuntimeError("call reset() before step()")
        obs, reward, terminated, truncated, _ = self._pool.step(self._actions(actions))
        return StepResult(
            np.asarray(obs, dtype=np.float32),
            np.asarray(reward, dtype=np.float32),
            np.asarray(terminated, dtype=bool),
            np.asarray(truncated, dtype=bool),
        )

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


class GymnasiumVectorEnv(VectorEnv):
    backend = "gymnasium"

    def __init__(self, spec: EnvSpec, num_envs: int, seeds: Sequence[int]):
        import gymnasium as gym

        super().__init__(spec, num_envs, seeds)
        self._env = gym.make_vec(spec.env_id, num_envs=num_envs, vectorization_mode="sync")
        self._pending_seeds = True

    def reset(self, seeds: Sequence[int] | None = None) -> np.ndarray:
        if seeds is not None:
            self.seeds = check_seeds(seeds, self.num_envs)
            self._pending_seeds = True
        obs, _ = self._env.reset(seed=self.seeds if self._pending_seeds else None)
        self._pending_seeds = False
        self._initial = np.stack([np.array(e.unwrapped.state, np.float64) for e in self._env.envs])
        return np.asarray(obs, dtype=np.float32)

    def step(self, actions: np.ndarray) -> StepResult:
        obs, reward, terminated, truncated, _ = self._env.step(self._actions(actions))
        return StepResult(
            np.asarray(obs, dtype=np.float32),
            np.asarray(reward, dtype=np.float32),
            np.asarray(terminated, dtype=bool),
            np.asarray(truncated, dtype=bool),
        )

    def initial_states(self) -> np.ndarray:
        return self._initial.copy()

    def close(self) -> None:
        self._env.close()


def make_vector_env(
    env_id: str, num_envs: int, seeds: Sequence[int], backend: str = AUTO, *, num_threads: int = 1
) -> VectorEnv:
    """``num_envs`` envs whose first ``reset()`` starts episodes with ``seeds`` (one each).

    ``backend``: ``auto`` (the env's default, see module doc), ``numpy``, ``envpool`` or
    ``gymnasium``. ``num_threads`` is EnvPool's worker threads.
    """
    spec = get_env_spec(env_id)
    backend = resolve_backend(env_id, backend)
    if backend == "numpy":
        return NumpyPendulumVectorEnv(spec, num_envs, seeds)
    if backend == "envpool":
        return EnvpoolVectorEnv(spec, num_envs, seeds, num_threads=num_threads)
    if backend == "metaworld":
        return _mw.MetaWorldVectorEnv(spec, num_envs, seeds)
    return GymnasiumVectorEnv(spec, num_envs, seeds)


def _metaworld_spec(env_id: str, tasks: tuple[str, ...]) -> EnvSpec:
    obs_dim = _mw.TASK_OBS_DIM + (len(tasks) if len(tasks) > 1 else 0)
    hand = ("hand_x", "hand_y", "hand_z", "gripper")
    objects = tuple(
        f"obj{k}_{c}" for k in range(2) for c in ("x", "y", "z", "q0", "q1", "q2", "q3")
    )
    frame = hand + objects
    names = frame + tuple(f"prev_{n}" for n in frame) + ("goal_x", "goal_y", "goal_z")
    if len(tasks) > 1:
        names += tuple(f"task_{t}" for t in tasks)
    return EnvSpec(
        shape=EnvShape(
            env_id,
            obs_dim=obs_dim,
            act_dim=_mw.ACT_DIM,
            action_low=(-1.0,) * _mw.ACT_DIM,
            action_high=(1.0,) * _mw.ACT_DIM,
        ),
        max_episode_steps=_mw.MAX_EPISODE_STEPS,
        has_envpool=False,
        envpool_matches_gymnasium=False,
        backends=("metaworld",),
        state_dim=0,
        success=REPORTED_AT_ANY_STEP,
        control_fps=80,  # MuJoCo timestep 0.0025 s x frame_skip 5 = 0.0125 s per step
        obs_names=names,
        act_names=("dx", "dy", "dz", "grip"),
        tasks=tasks,
    )


def _metaworld_task_set(env_id: str) -> EnvSpec:
    """``metaworld/<task>+<task>...``: those MT10 tasks as one multi-task env, one-hot in the
    order given (built on first use)."""
    tasks = tuple(env_id[len(_mw.PREFIX) :].split("+"))
    unknown = [t for t in tasks if t not in _mw.MT10_TASKS]
    if unknown or len(set(tasks)) != len(tasks):
        raise ValueError(
            f"{env_id!r} must join distinct MT10 tasks with '+'"
            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
            + f"; the MT10 tasks: {', '.join(_mw.MT10_TASKS)}"
        )
    return _SPECS.setdefault(env_id, _metaworld_spec(env_id, tasks))


# At the end of the module: metaworld_env subclasses VectorEnv, defined above.
from diffpol.envs import metaworld_env as _mw  # noqa: E402

_SPECS[_mw.MT10_ID] = _metaworld_spec(_mw.MT10_ID, _mw.MT10_TASKS)
for _task in _mw.MT10_TASKS:
    _SPECS[_mw.PREFIX + _task] = _metaworld_spec(_mw.PREFIX + _task, (_task,))
