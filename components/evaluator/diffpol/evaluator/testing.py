"""Small deterministic policies for the evaluator's tests, importable by Ray workers.

They are real controllers (no learned weights), written so that a test can replay them in
an independent gymnasium loop: every row of a batch is computed independently, and each
action of a chunk differs, so executing the wrong action of a chunk changes the return.
"""

from __future__ import annotations

import os

import numpy as np

from diffpol.contracts import PolicySpec, draw_noise


class PendulumPD:
    """PD control towards upright: ``u = -(kp * theta + kd * theta_dot) - ka * d(theta_dot)``.

    ``d(theta_dot)`` is the change of theta_dot across the observation history (zero for a
    single observation, or at episode start where the history repeats the first one). Action
    ``k`` of a chunk is scaled by ``decay**k``. ``noise_std > 0`` adds noise drawn from the
    call's seed with ``draw_noise``, like a sampler. Counts its calls in ``calls``.
    """

    def __init__(
        self,
        kp: float = 10.0,
        kd: float = 2.0,
        ka: float = 0.5,
        *,
        n_obs_steps: int = 1,
        n_action_steps: int = 1,
        decay: float = 0.9,
        noise_std: float = 0.0,
    ) -> None:
        self.spec = PolicySpec(3, 1, n_obs_steps, n_action_steps)
        self.kp, self.kd, self.ka = kp, kd, ka
        self.decay, self.noise_std = decay, noise_std
        self.calls = 0
        self.seeds: list[int | None] = []

    def act(self, obs: np.ndarray, seed: int | None = None) -> np.ndarray:
        self.calls += 1
        self.seeds.append(seed)
        latest, oldest = obs[:, -1], obs[:, 0]
        theta = np.arctan2(latest[:, 1], latest[:, 0])
        u = -(self.kp * theta + self.kd * latest[:, 2]) - self.ka * (latest[:, 2] - oldest[:, 2])
        scale = self.decay ** np.arange(self.spec.n_action_steps, dtype=np.float32)
        actions = u[:, None, None] * scale[None, :, None]
        if self.noise_std:
            actions = actions + self.noise_std * draw_noise(seed, actions.shape)
        return np.clip(actions, -2.0, 2.0).astype(np.float32)


class PidRecordingPD(PendulumPD):
    """``PendulumPD`` that appends the pid of every process that unpickles it (an actor
    loading it) to the file ``path``, one line each."""

    def __init__(self, path: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.path = str(path)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        with open(self.path, "a") as f:
            f.write(f"{os.getpid()}\n")


class MountainCarPump:
    """Push in the direction of motion (``+gain`` when at rest): reaches the goal early."""

    def __init__(self, gain: float = 1.0, *, n_action_steps: int = 1) -> None:
        self.spec = PolicySpec(2, 1, 1, n_action_steps)
        self.gain = gain

    def act(self, obs: np.ndarray, seed: int | None = None) -> np.ndarray:
        velocity = obs[:, -1, 1]
        u = np.where(velocity >= 0, self.gain, -self.gain).astype(np.float32)
        return np.repeat(u[:, None, None], self.spec.n_action_steps, axis=1)


class TorchPD:
    """``PendulumPD``'s control law as a PyTorch module, like the trainer's torch policies:
    it must travel to Ray workers by value (cloudpickle) and run there on one thread."""

    def __init__(self, kp: float = 10.0, kd: float = 2.0) -> None:
        import torch

        self.spec = PolicySpec(3, 1, 1, 1)
        self.gains = torch.nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.gains.weight.copy_(torch.tensor([[-kp, -kd]]))

    def act(self, obs: np.ndarray, seed: int | None = None) -> np.ndarray:
        import torch

        with torch.no_grad():
            latest = torch.from_numpy(np.ascontiguousarray(obs[:, -1], np.float32))
            theta = torch.atan2(latest[:, 1], latest[:, 0])
            u = self.gains(torch.stack([theta, latest[:, 2]], dim=1)).clamp(-2.0, 2.0)
        return u.numpy()[:, None, :]
