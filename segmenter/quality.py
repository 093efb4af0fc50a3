"""Mask quality: per-frame intersection over union."""

from __future__ import annotations

import numpy as np


def mask_iou(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """IoU of each frame's binary masks, shape (..., H, W) -> (...).

    A frame where both masks are empty scores 1: there is no agent and none was found.
    """
    if predicted.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {predicted.shape} vs {truth.shape}")
    p, t = predicted.astype(bool), truth.astype(bool)
    intersection = (p & t).sum(axis=(-2, -1))
    union = (p | t).sum(axis=(-2, -1))
    return np.where(union > 0, intersection / np.maximum(union, 1), 1.0)
