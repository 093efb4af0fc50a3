"""Evaluation rollouts: whole deterministic episodes on the evaluation backgrounds, in parallel.

Episode e of an evaluation with seed s always starts from the same env seed and the
policy acts without noise, so the same policy gets the same returns. Episodes are split
over `workers` Ray actors (one CPU each); with one worker they run in this process.
The policy is given as what an actor can rebuild it from: a published weights blob for
the pixel policy, or the name of a policy that needs no weights: `"expert"` (the task's
committed expert), or the downstream protocol's floors `"zero"` (all-zero torques) and
`"random"` (iid uniform actions, drawn from each episode's own seed, so they too repeat).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import ray

from actors.policies import CorrelatedRandomPolicy, PixelPolicyBehaviour
from actors.rollout import ActorConfig, make_behaviour
from common.envs import EnvConfig, Observation, make_env

EvaluatedPolicy = bytes | Literal["expert", "zero", "random"]


def episode_seed(seed: int, episode: int) -> int:
    return int(np.random.SeedSequence([seed, episode]).generate_state(1)[0])


class ZeroPolicy:
    """All-zero actions: the floor of doing nothing (the middle of [-1, 1]^A)."""

    def __init__(self, action_dim: int):
        self.action = np.zeros((1, action_dim), np.float32)

    def reset(self, env_index: int) -> None:
        pass

    def act(self, observations: list[Observation]) -> np.ndarray:
        return self.action.copy()


class EvaluationWorker:
    """Runs episodes of one env with one policy and returns their undiscounted returns."""

    def __init__(self, env_config: EnvConfig, policy: EvaluatedPolicy, expert_dir: str = "models/experts"):
        self.env = make_env(env_config, split="eval")
        kind = policy if isinstance(policy, str) else "latent"
        action_dim = self.env.action_space.shape[0]
        if kind == "zero":
            self.policy = ZeroPolicy(action_dim)
        elif kind == "random":
            self.policy = CorrelatedRandomPolicy(1, action_dim, np.random.default_rng(0), correlation=0.0)
        else:
            actor = ActorConfig(policy=kind, initial_policy="random", action_noise=0.0, expert_dir=expert_dir)
            self.policy = make_behaviour(actor, self.env, 1, np.random.default_rng(0))
        if isinstance(self.policy, PixelPolicyBehaviour):
            self.policy.load(policy)

    def run(self, seed: int, episodes: list[int]) -> list[float]:
        returns = []
        for episode in episodes:
            (observation, _), total, done = self.env.reset(seed=episode_seed(seed, episode)), 0.0, False
            self.policy.reset(0)
            if isinstance(self.policy, CorrelatedRandomPolicy):  # each episode's actions from its own seed
                self.policy.rng = np.random.default_rng(episode_seed(seed, episode))
            while not done:
                observation, reward, terminated, truncated, _ = self.env.step(self.policy.act([observation])[0])
                total, done = total + reward, terminated or truncated
            returns.append(total)
        return returns

    def close(self) -> None:
        self.env.close()


def evaluate(env_config: EnvConfig, policy: EvaluatedPolicy, episodes: int, seed: int, workers: int = 1,
             expert_dir: str = "models/experts") -> list[float]:
    """Returns of `episodes` deterministic episodes (in episode order) of `policy` (weights or a name)."""
    env_config = dataclasses.replace(env_config)
    shares = [list(range(w, episodes, workers)) for w in range(max(1, min(workers, episodes)))]
    if len(shares) == 1:
        worker = EvaluationWorker(env_config, policy, expert_dir)
        try:
            return worker.run(seed, shares[0])
        finally:
            worker.close()
    from common.cluster import init_ray
    init_ray()
    remote = ray.remote(num_cpus=1)(EvaluationWorker)
    actors = [remote.remote(env_config, policy, expert_dir) for _ in shares]
    try:
        results = ray.get([a.run.remote(seed, share) for a, share in zip(actors, shares)])
    finally:
        for actor in actors:
            ray.kill(actor)
    by_episode = {e: r for share, rs in zip(shares, results) for e, r in zip(share, rs)}
    return [by_episode[e] for e in range(episodes)]
