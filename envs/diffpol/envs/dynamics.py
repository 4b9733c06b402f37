"""Vectorised NumPy copies of the classic-control dynamics, for planning and fast evaluation.

``pendulum_step`` repeats gymnasium's ``PendulumEnv.step`` operation by operation, with the
same dtypes (the torque term is float32 there because the action is), so a batch of
episodes simulated here returns what gymnasium returns to float64 rounding. The experts
plan with it; tests check it against gymnasium.
"""

from __future__ import annotations

import numpy as np

# Pendulum-v1 constants (gymnasium.envs.classic_control.pendulum).
PENDULUM_MAX_SPEED = 8.0
PENDULUM_MAX_TORQUE = 2.0
PENDULUM_DT = 0.05
PENDULUM_G = 10.0
# theta'' = GAIN_SIN * sin(theta) + GAIN_U * u, with m = l = 1.
PENDULUM_GAIN_SIN = 3 * PENDULUM_G / 2
PENDULUM_GAIN_U = 3.0


def angle_normalize(theta: np.ndarray) -> np.ndarray:
    """Wrap angles to [-pi, pi), as gymnasium's Pendulum does in its cost."""
    return ((theta + np.pi) % (2 * np.pi)) - np.pi


def pendulum_cost(theta: np.ndarray, theta_dot: np.ndarray, u: np.ndarray) -> np.ndarray:
    u = np.clip(np.asarray(u, dtype=np.float32), -PENDULUM_MAX_TORQUE, PENDULUM_MAX_TORQUE)
    return angle_normalize(theta) ** 2 + 0.1 * theta_dot**2 + 0.001 * (u**2)


def pendulum_step(
    theta: np.ndarray, theta_dot: np.ndarray, u: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step for a batch: returns (theta', theta_dot', reward). ``u`` is cast to float32
    first, as an env action is."""
    u = np.clip(np.asarray(u, dtype=np.float32), -PENDULUM_MAX_TORQUE, PENDULUM_MAX_TORQUE)
    cost = angle_normalize(theta) ** 2 + 0.1 * theta_dot**2 + 0.001 * (u**2)
    new_theta_dot = (
        theta_dot + (PENDULUM_GAIN_SIN * np.sin(theta) + PENDULUM_GAIN_U * u) * PENDULUM_DT
    )
    new_theta_dot = np.clip(new_theta_dot, -PENDULUM_MAX_SPEED, PENDULUM_MAX_SPEED)
    new_theta = theta + new_theta_dot * PENDULUM_DT
    return new_theta, new_theta_dot, -cost


def pendulum_obs(theta: np.ndarray, theta_dot: np.ndarray) -> np.ndarray:
    """Observation [cos, sin, theta_dot] in float32, shape [..., 3]."""
    return np.stack([np.cos(theta), np.sin(theta), theta_dot], axis=-1).astype(np.float32)


def pendulum_state_from_obs(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(theta, theta_dot) in float64 from observations [..., 3]; theta in [-pi, pi]."""
    obs = np.asarray(obs, dtype=np.float64)
    return np.arctan2(obs[..., 1], obs[..., 0]), obs[..., 2]


def pendulum_returns(
    policy, theta0: np.ndarray, theta_dot0: np.ndarray, steps: int = 200
) -> np.ndarray:
    """Episode returns of ``policy(obs [B, 3] float32) -> u [B]`` from the given initial states."""
    theta, theta_dot = np.asarray(theta0, np.float64), np.asarray(theta_dot0, np.float64)
    total = np.zeros(theta.shape, dtype=np.float64)
    for _ in range(steps):
        u = np.asarray(policy(pendulum_obs(theta, theta_dot)), dtype=np.float32).reshape(
            theta.shape
        )
        theta, theta_dot, reward = pendulum_step(theta, theta_dot, u)
        total += reward
    return total
