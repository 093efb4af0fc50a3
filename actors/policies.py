"""Behaviour policies the rollout actors act with.

A policy sees the observations of all of an actor's envs at once and returns one
action per env in [-1, 1]^A. `reset(i)` is called when env i starts an episode, so
policies with memory (temporally correlated noise, frame stacks) can clear it.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from common.envs import Observation


class BehaviourPolicy(Protocol):
    def reset(self, env_index: int) -> None: ...

    def act(self, observations: list[Observation]) -> np.ndarray: ...


class CorrelatedRandomPolicy:
    """Random actions with AR(1) temporal correlation: smooth, exploring motion.

    a_t = clip(c * a_{t-1} + sqrt(1 - c^2) * eps_t, -1, 1), eps ~ N(0, scale^2).
    `correlation = 0` gives iid uniform actions on [-1, 1]^A instead, the choice that
    makes the correlated distractor's background exactly rho-correlated with the action.
    """

    def __init__(self, num_envs: int, action_dim: int, rng: np.random.Generator,
                 correlation: float = 0.8, scale: float = 0.6):
        if not 0.0 <= correlation < 1.0:
            raise ValueError(f"action correlation must be in [0, 1), got {correlation}")
        self.rng = rng
        self.correlation = correlation
        self.scale = scale
        self.previous = np.zeros((num_envs, action_dim), dtype=np.float32)

    def reset(self, env_index: int) -> None:
        self.previous[env_index] = 0.0

    def act(self, observations: list[Observation]) -> np.ndarray:
        shape = self.previous.shape
        if self.correlation == 0.0:
            return self.rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)
        noise = self.rng.normal(0.0, self.scale, size=shape)
        c = self.correlation
        self.previous = np.clip(c * self.previous + np.sqrt(1 - c * c) * noise, -1.0, 1.0).astype(np.float32)
        return self.previous.copy()
