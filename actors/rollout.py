"""The rollout actor: steps a few distractor envs with a behaviour policy, writes chunks.

`RolloutWorker` is a plain class (testable without Ray); `RolloutActor` is the same
class as a Ray actor, and `start_rollout_actors` places N of them on the cluster. Each
env accumulates its own chunk of up to `chunk_length` steps; a chunk is cut when full
or when the episode ends, and always carries the frame after its last step, so the
next chunk of the same episode starts with that frame again.

A latent-policy actor checks the run's `WeightsChannel` at the start of every `collect`
call and loads newer weights; the learner calls `collect` a chunk's worth of steps at a
time (`flush_partial=False`), so new weights are picked up between chunks and chunks
cut at the end of a call carry on into the next call instead of being written short.
Weights that fail validation are refused (and moved aside by the channel); the actor
keeps acting with the ones it had.

Crashes: each report carries what its actor id has stored in the run so far, counted by
the replay's insert script (`ReplayClient.stored_by_actor`) and read back when the actor
(re)starts, so chunks stored by a call that a crash interrupted are counted in the next
report of the restarted actor. Episode ids carry the actor's incarnation: a restarted
actor's episodes never share an id with those of its predecessor.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Literal

import gymnasium
import numpy as np
import ray

from actors.policies import BehaviourPolicy, CorrelatedRandomPolicy, ExpertPolicy, PixelPolicyBehaviour
from common import metrics as m
from common.codec import Chunk
from common.config import at_least, blame, in_range
from common.envs import EnvConfig, Observation, make_env
from common.experts import expert_record, load_expert_graph
from common.replay import RateLimiter, RateLimiterConfig, ReplayClient, ReplayConfig
from common.weights import WeightsChannel, WeightsDecodeError

log = logging.getLogger("masklam.actor")


@dataclass
class ActorConfig:
    """How each rollout actor collects."""

    envs_per_actor: int = field(default=1, metadata={"help": "envs stepped by each actor"})
    chunk_length: int = field(default=32, metadata={"help": "steps per chunk (T); T+1 frames"})
    policy: Literal["random", "expert", "latent"] = field(default="random", metadata={
        "help": "behaviour policy: random (AR(1)), expert (state-based, from --actor.expert-dir), latent (published "
                "pixel policy; --actor.initial-policy until the first weights)"})
    initial_policy: Literal["random", "expert"] = field(default="random", metadata={
        "help": "what a latent-policy actor acts with before it has weights"})
    action_correlation: float = field(default=0.8, metadata={"help": "AR(1) correlation of random actions (0 = iid)"})
    action_noise: float = field(default=0.0, metadata={"help": "std of Gaussian noise on expert/latent actions"})
    expert_dir: str = field(default="models/experts", metadata={"help": "folder of committed experts (<dir>/<env>/)"})
    split: Literal["train", "eval"] = field(default="train", metadata={"help": "background split the actors use"})
    segment: bool = field(default=False, metadata={"help": "send chunks to the segmenter instead of using ground-truth masks"})
    seed: int = field(default=0, metadata={"help": "base seed of envs and policies"})

    def validate(self) -> None:
        at_least(self, 1, "envs_per_actor", "chunk_length")
        in_range(self, "action_correlation", -1.0, 1.0)
        at_least(self, 0, "action_noise", "seed")

    @property
    def uses_expert(self) -> bool:
        return self.policy == "expert" or (self.policy == "latent" and self.initial_policy == "expert")

    def check_expert(self, env: EnvConfig) -> None:
        """Refuse (blaming expert_dir) an expert policy without a committed expert for `env`: the
        actors would find out only once they start. For the config that holds both (validate())."""
        if self.uses_expert:
            with blame("expert_dir"):
                expert_record(env.env_id, env.action_repeat, self.expert_dir)


@dataclass
class RolloutReport:
    """What one `collect` call did."""

    actor_id: int
    incarnation: str = ""  # new each time the actor's process starts: a change means a restart
    policy_version: int = 0  # weights version acted with (0 = the initial policy)
    env_steps: int = 0
    chunks: int = 0
    episodes: int = 0
    seconds: float = 0.0
    insert_wait_s: float = 0.0
    episode_returns: list[float] = field(default_factory=list)  # of the episodes finished in this call
    stored_chunks: int = 0  # chunks this actor id has stored in the run, as of the end of the call
    stored_steps: int = 0  # steps in those chunks

    @property
    def steps_per_s(self) -> float:
        return self.env_steps / self.seconds if self.seconds > 0 else 0.0


def make_behaviour(config: ActorConfig, env: gymnasium.Env, num_envs: int,
                   rng: np.random.Generator) -> BehaviourPolicy:
    """The behaviour policy `config.policy` names, for `num_envs` envs like `env` (from `make_env`)."""
    action_dim = env.action_space.shape[0]

    def simple(kind: str) -> BehaviourPolicy:
        if kind == "expert":
            actor, _ = load_expert_graph(env.unwrapped.config.env_id, env.unwrapped.pixels.action_repeat,
                                         config.expert_dir)
            return ExpertPolicy(actor, rng, config.action_noise)
        return CorrelatedRandomPolicy(num_envs, action_dim, rng, correlation=config.action_correlation)

    if config.policy == "latent":
        return PixelPolicyBehaviour(num_envs, env.observation_space["pixels"].shape[0], rng,
                                    simple(config.initial_policy), config.action_noise, action_dim=action_dim)
    return simple(config.policy)


class _ChunkBuffer:
    """The growing chunk of one env."""

    def __init__(self, first: Observation):
        self.observations = [first]
        self.steps: list[tuple[np.ndarray, float, bool, bool, np.ndarray]] = []  # a, r, term, trunc, bg_velocity

    def add(self, action: np.ndarray, observation: Observation, reward: float, terminated: bool, truncated: bool,
            info: dict) -> None:
        self.steps.append((action, reward, terminated, truncated, info["bg_velocity"]))
        self.observations.append(observation)

    def to_chunk(self, env_id: str, actor_id: int, episode_id: str, start_step: int, split: str,
                 policy_version: int) -> Chunk:
        actions, rewards, terminated, truncated, bg_velocity = zip(*self.steps)
        return Chunk(
            env_id=env_id, actor_id=actor_id, episode_id=episode_id, start_step=start_step, split=split,
            policy_version=policy_version,
            frames=np.stack([o["pixels"] for o in self.observations]),
            masks=np.stack([o["mask"] for o in self.observations]),
            states=np.stack([o["state"] for o in self.observations]).astype(np.float32),
            actions=np.stack(actions).astype(np.float32),
            rewards=np.array(rewards, dtype=np.float32),
            terminated=np.array(terminated, dtype=bool),
            truncated=np.array(truncated, dtype=bool),
            bg_velocity=np.stack(bg_velocity).astype(np.float32),
        )


def env_seed(base_seed: int, actor_id: int, env_index: int) -> int:
    """A distinct, reproducible seed per (run seed, actor, env)."""
    return int(np.random.SeedSequence([base_seed, actor_id, env_index]).generate_state(1)[0])


class RolloutWorker:
    def __init__(self, actor_id: int, env_config: EnvConfig, actor_config: ActorConfig, replay_url: str,
                 replay_config: ReplayConfig, limiter_config: RateLimiterConfig | None = None,
                 metrics: m.Metrics | None = None):
        self.actor_id = actor_id
        self.env_config = env_config
        self.config = actor_config
        self.replay = ReplayClient(replay_url, replay_config)
        self.metrics = metrics or m.Metrics.for_this_process()
        self.limiter = RateLimiter(self.replay, limiter_config) if limiter_config else None
        self.envs = [make_env(env_config, actor_config.split) for _ in range(actor_config.envs_per_actor)]
        self.policy = make_behaviour(actor_config, self.envs[0], len(self.envs),
                                     np.random.default_rng([actor_config.seed, actor_id]))
        self.policy_version = 0
        self.incarnation = uuid.uuid4().hex[:12]
        self.weights = WeightsChannel(self.replay) if isinstance(self.policy, PixelPolicyBehaviour) else None
        self.episode_returns = [0.0] * len(self.envs)
        self.episode_counts = [0] * len(self.envs)
        self.stored_chunks, self.stored_steps = self.replay.stored_by_actor().get(actor_id, (0, 0))
        self.episode_steps = [0] * len(self.envs)
        self.chunk_starts = [0] * len(self.envs)
        self.buffers = [self._start_episode(i, seed=env_seed(actor_config.seed, actor_id, i))
                        for i in range(len(self.envs))]

    def set_weights(self, blob: bytes, version: int | None = None) -> int:
        """Act with newly published pixel-policy weights from now on; returns their version."""
        if not isinstance(self.policy, PixelPolicyBehaviour):
            raise TypeError(f"a {self.config.policy!r}-policy actor takes no weights; use --actor.policy latent")
        self.policy_version = self.policy.load(blob, version)
        return self.policy_version

    def _pick_up_weights(self) -> None:
        """Load the published weights if they are newer than ours (one GET when they are not);
        bad ones are refused and we keep acting with ours."""
        try:
            self.weights.load_newer(self.policy_version, self.set_weights)
        except WeightsDecodeError as exc:
            log.warning("actor %d refused the published weights and keeps acting with version %d: %s",
                        self.actor_id, self.policy_version, exc)

    def _start_episode(self, index: int, seed: int | None = None) -> _ChunkBuffer:
        """Reset env `index` (its first reset seeds it) and start a chunk with its observation."""
        self.policy.reset(index)
        self.episode_returns[index] = 0.0
        self.episode_steps[index] = 0
        self.chunk_starts[index] = 0
        observation, _ = self.envs[index].reset(seed=seed)
        return _ChunkBuffer(observation)

    def _episode_id(self, index: int) -> str:
        return f"{self.config.split}-a{self.actor_id}-{self.incarnation}-e{index}-{self.episode_counts[index]}"

    def _flush(self, index: int, report: RolloutReport) -> None:
        buffer = self.buffers[index]
        if not buffer.steps:
            return
        chunk = buffer.to_chunk(self.env_config.env_id, self.actor_id, self._episode_id(index),
                                self.chunk_starts[index], self.config.split, self.policy_version)
        if self.limiter is not None:
            waited = self.limiter.await_insert(chunk.num_steps)
            report.insert_wait_s += waited
            self.metrics.inc(m.ACTOR_INSERT_WAIT_SECONDS, waited)
        started = time.perf_counter()
        self.replay.insert(chunk, segment=self.config.segment)
        self.stored_chunks += 1
        self.stored_steps += chunk.num_steps
        self.metrics.observe(m.ACTOR_INSERT_SECONDS, time.perf_counter() - started)
        self.metrics.inc(m.ACTOR_CHUNKS)
        self.metrics.inc(m.ACTOR_ENV_STEPS, chunk.num_steps)
        report.chunks += 1
        self.chunk_starts[index] = self.episode_steps[index]
        self.buffers[index] = _ChunkBuffer(buffer.observations[-1])

    def collect(self, num_steps: int, flush_partial: bool = True) -> RolloutReport:
        """Step the envs round-robin for `num_steps` decisions in total, writing every chunk.

        With `flush_partial` the partial chunks are written at the end, so every step taken
        is stored exactly once; without, they are continued by the next call.
        """
        report = RolloutReport(actor_id=self.actor_id, incarnation=self.incarnation)
        if self.weights is not None:
            self._pick_up_weights()
        start = time.perf_counter()
        while report.env_steps < num_steps:
            actions = self.policy.act([b.observations[-1] for b in self.buffers])
            for i, env in enumerate(self.envs):
                if report.env_steps >= num_steps:
                    break
                observation, reward, terminated, truncated, info = env.step(actions[i])
                self.buffers[i].add(actions[i], observation, reward, terminated, truncated, info)
                self.episode_steps[i] += 1
                self.episode_returns[i] += reward
                report.env_steps += 1
                if terminated or truncated:
                    self._flush(i, report)
                    self.episode_counts[i] += 1
                    report.episodes += 1
                    report.episode_returns.append(self.episode_returns[i])
                    self.buffers[i] = self._start_episode(i)
                elif len(self.buffers[i].steps) >= self.config.chunk_length:
                    self._flush(i, report)
        if flush_partial:
            for i in range(len(self.envs)):
                self._flush(i, report)
        report.seconds = time.perf_counter() - start
        report.policy_version = self.policy_version
        report.stored_chunks, report.stored_steps = self.stored_chunks, self.stored_steps
        return report

    def close(self) -> None:
        for env in self.envs:
            env.close()


RolloutActor = ray.remote(RolloutWorker)


def start_rollout_actors(num_actors: int, env_config: EnvConfig, actor_config: ActorConfig, replay_url: str,
                         replay_config: ReplayConfig, limiter_config: RateLimiterConfig | None = None,
                         max_restarts: int = 3, max_task_retries: int = 0, first_id: int = 0) -> list:
    """Start `num_actors` rollout actors (ids from `first_id`), one CPU each, restartable.

    `max_task_retries=-1` re-runs a call that a crash interrupted once the actor is back.
    """
    return [RolloutActor.options(num_cpus=1, max_restarts=max_restarts, max_task_retries=max_task_retries).remote(
        i, env_config, actor_config, replay_url, replay_config, limiter_config)
        for i in range(first_id, first_id + num_actors)]
