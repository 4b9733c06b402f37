"""diffpol's diffusion maths, defined once for the trainer and the sampler.

- ``schedules``: linear and cosine noise schedules, ``NoiseScheduleConfig``, timestep spacing;
- ``schedulers``: DDPM and DDIM schedulers (diffusers' ``set_timesteps`` / ``step`` /
  ``add_noise``);
- ``flow``: flow matching (rectified flow): the linear path, its velocity target and loss,
  Euler / midpoint integration on a K-step grid (``FlowScheduler``);
- ``consistency``: consistency distillation from a DDPM teacher along its DDIM ladder, and
  the 1- to N-step consistency sampler (``ConsistencyDistillation``);
- ``embedding``: the sinusoidal timestep embedding; ``activations``: ``FastMish``;
- ``sampling_loop``: the ``SamplingLoop`` interface and ``SamplingLoopSpec``, the typed
  description of a denoising loop that exporters read.
"""

__version__ = "0.1.0"

from diffpol.diffusion.activations import FastMish
from diffpol.diffusion.consistency import ConsistencyDistillation
from diffpol.diffusion.embedding import sinusoidal_embedding, sinusoidal_frequencies
from diffpol.diffusion.flow import FlowScheduler
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
    "ConsistencyDistillation",
    "DDIMScheduler",
    "DDPMScheduler",
    "Denoiser",
    "FastMish",
    "FlowScheduler",
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
