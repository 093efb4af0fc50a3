"""Pixel MuJoCo tasks behind distractor backgrounds, with ground-truth agent masks.

MuJoCo picks its OpenGL backend when it is first imported, so the headless default is
set here, before anything below imports it: EGL on Linux (GPU or Mesa, no display
needed). A MUJOCO_GL set by the user (osmesa, glfw) is respected; macOS keeps MuJoCo's
own default, which is the only one it supports.
"""

import os
import sys

if sys.platform.startswith("linux"):
    os.environ.setdefault("MUJOCO_GL", "egl")

# Mesa's software GL and Triton (pulled in by torch's optimisers and compiler) each load
# their own LLVM; whichever comes second crashes the process with a segmentation fault
# if Mesa was first. Loading Triton first (0.2 s, where installed) makes both coexist.
try:
    import triton  # noqa: F401
except ImportError:
    pass

from common.envs.distractors import DistractorWrapper  # noqa: E402
from common.envs.factory import env_spec, make_env  # noqa: E402
from common.envs.spec import EnvConfig, Observation, StepResult  # noqa: E402

__all__ = ["DistractorWrapper", "EnvConfig", "Observation", "StepResult", "env_spec", "make_env"]
