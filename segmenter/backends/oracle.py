"""The oracle: the simulator's ground-truth masks carried by every chunk (the upper bound)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from common.codec import Chunk


class OracleBackend:
    name = "oracle"

    def segment(self, chunks: Sequence[Chunk]) -> list[np.ndarray]:
        return [np.ascontiguousarray(chunk.masks, dtype=np.uint8) for chunk in chunks]

    def report(self) -> dict[str, float]:
        return {}
