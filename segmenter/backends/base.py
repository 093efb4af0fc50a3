"""What every mask backend provides."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from common.codec import Chunk


class Backend(Protocol):
    """Turns whole chunks into masks.

    Backends see whole chunks, not loose frames, so that they can use the episode's
    order (SAM propagates its prompt from frame to frame) and the chunk's ground truth
    (the oracle, and the student's oracle teacher).
    """

    name: str

    def segment(self, chunks: Sequence[Chunk]) -> list[np.ndarray]:
        """One uint8 {0,1} array (T+1, H, W) per chunk, at the chunk's frame size."""
        ...

    def report(self) -> dict[str, float]:
        """Backend-specific running figures (e.g. the student's IoU against its teacher)."""
        ...
