"""Mask morphology shared by the segmenter's imperfection knobs and the LAM's mask variants."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def morph_mask(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Dilate (radius > 0) or erode (radius < 0) binary float masks (N, H, W) with a (2r+1)^2 square.

    Erosion is the complement of the dilated complement; outside the frame counts as
    background, so an agent touching the border is eroded there too.
    """
    if radius == 0:
        return masks
    r = abs(radius)
    x = masks[:, None]
    if radius > 0:
        x = F.max_pool2d(x, 2 * r + 1, stride=1, padding=r)
    else:
        x = 1 - F.max_pool2d(F.pad(1 - x, (r, r, r, r), value=1.0), 2 * r + 1, stride=1)
    return x[:, 0]
