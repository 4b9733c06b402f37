"""The two shapes every artifact repeats: what an env consumes and produces (``EnvShape``)
and how a policy windows time (``Window``).

Datasets, preprocess outputs, exported models and evaluation configs hold one of each
instead of re-declaring their fields; on disk both stay flat keys of the artifact's JSON
or ``metadata_props`` (``to_json``/``from_json``), so files written before them still read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from diffpol.contracts.errors import ContractError


def _positive_ints(**values: Any) -> list[str]:
    return [
        f"{name} must be an integer >= 1, got {value!r}"
        for name, value in values.items()
        if isinstance(value, bool) or not isinstance(value, int) or value < 1
    ]


@dataclass(frozen=True)
class EnvShape:
    """An env's observation and action spaces: ``obs`` float32 ``[obs_dim]``, actions float32
    ``[act_dim]`` within ``[action_low, action_high]`` (env units)."""

    env_id: str
    obs_dim: int
    act_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "action_low", tuple(float(x) for x in self.action_low))
        object.__setattr__(self, "action_high", tuple(float(x) for x in self.action_high))
        problems = _positive_ints(obs_dim=self.obs_dim, act_dim=self.act_dim)
        if not isinstance(self.env_id, str) or not self.env_id:
            problems.append(f"env_id must be a non-empty string, got {self.env_id!r}")
        for name in ("action_low", "action_high"):
            values = getattr(self, name)
            if len(values) != self.act_dim:
                problems.append(f"{name} has {len(values)} values, act_dim is {self.act_dim}")
            elif not all(math.isfinite(v) for v in values):
                problems.append(f"{name} must be finite, got {list(values)}")
        if not problems and any(
            lo >= hi for lo, hi in zip(self.action_low, self.action_high, strict=True)
        ):
            problems.append(
                f"action_low {list(self.action_low)} must be below action_high "
                f"{list(self.action_high)} in every dimension"
            )
        if problems:
            raise ContractError(f"invalid env shape for {self.env_id!r}: " + "; ".join(problems))

    def to_json(self) -> dict[str, Any]:
        return {
            "env_id": self.env_id,
            "obs_dim": self.obs_dim,
            "act_dim": self.act_dim,
            "action_low": list(self.action_low),
            "action_high": list(self.action_high),
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> EnvShape:
        missing = [key for key in ENV_SHAPE_KEYS if key not in raw]
        if missing:
            raise ContractError(f"env shape is missing {', '.join(missing)}")
        try:
            return cls(
                env_id=str(raw["env_id"]),
                obs_dim=int(raw["obs_dim"]),
                act_dim=int(raw["act_dim"]),
                action_low=_floats(raw["action_low"]),
                action_high=_floats(raw["action_high"]),
            )
        except (TypeError, ValueError) as exc:
            raise ContractError(f"env shape is malformed: {exc}") from exc

    def check_fits(self, other: EnvShape, what: str) -> None:
        """Raise unless ``other`` (e.g. a model's shape) has this env's spaces."""
        mismatched = [
            f"{key} {getattr(other, key)!r} (env: {getattr(self, key)!r})"
            for key in ("obs_dim", "act_dim")
            if getattr(other, key) != getattr(self, key)
        ]
        if mismatched:
            raise ContractError(f"{what} does not fit {self.env_id}: " + ", ".join(mismatched))


@dataclass(frozen=True)
class Window:
    """How a policy windows time: it sees the last ``n_obs_steps`` observations (To),
    predicts ``horizon`` actions (T) and executes the first ``n_action_steps`` (Ta) of them
    before it is asked again (receding horizon, Chi et al. 2023)."""

    n_obs_steps: int = 1
    horizon: int = 1
    n_action_steps: int = 1

    def __post_init__(self) -> None:
        problems = _positive_ints(
            n_obs_steps=self.n_obs_steps,
            horizon=self.horizon,
            n_action_steps=self.n_action_steps,
        )
        if not problems and self.n_action_steps > self.horizon:
            problems.append(
                f"n_action_steps (Ta={self.n_action_steps}) exceeds horizon (T={self.horizon})"
            )
        if problems:
            raise ContractError("invalid window: " + "; ".join(problems))

    def to_json(self) -> dict[str, int]:
        return {
            "n_obs_steps": self.n_obs_steps,
            "horizon": self.horizon,
            "n_action_steps": self.n_action_steps,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Window:
        missing = [key for key in WINDOW_KEYS if key not in raw]
        if missing:
            raise ContractError(f"window is missing {', '.join(missing)}")
        try:
            return cls(**{key: int(raw[key]) for key in WINDOW_KEYS})
        except (TypeError, ValueError) as exc:
            raise ContractError(f"window is malformed: {exc}") from exc


ENV_SHAPE_KEYS = ("env_id", "obs_dim", "act_dim", "action_low", "action_high")
WINDOW_KEYS = ("n_obs_steps", "horizon", "n_action_steps")


def _floats(raw: Any) -> tuple[float, ...]:
    if isinstance(raw, str) or not isinstance(raw, Sequence):
        raise ValueError(f"expected a list of numbers, got {raw!r}")
    return tuple(float(x) for x in raw)
