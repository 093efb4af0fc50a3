"""Building envs from an `EnvConfig`, and the record of what was built.

`env_spec` is stored with every dataset and run so that frames can always be traced to
the task, camera, frame size, action repeat and distractor that produced them.
"""

from __future__ import annotations

import gymnasium
import mujoco

from common.envs.distractors import NOISE_AR, DistractorWrapper, check_config
from common.envs.pixels import PixelMujocoEnv, make_gym_env, task_view
from common.envs.spec import EnvConfig, Split


def make_env(config: EnvConfig, seed: int, split: Split = "train") -> DistractorWrapper:
    """The env for `config`; `seed` and `split` pick the episodes' physics and backgrounds."""
    check_config(config)
    pixels = PixelMujocoEnv(config.env_id, config.render_size, config.action_repeat, config.max_episode_steps,
                            config.terminate_when_unhealthy)
    try:
        return DistractorWrapper(pixels, config, seed, split)
    except Exception:
        pixels.close()
        raise


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
