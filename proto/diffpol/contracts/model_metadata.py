"""The metadata an exported sampler graph carries (ONNX ``metadata_props``), typed.

One reader for every component: the sampler writes it at export and checks it at load, the
evaluator reads it to check a model file against an env before starting any worker.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from diffpol.contracts.errors import ArtifactError
from diffpol.contracts.policy import PolicySpec
from diffpol.contracts.version import CONTRACT_VERSION

_INT_KEYS = (
    "n_obs_steps",
    "horizon",
    "n_action_steps",
    "obs_dim",
    "act_dim",
    "steps",
    "step_noise_steps",
)
_STR_KEYS = ("env_id", "sampler", "contract_version", "model_version")
_LIST_KEYS = ("action_low", "action_high")
METADATA_KEYS = (*_STR_KEYS, *_INT_KEYS, *_LIST_KEYS)


@dataclass(frozen=True)
class ModelMetadata:
    env_id: str
    obs_dim: int
    act_dim: int
    n_obs_steps: int
    horizon: int
    n_action_steps: int
    sampler: str
    steps: int
    step_noise_steps: int
    model_version: str
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    contract_version: str = CONTRACT_VERSION

    def __post_init__(self) -> None:
        problems = []
        for key in ("obs_dim", "act_dim", "n_obs_steps", "horizon", "n_action_steps", "steps"):
            if getattr(self, key) < 1:
                problems.append(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.step_noise_steps < 0:
            problems.append(f"step_noise_steps must be >= 0, got {self.step_noise_steps}")
        if self.n_action_steps > self.horizon:
            problems.append(
                f"n_action_steps ({self.n_action_steps}) exceeds horizon ({self.horizon})"
            )
        if not self.env_id:
            problems.append("env_id is empty")
        if not self.model_version:
            problems.append("model_version is empty")
        for key in _LIST_KEYS:
            values = getattr(self, key)
            if len(values) != self.act_dim:
                problems.append(f"{key} has {len(values)} values, act_dim is {self.act_dim}")
            elif not all(math.isfinite(v) for v in values):
                problems.append(f"{key} must be finite, got {list(values)}")
        if not problems and any(
            lo >= hi for lo, hi in zip(self.action_low, self.action_high, strict=True)
        ):
            problems.append(
                f"action_low {list(self.action_low)} must be below action_high "
                f"{list(self.action_high)} in every dimension"
            )
        if problems:
            raise ArtifactError("invalid sampler metadata: " + "; ".join(problems))

    @property
    def spec(self) -> PolicySpec:
        return PolicySpec(self.obs_dim, self.act_dim, self.n_obs_steps, self.n_action_steps)

    def to_props(self) -> dict[str, str]:
        props = {key: str(getattr(self, key)) for key in (*_STR_KEYS, *_INT_KEYS)}
        props |= {key: json.dumps(list(getattr(self, key))) for key in _LIST_KEYS}
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> ModelMetadata:
        missing = [key for key in METADATA_KEYS if key not in props]
        if missing:
            raise ArtifactError(
                f"{source} is not a diffpol sampler artifact: metadata_props lack "
                f"{', '.join(missing)} (export it with diffpol.sampler.export_onnx)"
            )
        if props["contract_version"] != CONTRACT_VERSION:
            raise ArtifactError(
                f"{source} follows contract {props['contract_version']!r}; this sampler "
                f"reads {CONTRACT_VERSION!r}: re-export the model or upgrade diffpol"
            )
        values: dict[str, object] = {key: props[key] for key in _STR_KEYS}
        try:
            for key in _INT_KEYS:
                values[key] = int(props[key])
            for key in _LIST_KEYS:
                raw = json.loads(props[key])
                if not isinstance(raw, list):
                    raise ValueError(f"{key} is not a JSON list")
                values[key] = tuple(float(x) for x in raw)
        except (ValueError, TypeError) as exc:
            raise ArtifactError(f"{source} has malformed metadata: {exc}") from exc
        return cls(**values)  # type: ignore[arg-type]


def read_model_metadata(path: str | Path) -> ModelMetadata:
    """The metadata of an exported sampler file, read without loading its weights."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for a non-model file
        raise ArtifactError(f"{str(path)!r} is not a readable ONNX model: {exc}") from exc
    props = {prop.key: prop.value for prop in model.metadata_props}
    return ModelMetadata.from_props(props, str(path))
