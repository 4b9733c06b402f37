"""Few-step diffusion policies: flow matching and consistency distillation.

Both keep the DDPM policy's denoiser, EMA, checkpoints and resume (they subclass
``DiffusionPolicyModel``, so their weights have the same names); only the objective and
the sampling loop differ. The maths is ``diffpol.diffusion.flow`` and
``diffpol.diffusion.consistency``.

- ``FlowPolicyModel`` (objective "flow"): the denoiser regresses the velocity of the
  straight path from noise to action chunk, at times drawn by ``flow_time_sampling``;
  samplers "flow" (K Euler steps, K network calls) and "flow-midpoint" (K/2 midpoint
  steps, K calls).
- ``ConsistencyPolicyModel`` (objective "consistency"): initialised from a DDPM teacher's
  EMA weights, trained to map any point of the teacher's DDIM-10 trajectories to their
  end; sampler "consistency" with 1 to 10 steps (1 or 2 in practice).

Loops that are affine per step (Euler, consistency) are ``sampling.DenoisingLoop``s, like
DDPM and DDIM, so the sampler's exporters take them too.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from diffpol.diffusion import ConsistencyDistillation, FlowScheduler
from diffpol.diffusion.embedding import sinusoidal_embedding
from diffpol.diffusion.flow import TIME_SCALE, flow_matching_loss, sample_times
from diffpol.diffusion.sampling_loop import Denoiser
from diffpol.trainer.checkpoint import CheckpointError, load_policy_weights, read_checkpoint
from diffpol.trainer.config import ModelConfig
from diffpol.trainer.distributed import broadcast_from_rank0, world_rank
from diffpol.trainer.modeling import DiffusionPolicyModel
from diffpol.trainer.sampling import DenoisingLoop

# Samplers per objective, the first the default.
SAMPLERS_BY_OBJECTIVE: dict[str, tuple[str, ...]] = {
    "ddpm": ("ddim", "ddpm"),
    "flow": ("flow", "flow-midpoint"),
    "consistency": ("consistency",),
}


def check_sampler(objective: str, sampler: str) -> None:
    """Raise ValueError unless ``sampler`` samples a policy trained with ``objective``."""
    allowed = SAMPLERS_BY_OBJECTIVE[objective]
    if sampler not in allowed:
        raise ValueError(
            f"a policy trained with objective {objective!r} samples with "
            f"{' or '.join(allowed)}, not {sampler!r}"
        )


class FlowMidpointLoop(nn.Module):
    """Explicit-midpoint integration of a flow policy (two network calls per step)."""

    step_noise_steps = 0

    def __init__(self, denoiser: Denoiser, steps: int, horizon: int, act_dim: int) -> None:
        super().__init__()
        if steps < 2 or steps % 2:
            raise ValueError(f"flow-midpoint takes an even number >= 2 of steps, got {steps}")
        self.denoiser = denoiser
        self.sampler = "flow-midpoint"
        self.scheduler = FlowScheduler("midpoint").set_timesteps(steps // 2)
        self.steps = self.scheduler.num_evaluations
        self.horizon, self.act_dim = horizon, act_dim
        self.register_buffer(
            "time_features",
            sinusoidal_embedding(
                torch.tensor(self.scheduler.network_times(), dtype=torch.float32),
                denoiser.time_embed_dim,
            ),
            persistent=False,
        )

    def forward(self, obs_norm, noise, step_noise=None) -> torch.Tensor:
        cond = self.denoiser.encode_condition(obs_norm.flatten(1))
        time_terms = self.denoiser.time_terms(self.time_features)
        # The scheduler's two evaluation times per step, in order, map to these terms.
        index = {t: i for i, t in enumerate(self.scheduler.network_times())}

        def velocity(x, t):
            return self.denoiser.denoise(x, cond, time_terms[index[t * TIME_SCALE]])

        x = noise.flatten(1)
        for i in range(len(self.scheduler.timesteps)):
            x = self.scheduler.midpoint_step(velocity, i, x)
        return x.unflatten(1, (self.horizon, self.act_dim))


class FlowPolicyModel(DiffusionPolicyModel):
    """Flow matching over the normalised action chunk (``diffpol.diffusion.flow``)."""

    def compute_loss(self, obs, action, generator=None) -> torch.Tensor:
        noise = torch.randn(action.shape, generator=generator, device=action.device)
        t = sample_times(action.shape[0], self.config.flow_time_sampling, generator, action.device)
        cond = self.denoiser.encode_condition(obs)

        def velocity(x, tt):
            return self.denoiser.denoise(x, cond, self.denoiser.encode_time(tt * TIME_SCALE))

        return flow_matching_loss(velocity, action, noise, t)

    def sampling_loop(self, sampler: str = "flow", steps: int = 2, eta: float = 0.0):
        check_sampler("flow", sampler)
        if sampler == "flow-midpoint":
            return FlowMidpointLoop(self.denoiser, steps, self.config.window.horizon, self.act_dim)
        scheduler = FlowScheduler("euler").set_timesteps(steps)
        return DenoisingLoop(
            self.denoiser,
            "flow",
            scheduler.network_times(),
            scheduler.updates(),
            None,
            self.config.window.horizon,
            self.act_dim,
        )


class ConsistencyPolicyModel(DiffusionPolicyModel):
    """Consistency distillation of a DDPM teacher (``diffpol.diffusion.consistency``).

    The teacher is attached with ``set_teacher`` before training; it is held outside the
    module's parameters and state (a checkpoint holds the student only)."""

    def __init__(self, config, obs_dim: int, act_dim: int) -> None:
        super().__init__(config, obs_dim, act_dim)
        self.distillation = ConsistencyDistillation(config.schedule)
        self.__dict__["_teacher"] = None  # not a submodule: no parameters, no state

    def set_teacher(self, teacher: DiffusionPolicyModel) -> None:
        teacher = teacher.eval().requires_grad_(False)
        self.__dict__["_teacher"] = teacher

    def compute_loss(self, obs, action, generator=None) -> torch.Tensor:
        teacher = self.__dict__["_teacher"]
        if teacher is None:
            raise RuntimeError("a consistency policy trains only with its teacher attached")
        if next(teacher.parameters()).device != action.device:
            teacher.to(action.device)
        noise = torch.randn(action.shape, generator=generator, device=action.device)
        index = self.distillation.sample_index(action.shape[0], action.device, generator)
        cond = self.denoiser.encode_condition(obs)
        with torch.no_grad():
            teacher_cond = teacher.denoiser.encode_condition(obs)

        def student(x, t):
            return self.denoiser.denoise(x, cond, self.denoiser.encode_time(t))

        def teacher_net(x, t):
            return teacher.denoiser.denoise(x, teacher_cond, teacher.denoiser.encode_time(t))

        return self.distillation.loss(student, teacher_net, action, noise, index)

    def sampling_loop(self, sampler: str = "consistency", steps: int = 1, eta: float = 0.0):
        check_sampler("consistency", sampler)
        updates = self.distillation.sampling_updates(steps)
        return DenoisingLoop(
            self.denoiser,
            "consistency",
            [float(u.timestep) for u in updates],
            updates,
            self.distillation.clip_range,
            self.config.window.horizon,
            self.act_dim,
        )


def load_teacher(
    directory: Path, student: ModelConfig, obs_dim: int, act_dim: int
) -> DiffusionPolicyModel:
    """The DDPM teacher's EMA model from its state in this run (``directory``), checked
    to be complete and to have the student's network. Rank 0 holds the weights; the
    other workers receive them (collective: every worker must call this)."""
    model_config = dataclasses.replace(student, objective="ddpm", teacher=None)
    teacher = DiffusionPolicyModel(model_config, obs_dim, act_dim)
    if world_rank() == 0:
        try:
            contents = read_checkpoint(directory)
        except CheckpointError as exc:
            raise CheckpointError(
                f"the teacher {student.teacher!r} has no state in this run ({exc}): train it "
                "before the consistency policy, in the same run"
            ) from exc
        if not contents.meta.completed:
            raise CheckpointError(f"the teacher {student.teacher!r} has not finished training")
        if contents.config.model != model_config:
            raise ValueError(
                f"the consistency policy must have its teacher's network and schedule: "
                f"teacher {contents.config.model}, student {student}"
            )
        teacher.load_state_dict(load_policy_weights(directory)["ema"])
    broadcast_from_rank0(teacher)
    return teacher.eval().requires_grad_(False)
