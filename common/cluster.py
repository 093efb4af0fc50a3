"""Starting or joining Ray: one code path for a laptop and a cluster."""

from __future__ import annotations

import logging
import os
import re

import ray

# Every Ray worker renders headless and shares the cores with many others.
WORKER_ENV = {"MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"), "LP_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
              "MKL_NUM_THREADS": "1", "PYOPENGL_PLATFORM": os.environ.get("PYOPENGL_PLATFORM", "")}


# What `ray.init(address=...)` joins: auto (a `ray up` head), local, a Ray Client ray://HOST:PORT
# or a cluster's HOST:PORT.
_ADDRESS = re.compile(r"auto|local|ray://[^\s:/]+(:\d+)?|[^\s:/]+:\d+")


def check_ray_address(address: str | None) -> None:
    """Refuse (ValueError) an address Ray could not join, before anything starts (None or empty: a local Ray)."""
    if address and not _ADDRESS.fullmatch(address):
        raise ValueError("is not a Ray address")


def init_ray(address: str | None = None, logical_cpus: int = 0) -> None:
    """Join the cluster at `address` ("auto" on a `ray up` head), or start a local Ray.

    Locally, `logical_cpus` lets more one-CPU actors than cores be scheduled: they then
    share the cores, which is slow but works (e.g. 64 actors on a 2-core laptop).
    """
    if ray.is_initialized():
        return
    env = {k: v for k, v in WORKER_ENV.items() if v}
    if address:
        ray.init(address=address, runtime_env={"env_vars": env}, log_to_driver=True)
        return
    # A local Ray we start ourselves keeps Ray's token authentication on; its notice that it
    # is on (once per run, pointing at how to turn it off) is not about anything to fix here.
    logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
    ray.init(num_cpus=max(os.cpu_count() or 1, logical_cpus), include_dashboard=False,
             runtime_env={"env_vars": env}, log_to_driver=True, configure_logging=True, logging_level="warning")
