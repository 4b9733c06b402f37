"""What a preprocessing run does, as one frozen, validated value."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from diffpol.contracts import Window
from diffpol.contracts.shapes import WINDOW_KEYS

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

    # The observation history ending at each step (To), the action chunk starting at it
    # (T), and the actions a policy executes per call (Ta, recorded for the trainer).
    # Chi et al.'s defaults.
    window: Window = field(default_factory=lambda: Window(2, 16, 8))
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
        if not isinstance(self.window, Window):
            problems.append(f"window must be a diffpol.contracts.Window, got {self.window!r}")
        for name in ("rows_per_file", "shuffle_group_rows"):
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

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> PreprocessConfig:
        """A config from ``to_json``'s form, or from the flat ``n_obs_steps``/``horizon``
        keys that configs written before ``Window`` hold (Ta was not recorded: 1)."""
        raw = dict(raw)
        flat = {key: raw.pop(key) for key in WINDOW_KEYS if key in raw}
        if flat and "window" in raw:
            raise ValueError(
                f"PreprocessConfig: both a window and flat {', '.join(flat)} given; "
                "keep only the window"
            )
        unknown = sorted(set(raw) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"PreprocessConfig: unknown field(s) {', '.join(unknown)}")
        if flat:
            raw["window"] = Window(**flat)
        elif "window" in raw:
            raw["window"] = Window.from_json(raw["window"])
        return cls(**raw)
