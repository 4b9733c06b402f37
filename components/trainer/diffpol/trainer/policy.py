"""A trained checkpoint as a ``diffpol.contracts.Policy`` in PyTorch.

``TorchPolicy.act`` computes exactly what the exported ONNX sampler computes: normalise
the observations, run the loop on noise drawn with ``draw_sampler_noise(seed, ...)``, keep
the first ``n_action_steps`` actions, unnormalise, clip to the action bounds. The same
seed therefore gives the same actions here, through ONNX and through the gRPC server.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from diffpol.contracts import EnvShape, PolicySpec, Window, draw_sampler_noise
from diffpol.contracts.errors import ContractError
from diffpol.contracts.normalizer import Normalizer
from diffpol.trainer.checkpoint import (
    POLICY_FILE,
    CheckpointError,
    load_policy_weights,
    read_checkpoint,
)
from diffpol.trainer.config import Config
from diffpol.trainer.fewstep import SAMPLERS_BY_OBJECTIVE, check_sampler
from diffpol.trainer.modeling import build_policy_model

SAMPLERS = ("ddim", "ddpm", "flow", "flow-midpoint", "consistency")


@dataclass(frozen=True)
class _Bounds:
    low: np.ndarray
    high: np.ndarray


class TorchPolicy:
    """``act(obs [B, To, obs_dim], seed) -> [B, Ta, act_dim]`` in env units.

    Also carries what the sampler's ONNX export takes (``diffpol.sampler.export_onnx(
    policy.loop, policy.normalizer, policy.env, policy.window, path,
    model_version=policy.model_version)``): ``loop`` (a ``diffpol.diffusion.SamplingLoop``),
    ``normalizer``, the ``env`` shape, the time ``window`` and a ``model_version`` naming
    the weights.
    """

    def __init__(
        self,
        loop: nn.Module,
        normalizer: Normalizer,
        env: EnvShape,
        window: Window,
        config: Config,
        model_version: str,
    ) -> None:
        self.loop = loop.eval()
        self.normalizer = normalizer
        self.env = env
        self.window = window
        self.spec = PolicySpec(env.obs_dim, env.act_dim, window.n_obs_steps, window.n_action_steps)
        self.config = config
        self.model_version = model_version
        self._bounds = _Bounds(
            np.asarray(env.action_low, np.float32), np.asarray(env.action_high, np.float32)
        )
        # What a NaN action becomes (as in the ONNX graph): the centre, within bounds.
        self._fallback = np.clip(
            np.asarray(normalizer.action.center, np.float32), self._bounds.low, self._bounds.high
        )

    @property
    def sampler(self) -> str:
        return str(self.loop.sampler)

    @property
    def steps(self) -> int:
        return int(self.loop.steps)

    def act(self, obs: np.ndarray, seed: int | None = None) -> np.ndarray:
        obs = np.asarray(obs, dtype=np.float32)
        expected = (self.spec.n_obs_steps, self.spec.obs_dim)
        if obs.ndim != 3 or obs.shape[1:] != expected:
            raise ContractError(
                f"obs must have shape [B, {expected[0]}, {expected[1]}] "
                f"(batch, n_obs_steps, obs_dim), got {list(obs.shape)}"
            )
        batch = obs.shape[0]
        noise, step_noise = draw_sampler_noise(
            seed, batch, self.window.horizon, self.env.act_dim, int(self.loop.step_noise_steps)
        )
        with torch.no_grad():
            args = [torch.from_numpy(self.normalizer.obs.normalize(obs)), torch.from_numpy(noise)]
            if step_noise is not None:
                args.append(torch.from_numpy(step_noise))
            action_norm = self.loop(*args)[:, : self.spec.n_action_steps].numpy()
        action = self.normalizer.action.unnormalize(action_norm)
        action = np.where(np.isnan(action), self._fallback, action)
        return np.clip(action, self._bounds.low, self._bounds.high).astype(np.float32)


def load_policy(
    checkpoint_dir: str | Path,
    sampler: str | None = None,
    steps: int = 10,
    *,
    eta: float = 0.0,
    use_ema: bool = True,
) -> TorchPolicy:
    """A ``TorchPolicy`` from a checkpoint directory (``TrainResult.checkpoint_dir``).

    ``sampler``/``steps``/``eta`` choose the diffusion sampler (ignored by the "bc" and
    "seed-tutorial" baselines, whose inference is fixed): "ddim"/"ddpm" for a policy
    trained with the DDPM objective, "flow"/"flow-midpoint" for flow matching,
    "consistency" for a consistency policy; None means the first of those. The EMA weights are used unless
    ``use_ema`` is false. Only JSON and plain tensors are read (``weights_only=True``).
    """
    if sampler is not None and sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    contents = read_checkpoint(checkpoint_dir)
    config, data = contents.config, contents.meta.data
    obs_dim, act_dim = int(data["obs_dim"]), int(data["act_dim"])
    model = build_policy_model(config.model, obs_dim, act_dim, contents.normalizer)
    weights = load_policy_weights(checkpoint_dir)
    try:
        model.load_state_dict(weights["ema" if use_ema else "model"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"{checkpoint_dir}: weights do not fit the model its config describes: {exc}"
        ) from exc
    model.eval()
    if config.model.policy_type == "diffusion":
        objective = config.model.objective
        sampler = sampler or SAMPLERS_BY_OBJECTIVE[objective][0]
        check_sampler(objective, sampler)
    loop = model.sampling_loop(sampler=sampler or "ddim", steps=steps, eta=eta)
    digest = hashlib.sha256((Path(checkpoint_dir) / POLICY_FILE).read_bytes()).hexdigest()
    return TorchPolicy(
        loop=loop,
        normalizer=contents.normalizer,
        env=EnvShape.from_json(data),
        window=config.model.window,
        config=config,
        model_version=f"{config.model.policy_type}-e{contents.meta.epochs_completed}-{digest[:12]}",
    )
