"""diffpol's diffusion maths, defined once for the trainer and the sampler.

- ``schedules``: linear and cosine noise schedules, ``NoiseScheduleConfig``, timestep spacing;
- ``schedulers``: DDPM and DDIM schedulers (diffusers' ``set_timesteps`` / ``step`` /
  ``add_noise``);
- ``embedding``: the sinusoidal timestep embedding; ``activations``: ``FastMish``;
- ``sampling_loop``: the ``SamplingLoop`` interface and ``SamplingLoopSpec``, the typed
  description of a denoising loop that exporters read.
"""

__version__ = "0.1.0"

from diffpol.diffusion.activations import FastMish
from diffpol.diffusion.embedding import sinusoidal_embedding, sinusoidal_frequencies
from diffpol.diffusion.sampling_loop import (
    Denoiser,
    MlpDenoiser,
    SamplingLoop,
    SamplingLoopSpec,
    StepUpdate,
)
from diffpol.diffusion.schedulers import DDIMScheduler, DDPMScheduler, make_scheduler
from diffpol.diffusion.schedules import (
    NoiseScheduleConfig,
    make_betas,
    make_timesteps,
)

__all__ = [
    "DDIMScheduler",
    "DDPMScheduler",
    "Denoiser",
    "FastMish",
    "MlpDenoiser",
    "NoiseScheduleConfig",
    "SamplingLoop",
    "SamplingLoopSpec",
    "StepUpdate",
    "__version__",
    "make_betas",
    "make_scheduler",
    "make_timesteps",
    "sinusoidal_embedding",
    "sinusoidal_frequencies",
]
