"""Data policies: what acts in the envs while collecting.

``make_policy(spec, env_id, **params)`` builds one from a spec string:

==================  ===========================================================  ==========
spec                what                                                          params
==================  ===========================================================  ==========
``random``          uniform in the action bounds                                  -
``zero``            zero action                                                   -
``expert``          the best expert measured for the env (Pendulum-v1: the DP     see below
                    expert; MountainCarContinuous-v0: the energy pump; Meta-World
                    envs: expert-metaworld)
``expert-dp``       Pendulum-v1 value-iteration expert (``pendulum_dp``)          grid, torques,
                                                                                  lookup
``expert-scripted`` Pendulum-v1 swing-up + LQR; MountainCar energy pump           (force)
``expert-metaworld`` Meta-World's scripted expert of each row's task              -
                    (``metaworld.policies``; MT10 reads the task from the one-hot);
                    only for ``metaworld/...`` envs
``noisy-expert``    executes expert + N(0, sigma^2) noise, sigma ~ U[0, noise_max] noise_max,
                    per episode; labels rows with the clean expert action         expert, ...
``onnx:PATH``       an exported sampler (``diffpol.sampler.OnnxPolicy``)          -
``grpc://H:P``      a sampler server (``diffpol.sampler.SamplerClient``)          -
==================  ===========================================================  ==========

Specs are parsed by ``diffpol.contracts.policy_specs``, which also builds the external ones.

Every policy implements ``diffpol.contracts.Policy`` (``act(obs [B, To, obs_dim], seed)``).
For rollouts, ``DataPolicy.start`` additionally gives a stepper whose random draws are
fixed per episode (``plan.episode_rng``), so a retried episode is the same episode.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from diffpol.contracts import Policy, PolicySpec
from diffpol.contracts.policy_specs import SPEC_FORMS, build_policy, parse_policy_spec
from diffpol.envs import EnvSpec, get_env_spec
from diffpol.rollout.plan import call_seed, episode_rng

# A batched controller: observations [B, obs_dim] float32 -> actions [B] or [B, act_dim].
Controller = Callable[[np.ndarray], np.ndarray]


class Stepper(Protocol):
    def __call__(self, obs: np.ndarray, step: int) -> tuple[np.ndarray, np.ndarray | None]:
        """``obs`` [B, To, obs_dim] -> (actions [B, Ta, act_dim], labels like actions or None)."""
        ...


class DataPolicy(ABC):
    """A ``Policy`` plus what a rollout needs: a name, params, and per-episode streams."""

    name: str
    params: dict[str, Any]
    spec: PolicySpec
    env: EnvSpec
    # Whether rows get an ``expert_action`` label that differs from the executed action.
    has_label: bool = False

    @abstractmethod
    def act(self, obs: np.ndarray, seed: int | None = None) -> np.ndarray: ...

    def start(self, run_seed: int, indices: np.ndarray, max_steps: int) -> Stepper:
        """A stepper for a batch of episodes (indices into the run) starting together.

        Default: ``act`` with a seed derived from (run seed, first index, step), which
        fixes the draws for a given batch composition."""
        first = int(indices[0])

        def step(obs: np.ndarray, t: int) -> tuple[np.ndarray, None]:
            return self.act(obs, seed=call_seed(run_seed, first, t)), None

        return step

    def _low_high(self) -> tuple[np.ndarray, np.ndarray]:
        return (
            np.asarray(self.env.action_low, np.float32),
            np.asarray(self.env.action_high, np.float32),
        )


def _check_obs(obs: np.ndarray, spec: PolicySpec) -> np.ndarray:
    obs = np.asarray(obs, dtype=np.float32)
    if obs.ndim != 3 or obs.shape[2] != spec.obs_dim or obs.shape[1] < 1:
        raise ValueError(f"obs must have shape [B, To, {spec.obs_dim}], got {obs.shape}")
    return obs


class ControllerPolicy(DataPolicy):
    """A deterministic state-feedback controller as a policy (To = Ta = 1)."""

    def __init__(self, name: str, env: EnvSpec, controller: Controller, params: dict[str, Any]):
        self.name, self.env, self.controller, self.params = name, env, controller, params
        self.spec = PolicySpec(obs_dim=env.obs_dim, act_dim=env.act_dim)

    def act(self, obs: np.ndarray, seed: int | None = None) -> np.ndarray:
        obs = _check_obs(obs, self.spec)
        actions = np.asarray(self.controller(obs[:, -1]), dtype=np.float32)
        low, high = self._low_high()
        return np.clip(actions.reshape(len(obs), 1, self.env.act_dim), low, high)

    def start(self, run_seed: int, indices: np.ndarray, max_steps: int) -> Stepper:
        return lambda obs, t: (self.act(obs), None)


class ZeroPolicy(DataPolicy):
    def __init__(self, env: EnvSpec):
        self.name, self.env, self.params = "zero", env, {}
        self.spec = PolicySpec(obs_dim=env.obs_dim, act_dim=env.act_dim)

    def act(self, obs: np.ndarray, seed: int | None = None) -> np.ndarray:
        obs = _check_obs(obs, self.spec)
        return np.zeros((len(obs), 1, self.env.act_dim), dtype=np.float32)


class RandomPolicy(DataPolicy):
    """Uniform in the action bounds; in a rollout each episode has its own stream."""

    def __init__(self, env: EnvSpec):
        self.name, self.env, self.params = "random", env, {}
        self.spec = PolicySpec(obs_dim=env.obs_dim, act_dim=env.act_dim)

    def act(self, obs: np.ndarray, seed: int | None = None) -> np.ndarray:
        obs = _check_obs(obs, self.spec)
        low, high = self._low_high()
        rng = np.random.default_rng(seed)
        return rng.uniform(low, high, (len(obs), 1, self.env.act_dim)).astype(np.float32)

    def start(self, run_seed: int, indices: np.ndarray, max_steps: int) -> Stepper:
        low, high = self._low_high()
        draws = np.stack(
            [
                episode_rng(run_seed, i, "policy").uniform(low, high, (max_steps, self.env.act_dim))
                for i in indices
            ]
        ).astype(np.float32)  # [B, T, act_dim]
        return lambda obs, t: (draws[:, t : t + 1], None)


class NoisyExpertPolicy(DataPolicy):
    """Executes ``clip(expert(obs) + sigma * eps)`` with ``sigma ~ U[0, noise_max]`` drawn
    once per episode (so the data cover states the clean expert never visits, at every
    noise level) and labels each row with the clean expert action."""

    has_label = True

    def __init__(self, env: EnvSpec, expert: ControllerPolicy, noise_max: float):
        if not noise_max >= 0.0:
            raise ValueError(f"noise_max must be >= 0, got {noise_max}")
        self.name, self.env, self.expert, self.noise_max = (
            "noisy-expert",
            env,
            expert,
            float(noise_max),
        )
        self.params = {"noise_max": self.noise_max, "expert": expert.name, **expert.params}
        self.spec = expert.spec

    def _noisy(self, clean: np.ndarray, noise: np.ndarray) -> np.ndarray:
        low, high = self._low_high()
        return np.clip(clean + noise, low, high).astype(np.float32)

    def act(self, obs: np.ndarray, seed: int | None = None) -> np.ndarray:
        """Outside a rollout there are no episodes: sigma is drawn per row."""
        clean = self.expert.act(obs)
        rng = np.random.default_rng(seed)
        sigma = rng.uniform(0.0, self.noise_max, (len(clean), 1, 1))
        noise = rng.standard_normal(clean.shape) * sigma
        return self._noisy(clean, noise)

    def start(self, run_seed: int, indices: np.ndarray, max_steps: int) -> Stepper:
        act_dim = self.env.act_dim
        noise = np.empty((len(indices), max_steps, act_dim), dtype=np.float32)
        for row, index in enumerate(indices):
            sigma = episode_rng(run_seed, index, "noise-scale").uniform(0.0, self.noise_max)
            eps = episode_rng(run_seed, index, "policy").standard_normal((max_steps, act_dim))
            noise[row] = sigma * eps

        def step(obs: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
            clean = self.expert.act(obs)
            return self._noisy(clean, noise[:, t : t + 1]), clean

        return step


class ExternalPolicy(DataPolicy):
    """Any ``diffpol.contracts.Policy`` (an ONNX sampler, a gRPC client) for one env."""

    def __init__(self, name: str, env: EnvSpec, policy: Policy):
        spec = policy.spec
        if (spec.obs_dim, spec.act_dim) != (env.obs_dim, env.act_dim):
            raise ValueError(
                f"policy {name!r} has obs_dim {spec.obs_dim}, act_dim {spec.act_dim}; "
                f"{env.env_id} needs {env.obs_dim} and {env.act_dim}"
            )
        # OnnxPolicy keeps the env id in its metadata; other policies may carry it directly.
        policy_env = getattr(policy, "env_id", None) or getattr(
            getattr(policy, "metadata", None), "env_id", None
        )
        if policy_env not in (None, env.env_id):
            raise ValueError(f"policy {name!r} was trained for {policy_env}, not {env.env_id}")
        self.name, self.env, self.policy, self.spec = name, env, policy, spec
        self.params = {}

    def act(self, obs: np.ndarray, seed: int | None = None) -> np.ndarray:
        return np.asarray(self.policy.act(_check_obs(obs, self.spec), seed=seed), dtype=np.float32)


def _param(name: str, value: Any, kind: type) -> Any:
    """A policy parameter as ``kind`` (params may arrive as CLI strings)."""
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"policy parameter {name} must be {kind.__name__}, got {value!r}"
        ) from None


def _pendulum_dp_controller(
    grid: int = 400, torques: int = 41, lookup: str = "table"
) -> tuple[Controller, dict[str, Any]]:
    from diffpol.rollout.pendulum_dp import PendulumDPConfig, PendulumDPController, load_or_solve

    grid, torques = _param("grid", grid, int), _param("torques", torques, int)
    lookup = _param("lookup", lookup, str)
    config = PendulumDPConfig(n_theta=grid, n_theta_dot=grid + 1, policy_torques=torques)
    controller = PendulumDPController(load_or_solve(config)[0], lookup=lookup)
    return controller, {"grid": grid, "torques": torques, "lookup": lookup}


def _pendulum_scripted_controller() -> tuple[Controller, dict[str, Any]]:
    from diffpol.rollout.scripted import PendulumScriptedController

    return PendulumScriptedController(), {}


def _mountain_car_controller(force: float = 0.4) -> tuple[Controller, dict[str, Any]]:
    from diffpol.rollout.scripted import MountainCarPumpController

    force = _param("force", force, float)
    return MountainCarPumpController(force), {"force": force}


# (env id, expert name) -> factory(**params) -> (controller, params actually used).
_EXPERTS: dict[tuple[str, str], Callable[..., tuple[Controller, dict[str, Any]]]] = {
    ("Pendulum-v1", "expert-dp"): _pendulum_dp_controller,
    ("Pendulum-v1", "expert-scripted"): _pendulum_scripted_controller,
    ("MountainCarContinuous-v0", "expert-scripted"): _mountain_car_controller,
}


class MetaWorldExpert:
    """Meta-World's scripted policy (``metaworld.policies``) of each row's task on the
    row's first 39 observation entries; with several tasks the one-hot after them names it."""

    def __init__(self, env: EnvSpec):
        from metaworld.policies import ENV_POLICY_MAP

        missing = [t for t in env.tasks if t not in ENV_POLICY_MAP]
        if missing:
            raise ValueError(f"Meta-World has no scripted policy for {', '.join(missing)}")
        self.tasks = env.tasks
        self.policies = [ENV_POLICY_MAP[t]() for t in env.tasks]
        self.obs_dim = env.obs_dim

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, np.float64)
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(f"observations must be [B, {self.obs_dim}], got {obs.shape}")
        which = obs[:, 39:].argmax(1) if len(self.tasks) > 1 else np.zeros(len(obs), int)
        return np.stack(
            [self.policies[k].get_action(row[:39]) for k, row in zip(which, obs, strict=True)]
        ).astype(np.float32)


