"""A batch of windows: consecutive frames of one chunk and the steps between them.

The one length convention: a window of W frames holds W - 1 steps, and step j (the action,
reward, flags and background motion at j) leads from frame j to frame j + 1. The replay's
sampler (common/replay) and the offline datasets (learner/data.py) both hand out `Windows`,
so every consumer indexes steps the same way, whichever source fed it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from common.codec import ARRAY_SPECS

# A chunk's per-step arrays (T of them for T + 1 frames): a window of W frames holds W - 1 of each.
STEP_ARRAYS = tuple(name for name, (_, shape) in ARRAY_SPECS.items() if shape[0] == "T")


@dataclass
class Windows:
    """B windows of W consecutive frames of one chunk each, and the W - 1 steps between them."""

    frames: np.ndarray  # uint8 (B, W, height, width, 3)
    masks: np.ndarray  # uint8 (B, W, height, width); 1 = agent
    actions: np.ndarray  # float32 (B, W - 1, A); actions[:, j] leads from frame j to j + 1
    rewards: np.ndarray  # float32 (B, W - 1)
    terminated: np.ndarray  # bool (B, W - 1)
    truncated: np.ndarray  # bool (B, W - 1)
    bg_velocity: np.ndarray  # float32 (B, W - 1, 2); background motion from frame j to j + 1
    chunk_ids: np.ndarray  # int64 (B,); the chunk each window lies in (its replay id, or its number in a dataset)
    starts: np.ndarray  # int64 (B,); index of each window's first frame inside its chunk

    def __post_init__(self) -> None:
        if self.frames.ndim != 5 or self.frames.shape[1] < 2:
            raise ValueError(f"frames must be (batch, window >= 2, height, width, 3), got {self.frames.shape}")
        batch, window = self.frames.shape[:2]
        expected = {"masks": (batch, window, *self.frames.shape[2:4]), "chunk_ids": (batch,), "starts": (batch,)}
        expected |= {name: (batch, window - 1) for name in STEP_ARRAYS}
        for name, shape in expected.items():
            if getattr(self, name).shape[:len(shape)] != shape:
                raise ValueError(f"{name} of windows of {window} frames must start with shape {shape} (a window of "
                                 f"W frames holds W - 1 steps), got {getattr(self, name).shape}")

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def window(self) -> int:
        """Frames per window (W)."""
        return self.frames.shape[1]

    def select(self, index: np.ndarray | slice) -> Windows:
        """The windows at `index` (a batch index or slice), whole."""
        return Windows(**{f.name: getattr(self, f.name)[index] for f in dataclasses.fields(self)})

    def cut(self, first: int, length: int) -> Windows:
        """Frames first .. first + length - 1 of every window, and the length - 1 steps between them."""
        if first < 0 or length < 2 or first + length > self.window:
            raise ValueError(f"cannot cut {length} frames from frame {first} out of windows of {self.window} frames")
        frames, steps = slice(first, first + length), slice(first, first + length - 1)
        return Windows(frames=self.frames[:, frames], masks=self.masks[:, frames],
                       **{name: getattr(self, name)[:, steps] for name in STEP_ARRAYS},
                       chunk_ids=self.chunk_ids, starts=self.starts + first)
