"""Deliberately imperfect masks, for experiments on how much mask quality matters.

Two knobs, applied to the served masks after the backend:
  * `mask_radius`: dilate (> 0) or erode (< 0) every mask by that many pixels with a
    square structuring element (a max-pool; scipy is not a dependency);
  * `mask_dropout`: each frame's mask is dropped with this probability. A dropped mask
    becomes all ones, meaning "no mask information": MaskLAM's loss averaged over an
    all-ones mask is exactly LAPO's full-frame loss, so the learner degrades gracefully
    instead of being told the agent is nowhere (an empty mask would zero the loss).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from common.config import in_range
from common.masks import morph_mask


@dataclass
class ImperfectionConfig:
    """Knobs that degrade the served masks."""

    mask_radius: int = field(default=0, metadata={"help": "dilate (>0) or erode (<0) masks by this many pixels"})
    mask_dropout: float = field(default=0.0, metadata={
        "help": "probability that a frame's mask is dropped (served as all ones = no mask information)"})

    def validate(self) -> None:
        in_range(self, "mask_dropout", 0.0, 1.0)


def morph(masks: np.ndarray, radius: int) -> np.ndarray:
    """`common.masks.morph_mask` on uint8 masks (N, H, W)."""
    if radius == 0:
        return masks
    return morph_mask(torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32)), radius).numpy().astype(np.uint8)


class Imperfection:
    """Applies the knobs with its own seeded generator (reproducible per instance)."""

    def __init__(self, config: ImperfectionConfig, seed: int):
        self.config = config
        self.rng = np.random.default_rng(seed)

    def apply(self, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The degraded masks and a bool per frame saying which were dropped."""
        masks = morph(masks, self.config.mask_radius)
        dropped = self.rng.random(len(masks)) < self.config.mask_dropout
        if dropped.any():
            masks = masks.copy()
            masks[dropped] = 1
        return masks, dropped
