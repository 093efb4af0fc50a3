"""`python -m learner.experts`: train a state-based SAC expert for one task, save it small.

The experts produce the video the LAM learns from, so they step exactly the dynamics the
pixel envs step: `PixelMujocoEnv` (same action repeat, same truncation by decisions),
read from proprioceptive state, never rendered. Training runs in one process: the
update rate of a single learner is the bottleneck for state-based SAC, and no rendering
is needed, so actors would add transfer cost and no speed. The checkpoint folder holds
the actor's weights, the resolved config and the measured mean return over 10 episodes.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
import tyro

from common.checkpoint import write_checkpoint
from common.cli import config_errors, run_main
from common.config import parse, save_resolved_config
from common.envs.pixels import PixelMujocoEnv, task_view
from common.experts import expert_record
from common.nets import TanhGaussianActor
from common.progress import Progress
from learner.publish import write_expert_graph
from learner.rl.sac import SACAgent, SACConfig

GYM_STEPS_PER_EPISODE = 1000


@dataclass
class ExpertConfig:
    """Train a SAC expert from proprioceptive state."""

    env_id: Annotated[str, tyro.conf.arg(name="env")] = field(default="HalfCheetah-v5", metadata={
        "help": "Gymnasium MuJoCo v5 task"})
    action_repeat: int = field(default=0, metadata={"help": "gym steps per decision; 0 = the pixel env's task default"})
    total_steps: int = field(default=300_000, metadata={"help": "decisions to train for"})
    learning_starts: int = field(default=5_000, metadata={"help": "random decisions before the first update"})
    eval_every: int = field(default=20_000, metadata={"help": "decisions between evaluations"})
    eval_episodes: int = field(default=10, metadata={"help": "episodes per evaluation"})
    seed: int = field(default=0, metadata={"help": "seed of env, networks and sampling"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    out: str = field(default="models/experts", metadata={"help": "folder; the expert goes to OUT/<env>/"})
    sac: SACConfig = field(default_factory=SACConfig)


class TransitionBuffer:
    """A fixed-size ring of (state, action, reward, next state, terminated)."""

    def __init__(self, capacity: int, obs_dim: int, action_dim: int):
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.actions = np.zeros((capacity, action_dim), np.float32)
        self.rewards = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, np.float32)
        self.capacity, self.size, self.cursor = capacity, 0, 0

    def add(self, obs, action, reward, next_obs, terminated) -> None:
        i = self.cursor
        self.obs[i], self.actions[i], self.rewards[i], self.next_obs[i], self.terminated[i] = (
            obs, action, reward, next_obs, terminated)
        self.cursor = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator) -> tuple[torch.Tensor, ...]:
        idx = rng.integers(0, self.size, batch_size)
        return tuple(torch.from_numpy(a[idx]) for a in
                     (self.obs, self.actions, self.rewards, self.next_obs, self.terminated))


def make_expert_env(env_id: str, action_repeat: int) -> PixelMujocoEnv:
    """The pixel env's dynamics with standard-length episodes (1000 gym steps)."""
    repeat = action_repeat or task_view(env_id).action_repeat
    return PixelMujocoEnv(env_id, render_size=8, action_repeat=repeat,
                          max_episode_steps=GYM_STEPS_PER_EPISODE // repeat)


def evaluate(agent: SACAgent, env: PixelMujocoEnv, episodes: int, seed: int) -> list[float]:
    """Returns of deterministic episodes with seeds seed, seed+1, ..."""
    returns = []
    for episode in range(episodes):
        state, total, done = env.reset(seed + episode), 0.0, False
        while not done:
            action = agent.act(torch.from_numpy(state)[None], deterministic=True)[0].numpy()
            state, reward, terminated, truncated = env.step(action)
            total += reward
            done = terminated or truncated
        returns.append(total)
    return returns


def train_expert(config: ExpertConfig) -> dict:
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    env = make_expert_env(config.env_id, config.action_repeat)
    eval_env = make_expert_env(config.env_id, config.action_repeat)
    agent = SACAgent(env.state_dim, env.action_dim, config.sac)
    buffer = TransitionBuffer(min(config.total_steps, 1_000_000), env.state_dim, env.action_dim)
    out = Path(config.out) / config.env_id
    progress = Progress(f"expert {config.env_id}", config.total_steps)
    state, episode_return, episode_seed = env.reset(config.seed), 0.0, config.seed
    history, best, start = [], -np.inf, time.perf_counter()
    losses: dict[str, float] = {}
    for step in range(1, config.total_steps + 1):
        if step <= config.learning_starts:
            action = rng.uniform(-1, 1, env.action_dim).astype(np.float32)
        else:
            action = agent.act(torch.from_numpy(state)[None])[0].numpy()
        next_state, reward, terminated, truncated = env.step(action)
        buffer.add(state, action, reward, next_state, float(terminated))
        state, episode_return = next_state, episode_return + reward
        if terminated or truncated:
            episode_seed += 1
            state, episode_return = env.reset(episode_seed), 0.0
        if step > config.learning_starts:
            losses = agent.update(*buffer.sample(config.sac.batch_size, rng))
        if step % config.eval_every == 0 or step == config.total_steps:
            returns = evaluate(agent, eval_env, config.eval_episodes, seed=10_000)
            history.append({"step": step, "mean_return": float(np.mean(returns)), "seconds": time.perf_counter() - start})
            if history[-1]["mean_return"] > best:  # keep the best evaluated policy
                best = history[-1]["mean_return"]
                save_expert(agent, config, out, returns, step, env)
        progress.update(step, last_eval=history[-1]["mean_return"] if history else float("nan"), **losses)
    progress.close()
    summary = json.loads((out / "expert.json").read_text())
    summary["history"] = history
    (out / "expert.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def save_expert(agent: SACAgent, config: ExpertConfig, out: Path, returns: list[float], step: int,
                env: PixelMujocoEnv) -> None:
    """Actor weights (written atomically), their ONNX graph for actors, config and measured return."""
    out.mkdir(parents=True, exist_ok=True)
    write_checkpoint(agent.actor.state_dict(), out / "actor.pt")
    save_resolved_config(config, out)
    record = {"env_id": config.env_id, "action_repeat": env.action_repeat, "max_episode_steps": env.max_episode_steps,
              "obs_dim": env.state_dim, "action_dim": env.action_dim, "hidden": config.sac.hidden,
              "mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
              "eval_episodes": len(returns), "trained_steps": step}
    (out / "expert.json").write_text(json.dumps(record, indent=2) + "\n")
    write_expert_graph(agent.actor, record, out)


def load_expert(env_id: str, action_repeat: int, directory: str | Path = "models/experts"
                ) -> tuple[TanhGaussianActor, dict]:
    """The committed expert for `env_id`: its actor (eval mode) and its expert.json record."""
    record = expert_record(env_id, action_repeat, directory)
    actor = TanhGaussianActor(record["obs_dim"], record["action_dim"], record["hidden"])
    actor.load_state_dict(torch.load(Path(directory) / env_id / "actor.pt", map_location="cpu", weights_only=True))
    return actor.eval(), record


def main(argv: list[str] | None = None) -> int:
    config = parse(ExpertConfig, argv, "python -m learner.experts")
    with config_errors("see python -m learner.experts --help"):
        task_view(config.env_id)
    summary = train_expert(config)
    print(f"{summary['env_id']}: mean return {summary['mean_return']:.1f} ± {summary['std_return']:.1f} "
          f"over {summary['eval_episodes']} episodes (best of {len(summary['history'])} evaluations)")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
