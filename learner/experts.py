"""`python -m learner.experts`: train a state-based SAC expert for one task, save it small.

The experts produce the video the LAM learns from, so they step exactly the dynamics the
pixel envs step: `PixelMujocoEnv` (same action repeat, same truncation by decisions),
read from proprioceptive state, never rendered. Training runs in one process: the
update rate of a single learner is the bottleneck for state-based SAC, and no rendering
is needed, so actors would add transfer cost and no speed. The expert's folder
(OUT/<env>/) holds the best evaluated actor's weights, its ONNX graph, the resolved config
and the measured mean return over 10 deterministic episodes.

Output and resume. OUT defaults to runs/experts, never to the committed models/experts,
and a folder that already holds an expert is refused unless --overwrite says to replace
it (or --resume to continue it). `checkpoint.pt` holds everything the training needs to
continue as if it had never stopped: networks, target critics, optimisers, temperature,
replay buffer, both random streams and the counters. It is written atomically at the
first episode end after each evaluation, so a resumed run starts a fresh episode exactly
where the uninterrupted one would and reproduces it decision for decision.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch
import tyro

from common.checkpoint import read_checkpoint, write_checkpoint
from common.cli import ConfigError, config_errors, run_main
from common.config import (at_least, blame, config_to_dict, parse, positive, require, save_resolved_config,
                           writable)
from common.envs.pixels import PixelMujocoEnv, task_view
from common.experts import EXPERTS_DIR, expert_folder, expert_record
from common.nets import TanhGaussianActor
from common.progress import Progress
from learner.publish import write_expert_graph
from learner.rl.sac import SACAgent, SACConfig

GYM_STEPS_PER_EPISODE = 1000
REPLAY_CAPACITY = 1_000_000  # decisions
CHECKPOINT = "checkpoint.pt"
CHECKPOINT_KEYS = ("config", "counters", "agent", "optimizers", "buffer", "numpy_rng", "torch_rng")
OPTIMIZERS = ("actor_optimizer", "critic_optimizer", "alpha_optimizer")
# What a resumed run may change: how long it trains, its threads, and the flags that say what to do.
CHANGEABLE_ON_RESUME = ("total_steps", "threads", "out", "resume", "overwrite")


@dataclass
class ExpertConfig:
    """Train a SAC expert from proprioceptive state."""

    env_id: Annotated[str, tyro.conf.arg(name="env")] = field(default="HalfCheetah-v5", metadata={
        "help": "Gymnasium MuJoCo v5 task"})
    action_repeat: int = field(default=0, metadata={"help": "gym steps per decision; 0 = the pixel env's task default"})
    total_steps: int = field(default=300_000, metadata={"help": "decisions to train for"})
    learning_starts: int = field(default=5_000, metadata={"help": "random decisions before the first update"})
    updates_per_decision: float = field(default=1.0, metadata={
        "help": "SAC gradient steps per decision after learning-starts (0.5: one every second decision); on a CPU "
                "an update costs ~25 decisions, so below 1 buys more data per update for the same time"})
    eval_every: int = field(default=20_000, metadata={"help": "decisions between evaluations (and checkpoints)"})
    eval_episodes: int = field(default=10, metadata={"help": "episodes per evaluation"})
    seed: int = field(default=0, metadata={"help": "seed of env, networks and sampling"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads"})
    out: str = field(default="runs/experts", metadata={
        "help": "folder; the expert goes to OUT/<env>/ (copy it into models/experts to commit it)"})
    overwrite: bool = field(default=False, metadata={"help": "replace an expert already in OUT/<env>/"})
    resume: bool = field(default=False, metadata={
        "help": f"continue OUT/<env>/{CHECKPOINT} (after an interruption, or with a larger --total-steps)"})
    sac: SACConfig = field(default_factory=SACConfig)

    def validate(self) -> None:
        with blame("env_id", "pass a task such as HalfCheetah-v5"):
            task_view(self.env_id)
        at_least(self, 0, "action_repeat", "learning_starts", "seed")
        at_least(self, 1, "total_steps", "eval_every", "eval_episodes", "threads")
        positive(self, "updates_per_decision", fix="pass e.g. 1 (one SAC update per decision) or 0.5")
        require(self.learning_starts < self.total_steps, "learning_starts", f"leaves none of the {self.total_steps} "
                "decisions (--total-steps) to learn from", "pass fewer random decisions, or more steps")
        writable(self, "out")


class TransitionBuffer:
    """A fixed-size ring of (state, action, reward, next state, terminated)."""

    ARRAYS = ("obs", "actions", "rewards", "next_obs", "terminated")

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
        return tuple(torch.from_numpy(getattr(self, name)[idx]) for name in self.ARRAYS)

    def state_dict(self) -> dict:
        """The filled rows (tensors, for `write_checkpoint`) and the ring's position."""
        return {"size": self.size, "cursor": self.cursor,
                **{name: torch.from_numpy(getattr(self, name)[:self.size].copy()) for name in self.ARRAYS}}

    def load_state_dict(self, state: dict) -> None:
        """Refill from `state_dict()`; a larger ring (a longer resumed run) keeps appending."""
        if state["size"] > self.capacity or (state["cursor"] != state["size"] and state["size"] != self.capacity):
            raise ValueError(f"a buffer of {state['size']} transitions (cursor {state['cursor']}) does not fit "
                             f"a ring of {self.capacity}")
        for name in self.ARRAYS:
            getattr(self, name)[:state["size"]] = state[name].numpy()
        self.size, self.cursor = state["size"], state["cursor"] % self.capacity


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


