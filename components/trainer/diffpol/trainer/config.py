"""Typed, frozen configuration of the model, the optimiser and a training run.

Everything here round-trips through JSON (``to_json`` / ``*_from_json``), which is how a
checkpoint stores it: loading a checkpoint never unpickles Python objects.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import Any, Literal

from diffpol.contracts import Window
from diffpol.contracts.shapes import WINDOW_KEYS
from diffpol.diffusion import NoiseScheduleConfig
from diffpol.diffusion.flow import TIME_SAMPLINGS, TimeSampling

PolicyType = Literal["diffusion", "bc", "seed-tutorial"]
Activation = Literal["relu", "silu", "mish"]
DenoiserType = Literal["mlp", "unet"]
DENOISERS: tuple[str, ...] = ("mlp", "unet")
POLICY_TYPES: tuple[str, ...] = ("diffusion", "bc", "seed-tutorial")
# A diffusion policy's training objective (see diffpol.trainer.fewstep): DDPM noise
# prediction, flow matching, or consistency distillation from a DDPM teacher.
Objective = Literal["ddpm", "flow", "consistency"]
OBJECTIVES: tuple[str, ...] = ("ddpm", "flow", "consistency")
ACTIVATIONS: tuple[str, ...] = ("relu", "silu", "mish")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass(frozen=True)
class ModelConfig:
    """The policy network and what it sees and predicts.

    Pendulum-v1 defaults, chosen by measurement (DP-expert data with exploration noise,
    DDIM returns over held-out seeds; see components/trainer/README.md): two observations (To=2
    beat 1 and 3), one predicted action executed per call (T=2 or 4 with Ta=1 scored
    lower: the expert's future actions depend on future noise), a 3 x 64 ReLU MLP (256
    wide did not help, 64 matched 128 with more epochs and its ONNX sampler is 1.5x
    faster; ReLU beat Mish and is one fused op in onnxruntime), and
    clean-sample prediction (x0), which beat epsilon-prediction by ~14 return points.
    """

    policy_type: PolicyType = "diffusion"
    # To=2 observations seen, T=1 action predicted, Ta=1 executed before re-planning.
    window: Window = field(default_factory=lambda: Window(n_obs_steps=2))
    # The diffusion policy's denoiser: an MLP over the flat chunk (hidden_width, depth,
    # activation), or a temporal U-Net over it (unet_*: diffpol.trainer.unet). BC and the
    # seed tutorial are MLPs whatever this says.
    denoiser: DenoiserType = "mlp"
    hidden_width: int = 64
    depth: int = 3  # hidden layers
    time_embed_dim: int = 32
    activation: Activation = "relu"
    # U-Net channels per level (the chunk is halved between levels, so the horizon must be
    # divisible by 2**(levels - 1)), convolution kernel and GroupNorm groups.
    unet_down_dims: tuple[int, ...] = (32, 64, 128)
    unet_kernel_size: int = 5
    unet_groups: int = 8
    schedule: NoiseScheduleConfig = field(
        default_factory=lambda: NoiseScheduleConfig(prediction_type="sample")
    )
    objective: Objective = "ddpm"
    # flow: the training times' density (diffpol.diffusion.flow.sample_times). pi0's Beta
    # on the noisy end scored best on Pendulum-v1 (benchmarks/RESULTS.md).
    flow_time_sampling: TimeSampling = "beta"
    # consistency: the name of the DDPM policy trained earlier in the same run whose EMA
    # weights are the teacher (and the student's initialisation).
    teacher: str | None = None

    def __post_init__(self) -> None:
        _require(
            self.policy_type in POLICY_TYPES,
            f"policy_type must be one of {', '.join(POLICY_TYPES)}, got {self.policy_type!r}",
        )
        _require(
            isinstance(self.window, Window),
            f"window must be a diffpol.contracts.Window, got {self.window!r}",
        )
        _require(
            self.denoiser in DENOISERS,
            f"denoiser must be one of {', '.join(DENOISERS)}, got {self.denoiser!r}",
        )
        object.__setattr__(self, "unet_down_dims", tuple(self.unet_down_dims))
        _require(
            len(self.unet_down_dims) >= 1 and all(d >= 1 for d in self.unet_down_dims),
            f"unet_down_dims must be one or more channel counts >= 1, got {self.unet_down_dims}",
        )
        _require(
            self.unet_kernel_size >= 1 and self.unet_kernel_size % 2 == 1,
            f"unet_kernel_size must be an odd number >= 1, got {self.unet_kernel_size}",
        )
        _require(
            self.unet_groups >= 1 and all(d % self.unet_groups == 0 for d in self.unet_down_dims),
            f"unet_groups ({self.unet_groups}) must divide every unet_down_dims entry "
            f"{self.unet_down_dims}",
        )
        if self.denoiser == "unet" and isinstance(self.window, Window):
            halvings = len(self.unet_down_dims) - 1
            _require(
                self.window.horizon % 2**halvings == 0,
                f"a U-Net with {len(self.unet_down_dims)} levels halves the chunk "
                f"{halvings} times: the horizon (T={self.window.horizon}) must be divisible "
                f"by {2**halvings}; use fewer unet_down_dims or a longer horizon",
            )
        _require(self.hidden_width >= 1, f"hidden_width must be >= 1, got {self.hidden_width}")
        _require(self.depth >= 1, f"depth must be >= 1, got {self.depth}")
        _require(
            self.time_embed_dim >= 2 and self.time_embed_dim % 2 == 0,
            f"time_embed_dim must be an even number >= 2, got {self.time_embed_dim}",
        )
        _require(
            self.activation in ACTIVATIONS,
            f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}",
        )
        _require(
            self.objective in OBJECTIVES,
            f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}",
        )
        _require(
            self.flow_time_sampling in TIME_SAMPLINGS,
            f"flow_time_sampling must be one of {', '.join(TIME_SAMPLINGS)}, "
            f"got {self.flow_time_sampling!r}",
        )
        _require(
            self.objective == "ddpm" or self.policy_type == "diffusion",
            f"objective {self.objective!r} applies to the diffusion policy only",
        )
        _require(
            (self.teacher is not None) == (self.objective == "consistency"),
            "objective 'consistency' needs a teacher (the name of a DDPM policy trained "
            "earlier in the same run), and only it takes one",
        )


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warmup then cosine decay (per optimizer step), plus an EMA copy."""

    lr: float = 1e-3
    weight_decay: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 200
    # The cosine ends at lr * min_lr_ratio.
    min_lr_ratio: float = 0.0
    # EMA decay ramps up as min(ema_decay, (1 + n) / (10 + n)) so early weights fade fast.
    ema_decay: float = 0.999

    def __post_init__(self) -> None:
        _require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        _require(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"betas must be two numbers in [0, 1), got {self.betas}",
        )
        _require(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        _require(
            0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}"
        )
        _require(0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1), got {self.ema_decay}")