def _metaworld_controller(env: EnvSpec) -> tuple[Controller, dict[str, Any]]:
    # No params: the env id names the tasks, and actors rebuild the policy from its params.
    return MetaWorldExpert(env), {}


# The best measured expert per env (README: returns over seeds 1000..2999).
_BEST_EXPERT = {"Pendulum-v1": "expert-dp", "MountainCarContinuous-v0": "expert-scripted"}


def _is_metaworld(env: EnvSpec) -> bool:
    return env.env_id.startswith("metaworld/")


def known_policies() -> list[str]:
    return list(SPEC_FORMS)


def _make_expert(name: str, env: EnvSpec, params: dict[str, Any]) -> ControllerPolicy:
    if name == "expert-metaworld" or (name == "expert" and _is_metaworld(env)):
        if not _is_metaworld(env):
            raise ValueError(
                f"expert-metaworld drives Meta-World envs (metaworld/<task> or "
                f"metaworld/MT10) only; {env.env_id} is not one: use expert for its own expert"
            )
        if params:
            raise ValueError(
                f"expert-metaworld takes no parameters, got {', '.join(sorted(params))}"
            )
        controller, used = _metaworld_controller(env)
        return ControllerPolicy("expert-metaworld", env, controller, used)
    resolved = _BEST_EXPERT[env.env_id] if name == "expert" else name
    factory = _EXPERTS.get((env.env_id, resolved))
    if factory is None:
        have = sorted(n for (e, n) in _EXPERTS if e == env.env_id)
        raise ValueError(f"no {resolved!r} for {env.env_id}; it has: expert, {', '.join(have)}")
    accepted = set(inspect.signature(factory).parameters)
    unknown = sorted(set(params) - accepted)
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)} for {resolved} on {env.env_id}; "
            f"accepted: {', '.join(sorted(accepted)) or 'none'}"
        )
    controller, used = factory(**params)
    return ControllerPolicy(resolved, env, controller, used)


