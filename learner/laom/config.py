"""LAOM settings: network sizes, the method's switches, the optimisation; and their presets.

LAOM (Nikulin et al., 2025) and LAOM-Labels are two points in one space (`METHODS`), as
are the masked variants that carry MaskLAM's idea into LAOM's latent-space objective.
The presets (learner/presets.py) fix the sizes: `paper` as the authors' released configuration (docs/design.md §5,
and their reference code where the paper is silent), `ci` (the defaults here) small enough to
train at a few updates/s on two CPU cores at 32 px.

As the reference code: the IDM sees (o_t, o_{t+k}) but the FDM predicts the target
encoder's features of o_{t+1}, and LAOM-Labels' labelled batches use random k as well.
Deviations: the encoder is the project's IMPALA CNN (max-pool stages, common/nets.py)
rather than the reference's strided convolutions; the schedule is a linear warm-up then a
cosine to 0 (the reference: linear decay); AdamW with weight decay 0 (= their Adam).

The method config exposes `context_frames`, `future_frames`, `window` and `probe_window`
with the meaning they have for the LAM (learner/lam/config.py), so the comparison's
probe sets and the downstream protocol handle both families alike.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from common.config import at_least, in_range, positive
from learner import presets


@dataclass
class LAOMModelConfig:
    """Encoder widths are IMPALA's 16/32/32 times a scale; heads are dense MLPs."""

    encoder_scale: int = 1
    num_blocks: int = 2  # residual blocks per IMPALA stage
    latent_dim: int = 256  # LAOM's latent is large and continuous (no quantiser)
    head_dim: int = 256  # width of the IDM and FDM heads
    head_depth: int = 2  # projection + residual-MLP blocks per head (the reference: 3)

    def validate(self) -> None:
        at_least(self, 1, "encoder_scale", "latent_dim", "head_dim", "head_depth")
        at_least(self, 0, "num_blocks")


@dataclass
class LAOMMethodConfig:
    """What distinguishes LAOM, LAOM-Labels and the masked variants."""

    frame_stack: int = 3  # an observation is this many consecutive RGB frames
    max_future_offset: int = 10  # the IDM sees (o_t, o_{t+k}), k ~ U{1..K}; k = 1 when probing
    augment: bool = True  # the reference's 8 augmentation kinds, drawn per sample and per observation
    labels: bool = False  # LAOM-Labels: a linear latent -> action head on labelled batches
    label_budget: int = 1_000  # labelled transitions: the first this many of the training set
    # MaskLAM on top of LAOM (beyond the paper): "input" feeds the target encoder the masked
    # next observation (background black); "features" weights the FDM's error at each location
    # of the target feature map by the agent's share of it (MaskLAM's loss, in latent space).
    target_masking: Literal["none", "input", "features"] = "none"

    def validate(self) -> None:
        at_least(self, 1, "frame_stack", "max_future_offset", "label_budget")

    @property
    def context_frames(self) -> int:
        """Frames up to o_t (the observation o_t itself)."""
        return self.frame_stack

    @property
    def future_frames(self) -> int:
        """Frames after t that o_{t+1} adds."""
        return 1

    @property
    def window(self) -> int:
        """Consecutive frames one training sample needs: o_t's stack up to o_{t+K}."""
        return self.frame_stack + self.max_future_offset

    @property
    def probe_window(self) -> int:
        """Frames one probing sample needs (k = 1)."""
        return self.frame_stack + 1


@dataclass
class LAOMOptimConfig:
    """AdamW (the reference: Adam, no weight decay), linear warm-up then cosine to 0; an EMA target."""

    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.0
    updates: int = 4_000
    warmup: float = 0.1  # fraction of `updates` with a linear warm-up (the reference: 3 of 10 epochs)
    target_tau: float = 0.005  # EMA rate of the target encoder: target <- (1 - tau) target + tau online
    label_batch_size: int = 16  # LAOM-Labels' labelled batch
    label_coef: float = 0.001  # weight of the labelled action loss
    probe_coef: float = 0.01  # the online probe sees a detached latent: it never shapes the model

    def validate(self) -> None:
        at_least(self, 1, "batch_size", "updates", "label_batch_size")
        positive(self, "lr")
        at_least(self, 0, "weight_decay", "label_coef", "probe_coef")
        in_range(self, "warmup", 0.0, 1.0)
        in_range(self, "target_tau", 0.0, 1.0)


@dataclass
class LAOMConfig:
    model: LAOMModelConfig = field(default_factory=LAOMModelConfig)
    method: LAOMMethodConfig = field(default_factory=LAOMMethodConfig)
    optim: LAOMOptimConfig = field(default_factory=LAOMOptimConfig)


METHODS: dict[str, LAOMMethodConfig] = {
    "laom": LAOMMethodConfig(),
    "laom-labels": LAOMMethodConfig(labels=True),
    "laom-mask": LAOMMethodConfig(target_masking="features"),
    "laom-mask-input": LAOMMethodConfig(target_masking="input"),
}

def laom_config(preset: str, method: str, **optim_overrides) -> LAOMConfig:
    """The preset's networks and optimisation with the method's switches (the preset's label budget)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    row = presets.preset(preset, "laom")
    return LAOMConfig(model=LAOMModelConfig(**row.get("model", {})),
                      method=dataclasses.replace(METHODS[method], **row.get("method", {})),
                      optim=LAOMOptimConfig(**{**row.get("optim", {}), **optim_overrides}))
