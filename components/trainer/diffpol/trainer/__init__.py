"""diffpol's trainer: diffusion policies (DDPM/DDIM over action chunks) trained with
Lightning inside Ray Train, fed by Ray Data; checkpoints that load without unpickling.

``train(samples_dir, out_dir, config)`` trains and returns a ``TrainResult``;
``train_many(samples_dir, {name: PolicyRun(config, out_dir)})`` trains several policies in
one Ray Train run, each on ``samples_dir`` or its own (``PolicyRun.samples_dir``);
``steps_per_epoch`` says how many optimizer steps an epoch of a run takes;
``load_policy(checkpoint_dir, sampler, steps)`` gives a ``TorchPolicy`` (a
``diffpol.contracts.Policy``) whose ``loop`` the sampler component exports to ONNX.
"""

__version__ = "0.1.0"

from diffpol.diffusion import DDIMScheduler, DDPMScheduler, NoiseScheduleConfig
from diffpol.trainer.checkpoint import CheckpointError, CheckpointMeta, read_checkpoint
from diffpol.trainer.config import Config, ModelConfig, OptimConfig, PolicyType, TrainConfig
from diffpol.trainer.modeling import (
    EMA,
    BCPolicyModel,
    ConditionalMLPDenoiser,
    DiffusionPolicyModel,
    SeedTutorialModel,
    build_policy_model,
)
from diffpol.trainer.policy import TorchPolicy, load_policy
from diffpol.trainer.sampling import DenoisingLoop, RegressionLoop, SeedTutorialLoop
from diffpol.trainer.training import PolicyRun, RunMismatchError, TrainResult, train, train_many
from diffpol.trainer.worker import steps_per_epoch

__all__ = [
    "EMA",
    "BCPolicyModel",
    "CheckpointError",
    "CheckpointMeta",
    "ConditionalMLPDenoiser",
    "Config",
    "DDIMScheduler",
    "DDPMScheduler",
    "DenoisingLoop",
    "DiffusionPolicyModel",
    "ModelConfig",
    "NoiseScheduleConfig",
    "OptimConfig",
    "PolicyRun",
    "PolicyType",
    "RegressionLoop",
    "RunMismatchError",
    "SeedTutorialLoop",
    "SeedTutorialModel",
    "TorchPolicy",
    "TrainConfig",
    "TrainResult",
    "__version__",
    "build_policy_model",
    "load_policy",
    "read_checkpoint",
    "steps_per_epoch",
    "train",
    "train_many",
]