def make_policy(spec: str, env_id: str, **params: Any) -> DataPolicy:
    """Build the data policy ``spec`` for ``env_id``; see the module doc for specs and params.

    Unknown specs and parameters are errors that list what is accepted."""
    env = get_env_spec(env_id)
    ref = parse_policy_spec(spec)
    if ref.kind != "builtin":
        return ExternalPolicy(ref.spec, env, build_policy(ref, env_id, **params))
    spec, params = ref.target, dict(params)
    if spec in ("random", "zero"):
        if params:
            raise ValueError(
                f"policy {spec!r} takes no parameters, got {', '.join(sorted(params))}"
            )
        return RandomPolicy(env) if spec == "random" else ZeroPolicy(env)
    if spec == "noisy-expert":
        default_noise = 0.5 * max(
            (hi - lo) / 2 for lo, hi in zip(env.action_low, env.action_high, strict=True)
        )
        noise_max = _param("noise_max", params.pop("noise_max", default_noise), float)
        expert_name = str(params.pop("expert", "expert"))
        if expert_name == "noisy-expert" or not expert_name.startswith("expert"):
            raise ValueError(f"noisy-expert needs an expert to perturb, got expert={expert_name!r}")
        return NoisyExpertPolicy(env, _make_expert(expert_name, env, params), noise_max)
    return _make_expert(spec, env, params)
