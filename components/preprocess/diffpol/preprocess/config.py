"""What a preprocessing run does, as one frozen, validated value."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

NormMode = Literal["minmax", "standard"]
NORM_MODES: tuple[str, ...] = ("minmax", "standard")


@dataclass(frozen=True)
class PreprocessConfig:
    """Window sizes, split, normalisation and output layout of a preprocessing run.

    Normaliser defaults:

    - actions ``minmax`` (to [-1, 1]): the diffusion noise schedule and ``clip_sample``
      assume targets in [-1, 1];
    - observations ``standard`` (zero mean, unit variance): they only condition the model,
      nothing bounds them, and mean/std does not let one extreme sample squash the rest of a
      dimension into a sliver of [-1, 1] (Pendulum's theta-dot spans [-8, 8], but balancing
      data sits near 0), which min/max would.
    """

    # Observations in the history ending at each step (To).
    n_obs_steps: int = 2
    # Actions in each training chunk, starting at the step (T).
    horizon: int = 16
    # Share of episodes (not rows) held out for validation.
    val_fraction: float = 0.1
    # Seeds the episode split and the shuffle; the same seed gives the same split.
    seed: int = 0
    obs_norm: NormMode = "standard"
    action_norm: NormMode = "minmax"
    # Target (minimum) rows per output Parquet file: Ray writes whole blocks, so a file
    # holds this many rows plus up to one shuffle group (the last file may hold fewer).
    rows_per_file: int = 32_768
    # Rows in one shuffle group: whole episodes, drawn in a seeded random order, are packed
    # into groups of about this many rows whose samples are then shuffled together. Larger
    # mixes more episodes per batch at the cost of memory per task.
    shuffle_group_rows: int = 16_384
    # Re-hash every data file against its manifest before reading (reads all bytes once).
    verify_fingerprints: bool = True
    # Ray Data's progress bars (off in tests, on for the CLI).
    progress: bool = True

    def __post_init__(self) -> None:
        problems = []
        for name in ("n_obs_steps", "horizon", "rows_per_file", "shuffle_group_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            problems.append(f"seed must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.val_fraction, (int, float)) or not 0 <= self.val_fraction < 1:
            problems.append(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        for name in ("obs_norm", "action_norm"):
            if getattr(self, name) not in NORM_MODES:
                problems.append(
                    f"{name} must be one of {', '.join(NORM_MODES)}, got {getattr(self, name)!r}"
                )
        if problems:
            raise ValueError("invalid PreprocessConfig: " + "; ".join(problems))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
