"""Which policy to evaluate: parse a spec, check it against the env, build it in a worker.

A ``PolicySource`` is what travels to Ray workers: a small, picklable description from
which each worker builds its own policy (an ONNX session or a gRPC channel cannot be
pickled). A ``Policy`` object given programmatically travels by value (cloudpickle).

Specs are parsed, and policies built, by ``diffpol.contracts.policy_specs``: the components
that implement a kind (rollout's data policies, the sampler's ONNX runtime and client) are
imported only when a policy of that kind is built.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from diffpol.contracts import (
    ArtifactError,
    ContractError,
    EnvShape,
    ModelMetadata,
    Policy,
    read_model_metadata,
)
from diffpol.contracts.policy_specs import PolicyRef, build_policy, parse_policy_spec
from diffpol.evaluator.errors import EvaluationConfigError

Kind = Literal["builtin", "onnx", "grpc", "object"]
PolicyInput = str | Policy


@dataclass(frozen=True)
class PolicySource:
    """A policy to evaluate, under ``label``, as a picklable recipe."""

    label: str
    kind: Kind
    target: str = ""  # builtin name, ONNX path or host:port
    obj: Any = None  # the Policy itself, for kind "object"

    def build(self, env_id: str) -> Policy:
        if self.kind == "object":
            return self.obj
        return build_policy(PolicyRef(self.kind, self.target, self.label), env_id)

    def describe(self) -> dict[str, str]:
        if self.kind == "object":
            return {
                "kind": "object",
                "type": f"{type(self.obj).__module__}.{type(self.obj).__qualname__}",
            }
        return {"kind": self.kind, "target": self.target}


def parse_policy(spec: str, label: str | None = None) -> PolicySource:
    """Parse a policy spec (``diffpol.contracts.policy_specs``: a built-in name,
    ``[onnx:]PATH``, ``grpc://HOST:PORT``, with an optional ``LABEL=`` prefix)."""
    try:
        ref = parse_policy_spec(spec, label)
    except ContractError as exc:
        raise EvaluationConfigError(str(exc)) from None
    return PolicySource(ref.label, ref.kind, ref.target)


def policy_sources(
    policies: Sequence[PolicyInput | PolicySource] | Mapping[str, PolicyInput],
) -> list[PolicySource]:
    """Normalise the ways a caller names policies; labels must be unique."""
    if isinstance(policies, Mapping):
        items = [(str(label), policy) for label, policy in policies.items()]
    else:
        items = [(None, policy) for policy in policies]
    if not items:
        raise EvaluationConfigError("no policy given: pass at least one")
    sources = []
    for index, (label, policy) in enumerate(items):
        if isinstance(policy, PolicySource):
            sources.append(policy)
        elif isinstance(policy, str):
            sources.append(parse_policy(policy, label))
        elif isinstance(policy, Policy):
            name = label or getattr(policy, "name", None) or f"{type(policy).__name__}-{index}"
            sources.append(PolicySource(str(name), "object", obj=policy))
        else:
            raise EvaluationConfigError(
                f"policy #{index} ({type(policy).__name__}) is neither a spec string nor an "
                "object with `spec: PolicySpec` and `act(obs, seed)`"
            )
    labels = [s.label for s in sources]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise EvaluationConfigError(
            f"policy label(s) {', '.join(duplicates)} given more than once: name them "
            "apart (LABEL=SPEC on the command line, or a mapping of labels to policies)"
        )
    return sources


def check_policy(source: PolicySource, policy: Policy, env: EnvShape) -> None:
    """Reject a policy whose dimensions, action chunking or env id do not fit ``env``."""
    spec = getattr(policy, "spec", None)
    if spec is None or not callable(getattr(policy, "act", None)):
        raise EvaluationConfigError(
            f"policy {source.label!r} does not implement Policy (needs `spec` and `act`)"
        )
    problems = []
    if spec.obs_dim != env.obs_dim:
        problems.append(f"obs_dim {spec.obs_dim} != {env.obs_dim}")
    if spec.act_dim != env.act_dim:
        problems.append(f"act_dim {spec.act_dim} != {env.act_dim}")
    if spec.n_obs_steps < 1 or spec.n_action_steps < 1:
        problems.append(
            f"n_obs_steps {spec.n_obs_steps} and n_action_steps {spec.n_action_steps} must be >= 1"
        )
    policy_env = policy_env_id(source, policy)
    if policy_env is not None and policy_env != env.env_id:
        problems.append(f"it was made for env {policy_env!r}")
    if problems:
        raise EvaluationConfigError(
            f"policy {source.label!r} does not fit env {env.env_id!r}: " + "; ".join(problems)
        )


def policy_env_id(source: PolicySource, policy: Policy) -> str | None:
    """The env id a policy declares (an ``env_id`` attribute or metadata), if any."""
    env = getattr(policy, "env", None)
    if isinstance(env, EnvShape):
        return env.env_id
    metadata = getattr(policy, "metadata", None)
    if isinstance(metadata, ModelMetadata):
        return metadata.env.env_id
    if isinstance(metadata, Mapping):
        value = metadata.get("env_id")
        if isinstance(value, str) and value:
            return value
    if source.kind == "onnx":
        return onnx_metadata(source.target).env.env_id
    model_info = getattr(policy, "model_info", None)  # the sampler's gRPC client
    if source.kind == "grpc" and callable(model_info):
        return model_info().env_id or None
    return None


def check_onnx_file(source: PolicySource, env: EnvShape) -> None:
    """Check an ONNX file's diffpol metadata against the env without loading the model."""
    metadata = onnx_metadata(source.target)
    problems = []
    if metadata.env.env_id != env.env_id:
        problems.append(f"it was exported for env {metadata.env.env_id!r}")
    for key, expected in (("obs_dim", env.obs_dim), ("act_dim", env.act_dim)):
        if getattr(metadata.env, key) != expected:
            problems.append(f"its {key} is {getattr(metadata.env, key)}, the env's is {expected}")
    if problems:
        raise EvaluationConfigError(
            f"model {source.target!r} does not fit env {env.env_id!r}: " + "; ".join(problems)
        )


def onnx_metadata(path: str) -> ModelMetadata:
    """The exported model's metadata; a file that is not a diffpol model raises with its name."""
    try:
        return read_model_metadata(path)
    except ArtifactError as exc:
        raise EvaluationConfigError(str(exc)) from exc


def close_policy(policy: Policy) -> None:
    close = getattr(policy, "close", None)
    if callable(close):
        close()
