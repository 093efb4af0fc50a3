"""Behaviour policies the rollout actors act with.

A policy sees the observations of all of an actor's envs at once and returns one
action per env in [-1, 1]^A. `reset(i)` is called when env i starts an episode, so
policies with memory (temporally correlated noise, frame stacks) can clear it.
Networks run as validated ONNX graphs with onnxruntime: actors never import torch.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from common.envs import Observation
from common.policy_graph import PolicyGraph
from common.policy_spec import FrameStacker
from common.weights import PublishedPolicy, WeightsMismatch, decode_policy


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


class ExpertPolicy:
    """A state-based expert (learner.experts) acting from proprioceptive state: its actor's
    deterministic action, as the graph `common.experts.load_expert_graph` loads.

    `noise` > 0 adds Gaussian noise to its deterministic action, for more varied data.
    """

    def __init__(self, actor: PolicyGraph, rng: np.random.Generator, noise: float = 0.0):
        self.actor, self.rng, self.noise = actor, rng, noise

    def reset(self, env_index: int) -> None:
        pass

    def act(self, observations: list[Observation]) -> np.ndarray:
        states = np.stack([o["state"] for o in observations]).astype(np.float32)
        return _with_noise(self.actor.run(states=states)["actions"], self.noise, self.rng)


class PixelPolicyBehaviour:
    """Acts from frames with a published pixel policy (latent policy + decoder).

    Until the first weights arrive it acts with `fallback`; `load(blob)` swaps in new
    weights (validated: a bad blob raises a WeightsDecodeError and the old ones stay; the
    swap is the last thing `load` does).
    """

    def __init__(self, num_envs: int, image_size: int, rng: np.random.Generator, fallback: BehaviourPolicy,
                 noise: float = 0.0, action_dim: int | None = None):
        self.rng, self.noise, self.fallback, self.image_size = rng, noise, fallback, image_size
        self.action_dim = action_dim
        self.policy: PublishedPolicy | None = None
        self.version = 0
        self.num_envs = num_envs
        self.stacker: FrameStacker | None = None

    def load(self, blob: bytes, version: int | None = None) -> int:
        """Act with the weights in `blob` from now on (refused unless they carry `version`, if given)."""
        policy = decode_policy(blob)
        if version is not None and policy.version != version:
            raise WeightsMismatch(f"the weights blob carries version {policy.version}, but was published as {version}")
        if policy.spec.image_size != self.image_size:
            raise WeightsMismatch(f"the published policy sees {policy.spec.image_size}-px frames, this actor's "
                                  f"env renders {self.image_size}-px; run both with the same --image-size")
        if self.action_dim is not None and policy.spec.action_dim != self.action_dim:
            raise WeightsMismatch(f"the published policy outputs {policy.spec.action_dim} actions, this actor's "
                                  f"env takes {self.action_dim}; publisher and actor run different envs")
        stacker = self.stacker
        if self.policy is None or policy.spec.frames != self.policy.spec.frames:
            stacker = FrameStacker(self.num_envs, policy.spec.frames)
        self.policy, self.version, self.stacker = policy, policy.version, stacker  # the swap, after every check
        return policy.version

    def reset(self, env_index: int) -> None:
        self.fallback.reset(env_index)
        if self.stacker is not None:
            self.stacker.reset(env_index)

    def act(self, observations: list[Observation]) -> np.ndarray:
        if self.policy is None:
            return self.fallback.act(observations)
        for i, observation in enumerate(observations):
            self.stacker.push(i, observation["pixels"])
        return _with_noise(self.policy.act(self.stacker.batch()), self.noise, self.rng)


def _with_noise(actions: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    if noise > 0:
        actions = np.clip(actions + rng.normal(0.0, noise, actions.shape), -1.0, 1.0)
    return actions.astype(np.float32)