class SeedStream(enum.IntEnum):
    """The random streams of a training run, each derived from ``TrainConfig.seed``."""

    INIT = 0  # model initialisation, per rank
    SHUFFLE = 1  # the worker's shuffle buffer, per rank and attempt
    VALIDATION = 2  # diffusion noise of the validation loss, per block


@dataclass(frozen=True)
class TrainConfig:
    """One training run: its size, its resources and where it keeps its state."""

    # ~70k optimizer steps on 100k Pendulum rows at batch 256: 40k steps scored -140.7 and
    # 80k -139.6 (DDIM-10, 1000 held-out seeds).
    epochs: int = 200
    batch_size: int = 256
    workers: int = 1
    # GPUs for the whole run, spread evenly over the workers; 0 trains on CPU.
    gpus: float = 0
    cpus_per_worker: float = 1
    # The run's seed; each random stream derives its own (diffpol.contracts.derive_seed with
    # a SeedStream and e.g. the worker's rank).
    seed: int = 0
    # Ray Train storage (local directory or any pyarrow filesystem URI such as s3://...).
    # None: OUT_DIR/ray_results.
    storage_path: str | None = None
    # Fixed, so that running the same command again finds (and resumes or returns) the run.
    run_name: str = "diffpol-train"
    max_failures: int = 3
    keep_checkpoints: int = 2
    # Rows in the training worker's shuffle buffer (Ray Data also shuffles the block order
    # per epoch).
    shuffle_buffer_rows: int = 20_000
    progress_bar: bool = False

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _require(self.workers >= 1, f"workers must be >= 1, got {self.workers}")
        _require(self.gpus >= 0, f"gpus must be >= 0, got {self.gpus}")
        _require(
            self.cpus_per_worker > 0, f"cpus_per_worker must be > 0, got {self.cpus_per_worker}"
        )
        _require(
            bool(self.run_name) and "/" not in self.run_name,
            f"run_name must be a non-empty name without '/', got {self.run_name!r}",
        )
        _require(self.max_failures >= -1, f"max_failures must be >= -1, got {self.max_failures}")
        _require(
            self.keep_checkpoints >= 1,
            f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}",
        )
        _require(
            self.shuffle_buffer_rows >= 0,
            f"shuffle_buffer_rows must be >= 0, got {self.shuffle_buffer_rows}",
        )


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Config:
        return cls(
            model=model_config_from_json(raw["model"]),
            optim=_build(OptimConfig, raw["optim"], betas=tuple(raw["optim"]["betas"])),
            train=_build(TrainConfig, raw["train"]),
        )


def model_config_from_json(raw: dict[str, Any]) -> ModelConfig:
    """A ``ModelConfig`` from its JSON: the window nested (``{"window": {...}}``) or, as
    checkpoints written before ``Window`` have it, flat ``n_obs_steps``/``horizon``/
    ``n_action_steps`` keys."""
    raw = dict(raw)
    flat = {key: raw.pop(key) for key in WINDOW_KEYS if key in raw}
    if flat and "window" in raw:
        raise ValueError(
            f"ModelConfig: both a window and flat {', '.join(flat)} given; keep only the window"
        )
    window = raw.pop("window", None)
    window = Window(**flat) if flat else Window.from_json(window) if window is not None else None
    extra = {"window": window} if window is not None else {}
    return _build(ModelConfig, raw, schedule=_build(NoiseScheduleConfig, raw["schedule"]), **extra)


def _build(cls, raw: dict[str, Any], **overrides):
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
    return cls(**{**raw, **overrides})
