"""How the SAM backend finds the agent without a person: pure functions, tested alone.

Strategy (propagation, bootstrapped by selection):
  * first frame of an episode (as this instance sees it): SAM's automatic mask
    generator proposes masks, plus the three masks of a centre-point prompt, and
    `select_agent_mask` keeps the agent: under the tracking camera the agent sits near
    the frame centre, covers a moderate area, and — unlike the sky and the floor —
    does not stretch across the frame to its top or bottom edge;
  * every later frame: a box prompt around the previous frame's mask (`propagate_box`),
    grown by a margin so that the agent's motion between frames stays inside;
  * a propagated mask that is implausible (`plausible`: empty, or sky/floor-sized) is
    discarded and the frame is bootstrapped again, so one bad frame does not poison
    the rest of the episode;
  * a chunk that continues an episode (its first frame is the previous chunk's last)
    starts from the mask already found for that frame (`EpisodeMemory`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """Tight (x0, y0, x1, y1) pixel box of a mask's pixels, or None for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def propagate_box(previous_mask: np.ndarray, margin: float) -> np.ndarray | None:
    """The box prompt for the next frame: the previous mask's box grown by `margin` of its
    size plus 2 px on each side, clipped to the frame."""
    box = mask_box(previous_mask)
    if box is None:
        return None
    h, w = previous_mask.shape
    pad_x = margin * (box[2] - box[0]) + 2
    pad_y = margin * (box[3] - box[1]) + 2
    return np.array([max(0.0, box[0] - pad_x), max(0.0, box[1] - pad_y),
                     min(float(w), box[2] + pad_x), min(float(h), box[3] + pad_y)], dtype=np.float32)


def plausible(mask: np.ndarray, min_area: float, max_area: float) -> bool:
    """An agent mask covers between `min_area` and `max_area` of the frame and is not a
    band across the frame that reaches its top or bottom edge (as the sky and floor are)."""
    area = float(mask.mean())
    band = bool(mask[:, 0].any() and mask[:, -1].any() and (mask[0].any() or mask[-1].any()))
    return min_area <= area <= max_area and not band


def centrality(mask: np.ndarray) -> float:
    """1 at the frame centre, 0 at a corner: how close the mask's centroid is to the centre."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return 0.0
    distance = np.hypot(ys.mean() + 0.5 - h / 2, xs.mean() + 0.5 - w / 2)
    return float(1.0 - distance / np.hypot(h / 2, w / 2))


def select_agent_mask(candidates: Sequence[np.ndarray], quality: Sequence[float], min_area: float,
                      max_area: float) -> int | None:
    """Index of the candidate most likely to be the agent (plausible, then highest
    quality x centrality), or None when no candidate is plausible."""
    best, best_score = None, -np.inf
    for i, (mask, q) in enumerate(zip(candidates, quality)):
        if not plausible(mask, min_area, max_area):
            continue
        score = float(q) * centrality(mask)
        if score > best_score:
            best, best_score = i, score
    return best


class EpisodeMemory:
    """The last mask found in each recent episode, keyed by its step index, so that the
    next chunk of the episode starts from it (bounded: least recently used is forgotten)."""

    def __init__(self, capacity: int = 1024):
        self.capacity = capacity
        self._last: OrderedDict[str, tuple[int, np.ndarray]] = OrderedDict()

    def get(self, episode_id: str, step: int) -> np.ndarray | None:
        entry = self._last.get(episode_id)
        if entry is None or entry[0] != step:
            return None
        self._last.move_to_end(episode_id)
        return entry[1]

    def put(self, episode_id: str, step: int, mask: np.ndarray) -> None:
        self._last[episode_id] = (step, mask)
        self._last.move_to_end(episode_id)
        while len(self._last) > self.capacity:
            self._last.popitem(last=False)
