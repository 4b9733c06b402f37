"""A transition dataset at rest: Parquet parts in the Transition schema plus a manifest.

Layout::

    DIR/manifest.json           written last and atomically: its presence marks completeness
    DIR/data/part-*.parquet     rows in ``transition_schema(obs_dim, act_dim)``
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from diffpol.contracts.arrow import SCHEMA_VERSION
from diffpol.contracts.errors import ContractError
from diffpol.contracts.shapes import ENV_SHAPE_KEYS, EnvShape

MANIFEST = "manifest.json"
DATA_DIR = "data"


@dataclass(frozen=True)
class ReturnStats:
    mean: float
    std: float
    min: float
    max: float


@dataclass(frozen=True)
class DatasetManifest:
    schema_version: int
    env: EnvShape  # flat keys in manifest.json
    policy: str
    policy_params: dict[str, Any]
    seed: int
    episodes: int
    transitions: int
    returns: ReturnStats
    # sha256 over the data files' names and bytes, in name order (see fingerprint_files).
    fingerprint: str
    # Package versions and anything needed to replay (e.g. the env backend and its seeding).
    provenance: dict[str, Any] = field(default_factory=dict)
    # sha256 of each data file by name (see file_digests), so that a failed check can say
    # which file changed; manifests written before this field have none.
    file_digests: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        raw = asdict(self)
        del raw["env"]
        return {"schema_version": self.schema_version, **self.env.to_json(), **raw}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DatasetManifest:
        version = raw.get("schema_version")
        if not isinstance(version, int) or version < 1:
            raise ContractError(f"manifest has invalid schema_version {version!r}")
        if version > SCHEMA_VERSION:
            raise ContractError(
                f"dataset follows schema v{version}, newer than v{SCHEMA_VERSION} supported "
                "here: upgrade diffpol-contracts"
            )
        names = set(cls.__dataclass_fields__) - {"env"}
        missing = sorted(
            (names | set(ENV_SHAPE_KEYS)) - raw.keys() - {"provenance", "file_digests"}
        )
        if missing:
            raise ContractError(f"manifest is missing field(s): {', '.join(missing)}")
        values = {k: raw[k] for k in names if k in raw}
        values["returns"] = ReturnStats(**raw["returns"])
        return cls(env=EnvShape.from_json(raw), **values)


def data_files(root: str | Path) -> list[Path]:
    return sorted((Path(root) / DATA_DIR).glob("*.parquet"))


class FingerprintStream:
    """The fingerprint and per-file digests of ``digest_files``, fed one file at a time in
    name order, so a writer can compute them from the bytes it writes instead of reading
    its files back."""

    def __init__(self) -> None:
        self._fingerprint = hashlib.sha256()
        self.digests: dict[str, str] = {}
        self._last: str | None = None

    def add(self, name: str, chunks: Iterable[bytes | memoryview], digest: str | None = None):
        """One file's bytes (in chunks); ``digest``, its sha256 when already known, saves a pass."""
        if self._last is not None and name <= self._last:
            raise ValueError(f"{name} comes after {self._last}: files must come in name order")
        self._last = name
        self._fingerprint.update(name.encode())
        own = None if digest else hashlib.sha256()
        for chunk in chunks:
            self._fingerprint.update(chunk)
            if own is not None:
                own.update(chunk)
        self.digests[name] = digest or own.hexdigest()

    def hexdigest(self) -> str:
        return self._fingerprint.hexdigest()


def digest_files(files: list[Path]) -> tuple[str, dict[str, str]]:
    """One read of each file: the set's fingerprint (sha256 over names and bytes, in name
    order) and each file's own sha256, by name."""
    stream = FingerprintStream()
    for path in sorted(files, key=lambda p: p.name):
        with open(path, "rb") as f:
            stream.add(path.name, iter(lambda: f.read(1 << 20), b""))
    return stream.hexdigest(), stream.digests


def fingerprint_files(files: list[Path]) -> str:
    return digest_files(files)[0]


def _describe_damage(expected: dict[str, str], actual: dict[str, str]) -> str:
    """Which data files differ from the manifest's per-file digests, for an error message."""
    parts = []
    for label, names in (
        ("missing", sorted(expected.keys() - actual.keys())),
        (
            "changed or truncated",
            sorted(n for n in expected.keys() & actual.keys() if expected[n] != actual[n]),
        ),
        ("not in the manifest", sorted(actual.keys() - expected.keys())),
    ):
        if names:
            parts.append(f"{label}: {', '.join(names)}")
    return "; ".join(parts)


def read_manifest(root: str | Path, *, verify: bool = True) -> DatasetManifest:
    """Read a dataset's manifest; with ``verify``, check that the data files match it."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise ContractError(
            f"{root} is not a complete diffpol dataset: {MANIFEST} is missing "
            "(the run that wrote it did not finish)"
        )
    try:
        manifest = DatasetManifest.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ContractError(f"{path} is not a valid manifest: {exc}") from exc
    if verify:
        actual, digests = digest_files(data_files(root))
        if actual != manifest.fingerprint:
            damage = manifest.file_digests and _describe_damage(manifest.file_digests, digests)
            raise ContractError(
                f"{root}: data files do not match the manifest fingerprint "
                f"({actual[:12]} != {manifest.fingerprint[:12]}): "
                + (damage or "a file was changed, truncated or removed")
                + "; rerun the collection that wrote it"
            )
    return manifest
