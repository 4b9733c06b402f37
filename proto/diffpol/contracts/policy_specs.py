"""Policy specs: the strings that name a policy on every command line, parsed in one place.

=======================  ==============================================================
spec                     policy
=======================  ==============================================================
``NAME``                 a built-in data policy of the rollout component
                         (``BUILTIN_POLICIES``: random, zero, the env's experts)
``[onnx:]PATH``          an exported sampler file (``diffpol.sampler.OnnxPolicy``); a bare
                         path must exist, end in ``.onnx`` or contain ``/``
``grpc://HOST:PORT``     a running sampler server (``diffpol.sampler.SamplerClient``)
=======================  ==============================================================

Any spec may carry a ``LABEL=`` prefix naming it in reports (``ddim=model.onnx``).

``build_policy`` turns a parsed spec into a ``Policy``. The component that implements each
kind is imported on use, by name, so a component that only passes specs along (the
evaluator sends them to its workers) does not import the components that build them.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from diffpol.contracts.errors import ContractError
from diffpol.contracts.policy import Policy

BUILTIN_POLICIES = (
    "random",
    "zero",
    "expert",
    "expert-dp",
    "expert-scripted",
    "expert-metaworld",
    "noisy-expert",
)
ONNX_PREFIX = "onnx:"
GRPC_PREFIX = "grpc://"
SPEC_FORMS = (*BUILTIN_POLICIES, f"{ONNX_PREFIX}PATH", f"{GRPC_PREFIX}HOST:PORT")

PolicyKind = Literal["builtin", "onnx", "grpc"]

# Which component builds each kind: "module:callable", called as in ``build_policy``.
BUILDERS: dict[PolicyKind, tuple[str, str]] = {
    "builtin": ("diffpol.rollout.policies", "make_policy"),
    "onnx": ("diffpol.sampler", "OnnxPolicy"),
    "grpc": ("diffpol.sampler", "SamplerClient"),
}

_LABEL = re.compile(r"^[A-Za-z0-9_.+-]+$")
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:]+\]|[^:/\s]+):(?P<port>\d{1,5})$")


@dataclass(frozen=True)
class PolicyRef:
    """A parsed policy spec: what to build (``kind``, ``target``) and its report ``label``."""

    kind: PolicyKind
    target: str  # built-in name, absolute ONNX path, or HOST:PORT
    label: str

    @property
    def spec(self) -> str:
        """The spec string that names this policy (without the label)."""
        return {"builtin": "", "onnx": ONNX_PREFIX, "grpc": GRPC_PREFIX}[self.kind] + self.target


def parse_policy_spec(spec: str, label: str | None = None) -> PolicyRef:
    """Parse a policy spec (see the module doc); a bad one raises ``ContractError`` naming
    what is wrong and the accepted forms."""
    if not isinstance(spec, str) or not spec.strip():
        raise ContractError(f"policy spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if label is None and "=" in spec and not Path(spec).exists():
        head, tail = spec.split("=", 1)
        if _LABEL.match(head) and tail:
            label, spec = head, tail
    label = label or spec
    if spec in BUILTIN_POLICIES:
        return PolicyRef("builtin", spec, label)
    if spec.startswith(GRPC_PREFIX):
        address = spec[len(GRPC_PREFIX) :]
        match = _HOST_PORT.match(address)
        if not match or not 0 < int(match.group("port")) < 65536:
            raise ContractError(
                f"policy {spec!r}: expected {GRPC_PREFIX}HOST:PORT with a port in 1..65535"
            )
        return PolicyRef("grpc", address, label)
    path_text = spec[len(ONNX_PREFIX) :] if spec.startswith(ONNX_PREFIX) else spec
    path = Path(path_text).expanduser()
    if path.is_file():
        return PolicyRef("onnx", str(path.resolve()), label)
    if spec.startswith(ONNX_PREFIX) or path.suffix == ".onnx" or "/" in path_text:
        raise ContractError(f"policy {spec!r}: model file {str(path)!r} does not exist")
    raise ContractError(
        f"unknown policy {spec!r}: expected a path to an .onnx file, {GRPC_PREFIX}HOST:PORT, "
        f"or one of {', '.join(BUILTIN_POLICIES)}"
    )


def build_policy(ref: PolicyRef, env_id: str, **params: Any) -> Policy:
    """Build the policy ``ref`` names, for ``env_id``. Parameters go to built-in policies
    (e.g. ``noise_max``); ONNX and gRPC policies take none."""
    if ref.kind != "builtin" and params:
        raise ContractError(
            f"policy {ref.spec!r} takes no parameters, got {', '.join(sorted(params))}"
        )
    module_name, attribute = BUILDERS[ref.kind]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        package = ".".join(module_name.split(".")[:2])  # diffpol.<component>
        if exc.name is None or not package.startswith(exc.name):
            raise  # the component is there; something it imports is not
        distribution = package.replace(".", "-")
        raise ContractError(
            f"policy {ref.spec!r} needs the {distribution} distribution, which is not "
            f"installed: pip install {distribution}"
        ) from exc
    build = getattr(module, attribute)
    if ref.kind == "builtin":
        return build(ref.target, env_id, **params)
    return build(ref.target)
