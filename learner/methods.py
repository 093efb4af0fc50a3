"""The method families the comparison trains: which family a method name belongs to, and the
operations the comparison and the downstream protocol need from each.

  lam   LAPO, MaskLAM and its variants (learner/lam/): pixel FDM.
  laom  LAOM, LAOM-Labels and the masked LAOM variants (learner/laom/): latent-space FDM.

Every family provides: the types of its configs (a preset's comes from its config module:
`lam_config`, `laom_config`), a trainer with `train_lam`'s signature and metrics.json contract, a checkpoint loader, and
`latent_actions(model, config, data, rows)`: the frozen model's latent action z_t of
each row t, which the downstream protocol clones. Both families' method configs expose
`context_frames`, `future_frames` and `probe_window` with the same meaning. The online
learner (learner/loop.py) builds a family's model, scores its probe, and trains it with
`online_step`; a family without one cannot run in `learner.main` yet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from learner.data import TransitionData
from learner.lam.config import METHODS as LAM_METHODS
from learner.lam.config import LAMConfig, OnlineLAMConfig
from learner.lam.train import build_model as build_lam
from learner.lam.train import encode_probe_set as encode_lam_probe_set
from learner.lam.train import lam_step
from learner.lam.train import latent_actions as lam_latent_actions
from learner.lam.train import load_model as load_lam
from learner.lam.train import train_lam
from learner.laom.config import METHODS as LAOM_METHODS
from learner.laom.config import LAOMConfig
from learner.laom.train import build_model as build_laom
from learner.laom.train import encode_probe_set as encode_laom_probe_set
from learner.laom.train import latent_actions as laom_latent_actions
from learner.laom.train import load_model as load_laom
from learner.laom.train import train_laom
from learner.probe import Encoded


@dataclass(frozen=True)
class Family:
    name: str
    methods: tuple[str, ...]
    config_types: tuple[type, ...]  # its models' configs (the lam family's online one too)
    train: Callable[..., dict]  # (config, data, probe_sets, out, seed, eval_every, label=, device=) -> metrics
    load_model: Callable[..., tuple[Any, Any]]  # (out) -> (model in eval mode, config)
    latent_actions: Callable[..., np.ndarray]  # (model, config, data, rows) -> (N, latent_dim)
    build_model: Callable[..., Any]  # (config, image_size, action_dim) -> model
    encode_probe_set: Callable[..., Encoded]  # (model, config, probe set) -> latents, predictions, ...
    # (model, optimizer, config, windows, rng, generator) -> losses: one update on sampled windows
    online_step: Callable[..., dict] | None


FAMILIES: tuple[Family, ...] = (
    Family("lam", tuple(LAM_METHODS), (LAMConfig, OnlineLAMConfig), train_lam, load_lam, lam_latent_actions,
           build_model=build_lam, encode_probe_set=encode_lam_probe_set, online_step=lam_step),
    # LAOM's update needs a labelled batch and a target-encoder step, and the online policy
    # learner (learner/online_rl.py) reads a pixel-FDM LAM's latent: not online yet.
    Family("laom", tuple(LAOM_METHODS), (LAOMConfig,), train_laom, load_laom, laom_latent_actions,
           build_model=build_laom, encode_probe_set=encode_laom_probe_set, online_step=None),
)
METHODS: tuple[str, ...] = tuple(m for f in FAMILIES for m in f.methods)


def family(method: str) -> Family:
    for candidate in FAMILIES:
        if method in candidate.methods:
            return candidate
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def latent_actions(model: Any, config: Any, data: TransitionData, rows: np.ndarray) -> np.ndarray:
    """z_t for every row t, by the family the config belongs to."""
    for candidate in FAMILIES:
        if isinstance(config, candidate.config_types):
            return candidate.latent_actions(model, config, data, rows)
    raise TypeError(f"no method family has configs of type {type(config).__name__}")
