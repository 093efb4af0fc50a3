"""From windows of uint8 frames to LAOM's observations, and which windows carry labels.

A window holds frames o_{t-S+1} .. o_{t+K} (S = frame stack, K = largest future offset).
An observation is a stack of S frames: o_t ends at the window's frame S-1, o_{t+k} at
frame S-1+k, and the target observation o_{t+1} at frame S. Frames are scaled to [-1, 1]
(as the reference); the masks of o_{t+1}'s frames come along for the masked variants.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from learner.compute import Compute
from learner.data import TransitionData, Windows
from learner.laom.config import LAOMMethodConfig


@dataclass
class LAOMBatch:
    obs: torch.Tensor  # float (B, 3S, H, W): o_t
    future: torch.Tensor  # float (B, 3S, H, W): o_{t+k}
    next_obs: torch.Tensor  # float (B, 3S, H, W): o_{t+1}, the target encoder's input
    next_masks: torch.Tensor  # float (B, S, H, W) in {0, 1}: agent masks of o_{t+1}'s frames
    action: torch.Tensor  # float (B, A): a_t
    bg_velocity: torch.Tensor  # float (B, 2): background motion from o_t to o_{t+1}

    def to(self, device: torch.device | str) -> "LAOMBatch":
        return LAOMBatch(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))

    def in_layout(self, compute: Compute) -> "LAOMBatch":
        """The networks' inputs in `compute`'s training layout (learner/compute.py)."""
        return dataclasses.replace(self, obs=compute.layout(self.obs), future=compute.layout(self.future),
                                   next_obs=compute.layout(self.next_obs))


def stack(frames: torch.Tensor, last: torch.Tensor, size: int) -> torch.Tensor:
    """The observations (B, size*C, H, W) whose last frames are `last` (B,) in `frames` (B, W, C, H, W)."""
    index = last[:, None] + torch.arange(1 - size, 1)[None, :]
    return frames[torch.arange(len(last))[:, None], index].flatten(1, 2)


def make_batch(windows: Windows, method: LAOMMethodConfig, offsets: np.ndarray) -> LAOMBatch:
    """Tensors for one step; `offsets` (B,) are the future offsets k in 1..K."""
    s = method.frame_stack
    frames = torch.from_numpy(windows.frames).permute(0, 1, 4, 2, 3).float().div_(127.5).sub_(1.0)
    masks = torch.from_numpy(windows.masks).float()[:, :, None]
    now = torch.full((len(offsets),), s - 1)
    return LAOMBatch(
        obs=stack(frames, now, s),
        future=stack(frames, now + torch.from_numpy(offsets), s),
        next_obs=stack(frames, now + 1, s),
        next_masks=stack(masks, now + 1, s),
        action=torch.from_numpy(windows.actions[:, s - 1]),
        bg_velocity=torch.from_numpy(windows.bg_velocity[:, s - 1]),
    )


def labelled_starts(data: TransitionData, window: int, budget: int) -> np.ndarray:
    """Window starts whose every transition is among the first `budget` transitions of `data`
    (in dataset order): the only windows LAOM-Labels' supervised term may draw."""
    has_action = np.ones(len(data.frames), bool)
    has_action[data.chunk_start + data.chunk_length - 1] = False  # a chunk's last frame leads nowhere
    transition_rows = np.flatnonzero(has_action)
    if budget <= 0 or len(transition_rows) == 0:
        return np.zeros(0, np.int64)
    last_labelled = transition_rows[min(budget, len(transition_rows)) - 1]
    starts = data.window_starts(window)
    return starts[starts + window - 2 <= last_labelled]  # transitions of a window: rows start .. start+window-2
