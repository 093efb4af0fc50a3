"""Pixel MuJoCo tasks behind distractor backgrounds, with ground-truth agent masks, as
registered Gymnasium envs ("MaskLAM/HalfCheetah-v5", ...; see factory.py).

MuJoCo picks its OpenGL backend when it is first imported, so the headless default is
set here, before anything below imports it: EGL on Linux (GPU or Mesa, no display
needed). A MUJOCO_GL set by the user (osmesa, glfw) is respected; macOS keeps MuJoCo's
own default, which is the only one it supports.
"""

import os
import sys

if sys.platform.startswith("linux"):
    os.environ.setdefault("MUJOCO_GL", "egl")

from common.envs.distractors import TASKS, DistractorEnv  # noqa: E402
from common.envs.factory import env_spec, gym_id, make_env, register_tasks  # noqa: E402
from common.envs.spec import EnvConfig, Observation  # noqa: E402

register_tasks()

__all__ = ["TASKS", "DistractorEnv", "EnvConfig", "Observation", "env_spec", "gym_id", "make_env"]
