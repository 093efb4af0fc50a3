"""Building envs: the registered Gymnasium ids, `make_env` from an `EnvConfig`, and the
record of what was built.

Importing `common.envs` registers "MaskLAM/<task>" for every task, so that any Gymnasium
user can write `gymnasium.make("MaskLAM/HalfCheetah-v5", distractor="correlated", rho=0.5)`
(or `gymnasium.make("common.envs:MaskLAM/HalfCheetah-v5", ...)` without the import).
`env_spec` is stored with every dataset and run so that frames can always be traced to
the task, camera, frame size, action repeat and distractor that produced them.
"""

from __future__ import annotations

import dataclasses

import gymnasium
import mujoco
import numpy as np

from common.envs.distractors import NOISE_AR, TASKS, check_config
from common.envs.pixels import make_gym_env, task_view
from common.envs.spec import EnvConfig, Observation, Split

NAMESPACE = "MaskLAM"


def gym_id(env_id: str) -> str:
    """The registered id of a task: "HalfCheetah-v5" -> "MaskLAM/HalfCheetah-v5"."""
    return f"{NAMESPACE}/{env_id}"


def register_tasks() -> None:
    """Register every task with Gymnasium (once; `common.envs` calls this when imported)."""
    for task in TASKS:
        if gym_id(task) not in gymnasium.registry:
            gymnasium.register(gym_id(task), entry_point="common.envs.distractors:DistractorEnv",
                               kwargs={"env_id": task})


def make_env(config: EnvConfig, split: Split = "train") -> gymnasium.Env[Observation, np.ndarray]:
    """`gymnasium.make` of `config`'s task with all its settings; `reset(seed=...)` seeds it.

    The settings travel in the spec's kwargs rather than as keywords of `make`, which keeps
    `max_episode_steps` for its own TimeLimit wrapper; ours is the env's own setting.
    """
    check_config(config)
    spec = gymnasium.spec(gym_id(config.env_id))
    return gymnasium.make(dataclasses.replace(spec, kwargs={**dataclasses.asdict(config), "split": split}))


def env_spec(config: EnvConfig) -> dict:
    """JSON-safe resolved env settings (no renderer is started)."""
    check_config(config)
    view = task_view(config.env_id)
    env = make_gym_env(config.env_id, config.terminate_when_unhealthy)
    try:
        action_dim, state_dim = int(env.action_space.shape[0]), int(env.observation_space.shape[0])
        gym_step_seconds = float(env.dt)
    finally:
        env.close()
    action_repeat = config.action_repeat or view.action_repeat
    return {
        "env_id": config.env_id,
        "image_size": config.image_size,
        "render_size": config.render_size,
        "action_repeat": action_repeat,
        "decision_seconds": gym_step_seconds * action_repeat,
        "max_episode_steps": config.max_episode_steps,
        "terminate_when_unhealthy": config.terminate_when_unhealthy,
        "action_dim": action_dim,
        "state_dim": state_dim,
        "camera": {"type": "tracking", "azimuth": 90.0, "distance": view.distance,
                   "elevation": view.elevation, "lift": view.lift},
        "distractor": {
            "mode": config.distractor,
            "rho": config.rho if config.distractor == "correlated" else 0.0,
            "bg_speed": config.bg_speed if config.distractor in ("exogenous", "correlated") else 0.0,
            "noise_ar": NOISE_AR,
            "background_dir": config.background_dir,
            "ground_alpha": config.ground_alpha,
            "camera_shake": config.camera_shake,
            "color_drift": config.color_drift,
            "distractor_seed": config.distractor_seed,
        },
        "versions": {"mujoco": mujoco.__version__, "gymnasium": gymnasium.__version__},
    }
