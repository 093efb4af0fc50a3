"""The learner role: LAMs, probes, the downstream protocol, latent-policy RL and the experts.

Every learner process trains with torch, whose optimisers load Triton; Mesa's software GL
(loaded by MuJoCo's renderer, or by `import mujoco` with MUJOCO_GL=egl) brings its own LLVM,
and Triton loaded after it crashes the process. So Triton loads here, before anything of
ours can import MuJoCo (see also `common/envs/pixels.py`). Actors never import this package.
"""

import importlib.util

if importlib.util.find_spec("triton") is not None:
    import triton  # noqa: F401