def updates_after(step: int, config: ExpertConfig) -> int:
    """SAC updates owed once `step` decisions are done: `updates_per_decision` per decision
    after `learning_starts` (the small epsilon keeps 3 x 0.1 from flooring to 0)."""
    return max(0, math.floor((step - config.learning_starts) * config.updates_per_decision + 1e-9))


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    items: dict[str, Any] = {}
    for key, value in tree.items():
        items |= _flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return items


def _flag(key: str) -> str:
    return "--env" if key == "env_id" else "--" + key.replace("_", "-")


def prepare_output(config: ExpertConfig) -> dict | None:
    """Check OUT/<env>/ before anything trains: refuse to replace an expert there without
    --overwrite, or to resume what is not this run's checkpoint. Returns the checkpoint to
    resume, or None for a fresh run (with --overwrite, the old run's checkpoint is deleted:
    the expert it belongs to is about to be replaced)."""
    folder = Path(config.out) / config.env_id
    checkpoint_path = folder / CHECKPOINT
    if not config.resume:
        if (folder / "expert.json").is_file() and not config.overwrite:
            record = json.loads((folder / "expert.json").read_text())
            resume = f", --resume to continue its training" if checkpoint_path.is_file() else ""
            raise ConfigError(f"{folder} already holds an expert (mean return {record['mean_return']:.0f} after "
                              f"{record['trained_steps']:,} decisions)",
                              f"pass --out DIR for a new one{resume}, or --overwrite to replace it")
        if checkpoint_path.is_file() and not config.overwrite:
            raise ConfigError(f"{checkpoint_path} exists", "pass --resume to continue it, or --overwrite to start over")
        checkpoint_path.unlink(missing_ok=True)
        return None
    if not checkpoint_path.is_file():
        raise ConfigError(f"--resume: there is no {checkpoint_path}",
                          "run once without --resume, or pass the --out and --env of the run to continue")
    checkpoint = read_checkpoint(checkpoint_path, kind="expert training checkpoint", required=CHECKPOINT_KEYS,
                                 fix=f"delete {checkpoint_path} and train without --resume")
    saved, current = _flat(checkpoint["config"]), _flat(config_to_dict(config))
    for key, before in saved.items():
        if key not in CHANGEABLE_ON_RESUME and current.get(key) != before:
            raise ConfigError(f"{checkpoint_path} was trained with {_flag(key)} {before}, not {current.get(key)}",
                              f"resume with {_flag(key)} {before}, or start a new run with another --out")
    step = checkpoint["counters"]["step"]
    if config.total_steps < step:
        raise ConfigError(f"--total-steps {config.total_steps:,} is below the {step:,} decisions "
                          f"{checkpoint_path} has trained", f"pass --total-steps {step:,} or more")
    return checkpoint


