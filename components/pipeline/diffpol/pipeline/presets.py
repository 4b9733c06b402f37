"""Named settings of the end-to-end pipeline (``main.py --preset``).

``default`` is the real Pendulum-v1 run (chosen by measurement: see benchmarks/RESULTS.md);
``quick`` exercises every stage in about a minute, for tests and a first look. ``quick-unet``
is ``quick`` with action chunks (Chi et al.'s To=2, T=16, Ta=8) and the temporal U-Net
denoiser, on the same data. ``metaworld-mt10`` is the manipulation benchmark: one
multi-task policy for Meta-World's ten MT10 tasks, scored by success per task next to the
scripted expert, BC, the same policy without action chunks and the same policy trained on
10 demonstrations per task; ``metaworld-quick`` runs the same stages on two tasks in minutes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from diffpol.contracts import Window
from diffpol.trainer.config import Config, ModelConfig, OptimConfig, PolicyType, TrainConfig


@dataclass(frozen=True)
class Variant:
    """The diffusion policy with one thing changed, trained on its own samples and evaluated
    next to it (evaluation role ``variant:<name>``): another time window (e.g. no action
    chunks), and/or only the first ``episodes`` episodes of the data."""

    name: str
    label: str
    window: Window | None = None
    episodes: int | None = None
    epochs: int | None = None  # None: the diffusion policy's

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c == "-" for c in self.name):
            raise ValueError(f"a variant name is letters, digits and '-', got {self.name!r}")
        if self.window is None and self.episodes is None:
            raise ValueError(f"variant {self.name!r} changes nothing: give a window or episodes")
        if self.episodes is not None and self.episodes < 1:
            raise ValueError(f"variant {self.name!r}: episodes must be >= 1")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"variant {self.name!r}: epochs must be >= 1")


# The policies an evaluation part can hold (``Preset.headline`` / ``side_by_side``), besides
# ``variant:<name>``: the env's expert, random and zero actions, the trained baselines, and
# the diffusion policy sampled with DDPM and DDIM in PyTorch, DDIM as the exported ONNX
# graph, and that graph served by the gRPC sampler.
BASELINE_TYPES: tuple[PolicyType, ...] = ("bc", "seed-tutorial")
ROLES = ("expert", "random", "zero", *BASELINE_TYPES, "ddpm", "ddim", "onnx", "grpc")


@dataclass(frozen=True)
class Preset:
    env_id: str = "Pendulum-v1"
    # Data: the expert executed with exploration noise, labelled with its clean action.
    data_policy: str = "noisy-expert"
    noise_max: float = 1.0
    episodes: int = 500
    rollout_actors: int = 2
    # Envs each rollout actor steps at once (a Meta-World env holds tens of MB).
    envs_per_actor: int = 256
    val_fraction: float = 0.1
    # The diffusion policy and the two baselines trained on the same samples.
    config: Config = field(default_factory=Config)
    baselines: tuple[PolicyType, ...] = BASELINE_TYPES
    baseline_epochs: int = 10
    variants: tuple[Variant, ...] = ()
    # Evaluation on held-out env seeds (the data uses seeds seed .. seed + episodes - 1).
    eval_seeds: str = "100000:101000"
    ddim_steps: int = 10
    ddpm_steps: int = 100
    # Slow PyTorch-side baselines (DDPM-100 in eager mode) are compared on fewer seeds.
    torch_eval_seeds: str = "100000:100200"
    # What each evaluation part compares (ROLES): the headline on eval_seeds, the side by
    # side on torch_eval_seeds.
    headline: tuple[str, ...] = ("expert", "onnx", "grpc")
    side_by_side: tuple[str, ...] = (
        "random",
        "zero",
        "seed-tutorial",
        "bc",
        "expert",
        "ddpm",
        "ddim",
        "onnx",
        "grpc",
    )
    # The sampler comparison (diffpol.pipeline.samplers), opt-in: e.g.
    # "ddim-10,flow-2,consistency-1"; empty: not run. A flow policy trains for
    # flow_epochs (None: the diffusion policy's epochs), a consistency policy is distilled
    # from the diffusion policy for consistency_epochs.
    samplers: str = ""
    flow_epochs: int | None = None
    consistency_epochs: int = 24

    def __post_init__(self) -> None:
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {names}")
        unknown = [b for b in self.baselines if b not in BASELINE_TYPES]
        if unknown:
            raise ValueError(f"baselines are {' and '.join(BASELINE_TYPES)}, got {unknown}")
        known = {*ROLES, *(f"variant:{n}" for n in names)}
        for part in ("headline", "side_by_side"):
            roles = getattr(self, part)
            if not roles or len(set(roles)) != len(roles):
                raise ValueError(f"{part} must name one or more policies once each: {roles}")
            if [r for r in roles if r not in known]:
                raise ValueError(f"{part}: {roles} has policies other than {sorted(known)}")
            untrained = [r for r in roles if r in BASELINE_TYPES and r not in self.baselines]
            if untrained:
                raise ValueError(f"{part} evaluates {untrained}, which baselines does not train")

    @property
    def window(self) -> Window:
        """The one time window of the run: preprocess builds its samples with it and the
        model is configured with it."""
        return self.config.model.window


# Manipulation: Chi et al.'s state-based defaults, To=2 observations, T=16 actions predicted,
# Ta=8 executed before re-planning; and the same policy without chunks.
_CHUNKS = Window(n_obs_steps=2, horizon=16, n_action_steps=8)
_UNCHUNKED = Variant("unchunked", "diffusion without chunks (T=Ta=1)", window=Window(n_obs_steps=2))
_TEN_DEMOS = "diffusion, 10 demos per task (DP3 protocol)"

_METAWORLD_MT10 = Preset(
    env_id="metaworld/MT10",
    # Meta-World's scripted experts executed with exploration noise, labelled clean.
    noise_max=0.5,
    episodes=1000,  # 100 per task: seeds 0..999, task = seed % 10
    envs_per_actor=20,
    config=Config(
        # A 4 x 512 Mish MLP over the flat chunk: on a 2-core CPU it beat the temporal
        # U-Net on MT10 success at the same training time (benchmarks/RESULTS.md).
        model=ModelConfig(window=_CHUNKS, hidden_width=512, depth=4, activation="mish"),
        # ~9k optimizer steps; every policy of the run gets as many (the 10-demo
        # variant has a tenth of the rows, so ten times the epochs).
        train=TrainConfig(epochs=24),
    ),
    baselines=("bc",),
    baseline_epochs=24,
    variants=(_UNCHUNKED, Variant("10-demos", _TEN_DEMOS, episodes=100, epochs=240)),
    # --samplers: a distillation step costs ~1.6 teacher steps, so 4 epochs are ~27% of
    # the teacher's training (benchmarks/RESULTS.md, few-step samplers).
    consistency_epochs=4,
    eval_seeds="100000:100500",  # 50 per task
    torch_eval_seeds="100000:100100",
    headline=("expert", "onnx", "bc", "variant:unchunked", "variant:10-demos"),
    side_by_side=("expert", "ddim", "onnx", "grpc"),
)

_QUICK = Preset(
    episodes=24,
    rollout_actors=1,
    config=Config(
        model=ModelConfig(hidden_width=64, depth=2),
        optim=OptimConfig(warmup_steps=10),
        train=TrainConfig(epochs=2, batch_size=256),
    ),
    baseline_epochs=1,
    eval_seeds="100000:100016",
    torch_eval_seeds="100000:100008",
    ddpm_steps=20,
    consistency_epochs=1,
)

PRESETS: dict[str, Preset] = {
    # 160 epochs of the 450 training episodes: 56k steps at batch 256. The 3x64 model
    # scored -142.0 after 115 epochs and -140.4 after 160 (DDIM-10, 1000 held-out seeds;
    # benchmarks/RESULTS.md); 3x128 reached -140.2 to -140.7 in 115.
    "default": Preset(config=Config(train=TrainConfig(epochs=160))),
    "quick": _QUICK,
    # quick with the chunked temporal U-Net as the denoiser.
    "quick-unet": dataclasses.replace(
        _QUICK,
        config=dataclasses.replace(
            _QUICK.config, model=ModelConfig(window=_CHUNKS, denoiser="unet")
        ),
    ),
    "metaworld-mt10": _METAWORLD_MT10,
    # The same stages on two tasks, small: every stage runs, in minutes (CI).
    "metaworld-quick": dataclasses.replace(
        _METAWORLD_MT10,
        env_id="metaworld/reach-v3+drawer-close-v3",
        episodes=24,
        rollout_actors=1,
        envs_per_actor=12,
        config=Config(
            model=ModelConfig(window=_CHUNKS, hidden_width=64, depth=2, activation="mish"),
            optim=OptimConfig(warmup_steps=10),
            train=TrainConfig(epochs=2, batch_size=256),
        ),
        baseline_epochs=1,
        variants=(_UNCHUNKED, Variant("10-demos", _TEN_DEMOS, episodes=20, epochs=2)),
        consistency_epochs=1,
        eval_seeds="100000:100008",
        torch_eval_seeds="100000:100004",
    ),
}


# What --samplers compares when given without a list.
DEFAULT_SAMPLERS = "ddim-10,ddim-2,ddim-1,flow-10,flow-2,flow-1,consistency-2,consistency-1"


def resolve_preset(name: str, samplers: str | None = None, **overrides) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    preset = PRESETS[name]
    if samplers is not None:
        preset = dataclasses.replace(preset, samplers=samplers)
    train_overrides = {k: v for k, v in overrides.items() if v is not None}
    if train_overrides:
        config = dataclasses.replace(
            preset.config, train=dataclasses.replace(preset.config.train, **train_overrides)
        )
        preset = dataclasses.replace(preset, config=config)
    return preset
