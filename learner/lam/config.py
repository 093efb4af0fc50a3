"""LAM settings: network sizes, the method's switches, the optimisation; and their presets.

`MethodConfig` holds every switch of docs/design.md section 5, so LAPO, MaskLAM-loss-only and
MaskLAM-as-the-authors-ran-it are three points in one space (`METHODS`). The presets
(learner/presets.py) fix the network and optimisation size: `paper` as the authors'
released configuration (docs/design.md §5), `ci` (the defaults here) small enough to train
in minutes on two CPU cores. Offline training (`LAMConfig`) runs to a budget of updates on a
cosine schedule; the online learner (`OnlineLAMConfig`) trains for as long as its run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from common.config import at_least, in_range, positive, require
from learner import presets


@dataclass
class ModelConfig:
    """IDM and FDM sizes. Widths are IMPALA's 16/32/32 times a scale."""

    idm_scale: int = 1
    fdm_scale: int = 1
    num_blocks: int = 2  # residual blocks per IMPALA stage
    latent_dim: int = 32
    frame_diff: bool = True  # IDM also sees (first future frame - last context frame): a faster start
    quantizer: Literal["none", "vq"] = "none"
    vq_codes: int = 64  # codebook size (VQ only)
    vq_groups: int = 4  # the latent is quantised as this many independent sub-vectors
    vq_beta: float = 0.25  # commitment weight inside the VQ loss

    def validate(self) -> None:
        at_least(self, 1, "idm_scale", "fdm_scale", "latent_dim", "vq_codes", "vq_groups")
        at_least(self, 0, "num_blocks", "vq_beta")
        require(self.quantizer != "vq" or self.latent_dim % self.vq_groups == 0, "vq_groups",
                f"does not divide --lam.model.latent-dim {self.latent_dim} (each group quantises a sub-vector)",
                "pass a divisor of the latent size")


@dataclass
class MethodConfig:
    """What distinguishes LAPO from MaskLAM and its variants."""

    loss: Literal["mse", "masked"] = "mse"
    mask_channel: bool = False  # append the agent mask to every input frame as a 4th channel
    context_frames: int = 1  # frames up to o_t seen by the IDM and the FDM
    future_frames: int = 1  # frames from o_{t+k} seen by the IDM (the FDM predicts o_{t+k})
    max_future_offset: int = 1  # k ~ U{1..K} in training; k = 1 when probing
    input_masking: bool = False  # background pixels of every input frame set to black
    mask_radius: int = 0  # > 0 dilates, < 0 erodes the mask by this many pixels (imprecise masks)
    occlusion: float = 0.0  # each 4x4 patch of the mask dropped with this probability (partial masks)

    def validate(self) -> None:
        at_least(self, 1, "context_frames", "future_frames", "max_future_offset")
        in_range(self, "occlusion", 0.0, 1.0)

    @property
    def window(self) -> int:
        """Consecutive frames one training sample needs."""
        return self.context_frames + self.max_future_offset + self.future_frames - 1

    @property
    def probe_window(self) -> int:
        """Frames one probing sample needs (k = 1)."""
        return self.context_frames + self.future_frames


@dataclass
class OnlineOptimConfig:
    """AdamW at a constant learning rate (the online learner trains as long as it runs); loss weights as the authors."""

    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    vq_coef: float = 0.1
    probe_coef: float = 0.01  # the online probe sees a detached latent: it never shapes the model

    def validate(self) -> None:
        at_least(self, 1, "batch_size")
        positive(self, "lr")
        at_least(self, 0, "weight_decay", "vq_coef", "probe_coef")


@dataclass
class OptimConfig(OnlineOptimConfig):
    """AdamW with a cosine schedule to 0 over `updates`; loss weights as the authors."""

    updates: int = 4_000

    def validate(self) -> None:
        super().validate()
        at_least(self, 1, "updates")


@dataclass
class LAMConfig:
    """The LAM trained offline (learner.compare, benchmarks): to a budget of updates."""

    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)


@dataclass
class OnlineLAMConfig:
    """The LAM learner.main trains online, for as long as the run: no update budget, no schedule."""

    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OnlineOptimConfig = field(default_factory=OnlineOptimConfig)


METHODS: dict[str, MethodConfig] = {
    "lapo": MethodConfig(loss="mse"),
    # The loss alone, everything else as LAPO: the comparison isolates the masked loss.
    "masklam": MethodConfig(loss="masked"),
    # All of the authors' switches: mask channel, 3 context + 3 future frames, k ~ U{1..9}.
    "masklam-paper": MethodConfig(loss="masked", mask_channel=True, context_frames=3, future_frames=3,
                                  max_future_offset=9),
}

def lam_config(preset: str, method: str, **optim_overrides) -> LAMConfig:
    """The preset's networks and optimisation with the method's switches."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    row = presets.preset(preset, "lam")
    return LAMConfig(model=ModelConfig(**row.get("model", {})), method=dataclasses.replace(METHODS[method]),
                     optim=OptimConfig(**{**row.get("optim", {}), **optim_overrides}))


def online_lam_config(preset: str, method: str) -> OnlineLAMConfig:
    """`lam_config` without its update budget, for the online learner."""
    offline = lam_config(preset, method)
    optim = {f.name: getattr(offline.optim, f.name) for f in dataclasses.fields(OnlineOptimConfig)}
    return OnlineLAMConfig(offline.model, offline.method, OnlineOptimConfig(**optim))
