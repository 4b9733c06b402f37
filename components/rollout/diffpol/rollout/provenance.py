"""What a dataset manifest records about how its data were made, and how to replay them."""

from __future__ import annotations

from importlib import metadata
from typing import Any

from diffpol.envs import get_env_spec

_PACKAGES = ("numpy", "gymnasium", "envpool", "pyarrow", "ray")
EPISODE_ID_SCHEME = (
    "episode_id = run_tag(seed) << 32 | episode_index; reset seed = seed + episode_index"
)


def package_versions(names: tuple[str, ...] = _PACKAGES) -> dict[str, str]:
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    from diffpol.rollout import __version__

    versions["diffpol-rollout"] = __version__
    return versions


def dataset_provenance(
    *,
    env_id: str,
    backend: str,
    requested_policy: str,
    label_column: str,
    max_episode_steps: int,
    **settings: Any,
) -> dict[str, Any]:
    spec = get_env_spec(env_id)
    matches = backend != "envpool" or spec.envpool_matches_gymnasium
    return {
        "source": "rollout",
        "backend": backend,
        "requested_policy": requested_policy,
        "label_column": label_column,
        "max_episode_steps": max_episode_steps,
        "episode_ids": EPISODE_ID_SCHEME,
        "replay": {
            # Everything a replay needs is in each row (its reset seed) plus the backend.
            "initial_state": "diffpol.envs.initial_state(env_id, backend, row.seed) (exact float64)",
            "function": "diffpol.rollout.replay.replay_recorded(dataset_dir, episode_id)",
            "matches_gymnasium": matches,
        },
        "settings": dict(settings),
        "versions": package_versions(),
    }
