"""Named settings of the end-to-end pipeline (``main.py --preset``).

``default`` is the real run (chosen by measurement: see benchmarks/RESULTS.md); ``quick``
exercises every stage in about a minute, for tests and a first look. ``quick-unet`` is
``quick`` with action chunks (Chi et al.'s To=2, T=16, Ta=8) and the temporal U-Net
denoiser, on the same data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from diffpol.contracts import Window
from diffpol.trainer.config import Config, ModelConfig, OptimConfig, TrainConfig


@dataclass(frozen=True)
class Preset:
    env_id: str = "Pendulum-v1"
    # Data: the expert executed with exploration noise, labelled with its clean action.
    data_policy: str = "noisy-expert"
    noise_max: float = 1.0
    episodes: int = 500
    rollout_actors: int = 2
    val_fraction: float = 0.1
    # The diffusion policy and the two baselines trained on the same samples.
    config: Config = field(default_factory=Config)
    baseline_epochs: int = 10
    # Evaluation on held-out env seeds (the data uses seeds seed .. seed + episodes - 1).
    eval_seeds: str = "100000:101000"
    ddim_steps: int = 10
    ddpm_steps: int = 100
    # Slow PyTorch-side baselines (DDPM-100 in eager mode) are compared on fewer seeds.
    torch_eval_seeds: str = "100000:100200"
    # The sampler comparison (diffpol.pipeline.samplers), opt-in: e.g.
    # "ddim-10,flow-2,consistency-1"; empty: not run. A flow policy trains for
    # flow_epochs (None: the diffusion policy's epochs), a consistency policy is distilled
    # from the diffusion policy for consistency_epochs.
    samplers: str = ""
    flow_epochs: int | None = None
    consistency_epochs: int = 24

    @property
    def window(self) -> Window:
        """The one time window of the run: preprocess builds its samples with it and the
        model is configured with it."""
        return self.config.model.window


PRESETS: dict[str, Preset] = {
    # 160 epochs of the 450 training episodes: 56k steps at batch 256. The 3x64 model
    # scored -142.0 after 115 epochs and -140.4 after 160 (DDIM-10, 1000 held-out seeds;
    # benchmarks/RESULTS.md); 3x128 reached -140.2 to -140.7 in 115.
    "default": Preset(config=Config(train=TrainConfig(epochs=160))),
    "quick": Preset(
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
    ),
    "quick-unet": Preset(
        episodes=24,
        rollout_actors=1,
        config=Config(
            model=ModelConfig(
                window=Window(n_obs_steps=2, horizon=16, n_action_steps=8), denoiser="unet"
            ),
            optim=OptimConfig(warmup_steps=10),
            train=TrainConfig(epochs=2, batch_size=256),
        ),
        baseline_epochs=1,
        eval_seeds="100000:100016",
        torch_eval_seeds="100000:100008",
        ddpm_steps=20,
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
