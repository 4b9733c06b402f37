"""The metadata an exported sampler graph carries (ONNX ``metadata_props``), typed.

One reader for every component: the sampler writes it at export and checks it at load, the
evaluator reads it to check a model file against an env before starting any worker.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from diffpol.contracts.errors import ArtifactError
from diffpol.contracts.policy import PolicySpec
from diffpol.contracts.shapes import ENV_SHAPE_KEYS, WINDOW_KEYS, EnvShape, Window
from diffpol.contracts.version import CONTRACT_VERSION

_SAMPLER_INT_KEYS = ("steps", "step_noise_steps")
_SAMPLER_STR_KEYS = ("sampler", "contract_version", "model_version")
METADATA_KEYS = (*ENV_SHAPE_KEYS, *WINDOW_KEYS, *_SAMPLER_STR_KEYS, *_SAMPLER_INT_KEYS)


@dataclass(frozen=True)
class ModelMetadata:
    """What an exported sampler is for (its env's shape), how it windows time, and how it
    samples (``sampler`` "ddim"/"ddpm"/..., ``steps`` network evaluations per call,
    ``step_noise_steps`` fresh-noise draws per call)."""

    env: EnvShape
    window: Window
    sampler: str
    steps: int
    step_noise_steps: int
    model_version: str
    contract_version: str = CONTRACT_VERSION

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.steps, int) or self.steps < 1:
            problems.append(f"steps must be >= 1, got {self.steps!r}")
        if not isinstance(self.step_noise_steps, int) or self.step_noise_steps < 0:
            problems.append(f"step_noise_steps must be >= 0, got {self.step_noise_steps!r}")
        if not self.sampler:
            problems.append("sampler is empty")
        if not self.model_version:
            problems.append("model_version is empty")
        if problems:
            raise ArtifactError("invalid sampler metadata: " + "; ".join(problems))

    @property
    def spec(self) -> PolicySpec:
        return PolicySpec(
            self.env.obs_dim,
            self.env.act_dim,
            self.window.n_obs_steps,
            self.window.n_action_steps,
        )

    def to_props(self) -> dict[str, str]:
        props = {key: str(getattr(self, key)) for key in (*_SAMPLER_STR_KEYS, *_SAMPLER_INT_KEYS)}
        props |= {key: str(value) for key, value in self.window.to_json().items()}
        props |= {
            key: json.dumps(value) if isinstance(value, list) else str(value)
            for key, value in self.env.to_json().items()
        }
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
        try:
            env = EnvShape.from_json(
                {
                    key: json.loads(props[key]) if key.startswith("action_") else props[key]
                    for key in ENV_SHAPE_KEYS
                }
            )
            window = Window.from_json({key: props[key] for key in WINDOW_KEYS})
            return cls(
                env=env,
                window=window,
                sampler=props["sampler"],
                steps=int(props["steps"]),
                step_noise_steps=int(props["step_noise_steps"]),
                model_version=props["model_version"],
                contract_version=props["contract_version"],
            )
        except (ValueError, TypeError) as exc:  # ContractError is a ValueError
            raise ArtifactError(f"{source} has malformed metadata: {exc}") from exc


def read_model_metadata(path: str | Path) -> ModelMetadata:
    """The metadata of an exported sampler file, read without loading its weights."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and others for a non-model file
        raise ArtifactError(f"{str(path)!r} is not a readable ONNX model: {exc}") from exc
    props = {prop.key: prop.value for prop in model.metadata_props}
    return ModelMetadata.from_props(props, str(path))
