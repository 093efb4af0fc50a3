"""From windows of uint8 frames to the tensors a LAM step needs, following the method's switches.

A window holds frames o_{t-c+1} .. o_{t+K+f-1} (c context frames, future offset up to K,
f future frames). With offset k the IDM sees the c context frames and o_{t+k} ..
o_{t+k+f-1}; the FDM sees the context frames and predicts the target o_{t+k}; the probes
read a_t, the action from o_t to o_{t+1} (so they are scored with k = 1).

Mask quality switches (radius, occlusion) act on every use of the mask: the loss, the
mask channel and input masking, as an imprecise segmenter would.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from common.masks import morph_mask
from learner.data import Windows
from learner.lam.config import MethodConfig, ModelConfig

OCCLUSION_PATCH = 4  # side (pixels) of the patches the occlusion switch drops


@dataclass
class LAMBatch:
    idm_input: torch.Tensor  # float (B, C_idm, H, W)
    fdm_input: torch.Tensor  # float (B, C_fdm, H, W)
    target: torch.Tensor  # float (B, 3, H, W) in [-0.5, 0.5]
    target_mask: torch.Tensor  # float (B, H, W) in {0, 1}
    action: torch.Tensor  # float (B, A): a_t
    bg_velocity: torch.Tensor  # float (B, 2): background motion from o_t to o_{t+1}

    def to(self, device: torch.device | str) -> "LAMBatch":
        return LAMBatch(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))


def frame_channels(method: MethodConfig) -> int:
    return 4 if method.mask_channel else 3


def input_channels(method: MethodConfig, model: ModelConfig) -> tuple[int, int]:
    """(IDM channels, FDM channels) for these switches."""
    per_frame = frame_channels(method)
    idm = per_frame * (method.context_frames + method.future_frames) + (3 if model.frame_diff else 0)
    return idm, per_frame * method.context_frames


def occlude_mask(masks: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Drop each OCCLUSION_PATCH-square patch of the masks (N, H, W) with probability `fraction`."""
    if fraction <= 0:
        return masks
    n, h, w = masks.shape
    patches = (-(-h // OCCLUSION_PATCH), -(-w // OCCLUSION_PATCH))
    keep = (torch.rand((n, 1, *patches), generator=generator) >= fraction).float()
    keep = F.interpolate(keep, scale_factor=OCCLUSION_PATCH, mode="nearest")[:, 0, :h, :w]
    return masks * keep


def make_batch(windows: Windows, method: MethodConfig, model: ModelConfig, offsets: np.ndarray,
               generator: torch.Generator) -> LAMBatch:
    """Tensors for one step; `offsets` (B,) are the future offsets k in 1..K."""
    b, window = windows.frames.shape[:2]
    c, f = method.context_frames, method.future_frames
    frames = torch.from_numpy(windows.frames).permute(0, 1, 4, 2, 3).float().div_(255.0)  # (B, W, 3, H, W)
    masks = torch.from_numpy(windows.masks).float().flatten(0, 1)
    masks = occlude_mask(morph_mask(masks, method.mask_radius), method.occlusion, generator)
    masks = masks.reshape(b, window, 1, *masks.shape[-2:])
    inputs = (frames * masks if method.input_masking else frames) - 0.5
    if method.mask_channel:
        inputs = torch.cat([inputs, masks - 0.5], dim=2)

    rows = torch.arange(b)[:, None]
    future_index = torch.from_numpy(c - 1 + offsets)[:, None] + torch.arange(f)[None, :]  # (B, f)
    context = inputs[:, :c]
    future = inputs[rows, future_index]
    idm_parts = [context.flatten(1, 2), future.flatten(1, 2)]
    if model.frame_diff:
        idm_parts.append(future[:, 0, :3] - context[:, -1, :3])
    target_index = future_index[:, 0]
    return LAMBatch(
        idm_input=torch.cat(idm_parts, dim=1),
        fdm_input=context.flatten(1, 2),
        target=frames[rows[:, 0], target_index] - 0.5,
        target_mask=masks[rows[:, 0], target_index, 0],
        action=torch.from_numpy(windows.actions[:, c - 1]),
        bg_velocity=torch.from_numpy(windows.bg_velocity[:, c - 1]),
    )