def train_expert(config: ExpertConfig) -> dict:
    checkpoint = prepare_output(config)
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    env = make_expert_env(config.env_id, config.action_repeat)
    eval_env = make_expert_env(config.env_id, config.action_repeat)
    agent = SACAgent(env.state_dim, env.action_dim, config.sac)
    buffer = TransitionBuffer(min(config.total_steps, REPLAY_CAPACITY), env.state_dim, env.action_dim)
    out = Path(config.out) / config.env_id
    # step: decisions done; episode_seed: the seed of the episode in progress; seconds: over all sessions.
    counters = {"step": 0, "episode_seed": config.seed, "best": -math.inf, "seconds": 0.0, "history": []}
    if checkpoint is not None:
        agent.load_state_dict(checkpoint["agent"])
        for name in OPTIMIZERS:
            getattr(agent, name).load_state_dict(checkpoint["optimizers"][name])
        buffer.load_state_dict(checkpoint["buffer"])
        rng.bit_generator.state = checkpoint["numpy_rng"]
        torch.set_rng_state(checkpoint["torch_rng"])
        counters = checkpoint["counters"]
    first = counters["step"]
    progress = Progress(f"expert {config.env_id}", config.total_steps - first, unit="decisions", interval_s=10.0)
    if checkpoint is not None:
        progress.note(f"resumed {out / CHECKPOINT} at decision {first:,} (best mean return {counters['best']:.1f})")
    history = counters["history"]
    state, episode_return, last_episode_return = env.reset(counters["episode_seed"]), 0.0, float("nan")
    start, checkpoint_due = time.perf_counter() - counters["seconds"], False
    losses: dict[str, float] = {}
    for step in range(first + 1, config.total_steps + 1):
        if step <= config.learning_starts:
            action = rng.uniform(-1, 1, env.action_dim).astype(np.float32)
        else:
            action = agent.act(torch.from_numpy(state)[None])[0].numpy()
        next_state, reward, terminated, truncated = env.step(action)
        buffer.add(state, action, reward, next_state, float(terminated))
        state, episode_return = next_state, episode_return + reward
        episode_ended = terminated or truncated
        if episode_ended:
            counters["episode_seed"] += 1
            state, episode_return, last_episode_return = env.reset(counters["episode_seed"]), 0.0, episode_return
        for _ in range(updates_after(step, config) - updates_after(step - 1, config)):
            losses = agent.update(*buffer.sample(config.sac.batch_size, rng))
        if step % config.eval_every == 0 or step == config.total_steps:
            returns = evaluate(agent, eval_env, config.eval_episodes, seed=10_000)
            mean = float(np.mean(returns))
            history.append({"step": step, "mean_return": mean, "std_return": float(np.std(returns)),
                            "seconds": time.perf_counter() - start})
            improved = mean > counters["best"]
            if improved:  # keep the best evaluated policy
                counters["best"] = mean
                save_expert(agent, config, out, returns, step, env, history)
            progress.note(f"decision {step:,}: mean return {mean:.1f} ± {np.std(returns):.1f} over {len(returns)} "
                          f"episodes{' (best so far, saved)' if improved else ''}; best {counters['best']:.1f}")
            checkpoint_due = True
        if episode_ended and checkpoint_due:  # the next decision starts a fresh episode: a clean point to resume
            counters |= {"step": step, "seconds": time.perf_counter() - start}
            save_training(out / CHECKPOINT, config, counters, agent, buffer, rng)
            checkpoint_due = False
        progress.update(step - first, decision=step, last_eval=history[-1]["mean_return"] if history else float("nan"),
                        train_return=last_episode_return, **losses)
    progress.close()
    summary = json.loads((out / "expert.json").read_text())
    summary["history"] = history
    (out / "expert.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def save_training(path: Path, config: ExpertConfig, counters: dict, agent: SACAgent, buffer: TransitionBuffer,
                  rng: np.random.Generator) -> None:
    """Everything `--resume` needs to continue exactly, in one atomic file."""
    write_checkpoint({"config": config_to_dict(config), "counters": counters, "agent": agent.state_dict(),
                      "optimizers": {name: getattr(agent, name).state_dict() for name in OPTIMIZERS},
                      "buffer": buffer.state_dict(), "numpy_rng": rng.bit_generator.state,
                      "torch_rng": torch.get_rng_state()}, path)


def save_expert(agent: SACAgent, config: ExpertConfig, out: Path, returns: list[float], step: int,
                env: PixelMujocoEnv, history: list[dict]) -> None:
    """Actor weights (written atomically), their ONNX graph for actors, config and measured return."""
    out.mkdir(parents=True, exist_ok=True)
    write_checkpoint(agent.actor.state_dict(), out / "actor.pt")
    save_resolved_config(config, out)
    record = {"env_id": config.env_id, "action_repeat": env.action_repeat, "max_episode_steps": env.max_episode_steps,
              "obs_dim": env.state_dim, "action_dim": env.action_dim, "hidden": config.sac.hidden,
              "mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
              "eval_episodes": len(returns), "trained_steps": step, "history": history}
    (out / "expert.json").write_text(json.dumps(record, indent=2) + "\n")
    write_expert_graph(agent.actor, record, out)


def load_expert(env_id: str, action_repeat: int, directory: str | Path = EXPERTS_DIR
                ) -> tuple[TanhGaussianActor, dict]:
    """The committed expert for `env_id`: its actor (eval mode) and its expert.json record."""
    record = expert_record(env_id, action_repeat, directory)
    actor = TanhGaussianActor(record["obs_dim"], record["action_dim"], record["hidden"])
    actor.load_state_dict(torch.load(expert_folder(env_id, directory) / "actor.pt", map_location="cpu",
                                     weights_only=True))
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
