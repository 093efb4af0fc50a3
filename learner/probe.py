"""Linear probes of a latent: how much of a target (the action, the background's motion) it holds.

The offline probe is ridge regression in closed form, fit on one split and scored on
another, so it measures what is linearly decodable rather than what a probe memorised.
Scores are normalised: nMSE = MSE / mean per-dimension variance of the target on the
scoring split (1.0 = no better than predicting the mean; 0 = perfect).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_VARIANCE = 1e-8  # below this a target is constant (e.g. no background motion) and nMSE is undefined


@dataclass
class ProbeScore:
    nmse: float | None  # None when the target does not vary on the scoring split
    per_dim: list[float | None]


def nmse(prediction: np.ndarray, target: np.ndarray) -> ProbeScore:
    """MSE / mean per-dimension variance of `target`, overall and per dimension."""
    mse = ((prediction - target) ** 2).mean(axis=0)
    variance = target.var(axis=0)
    per_dim = [float(m / v) if v > MIN_VARIANCE else None for m, v in zip(mse, variance)]
    overall = float(mse.mean() / variance.mean()) if variance.mean() > MIN_VARIANCE else None
    return ProbeScore(overall, per_dim)


def ridge_fit(x: np.ndarray, y: np.ndarray, l2: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) minimising |x W + b - y|^2 + l2 |W|^2 on standardised features, in closed form.

    Standardising makes one l2 sensible for any latent scale; W is returned in the
    original feature space, so `x @ W + b` predicts.
    """
    x = x.astype(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-8
    xs = (x - mean) / std
    y_mean = y.mean(axis=0)
    gram = xs.T @ xs + l2 * np.eye(xs.shape[1])
    w = np.linalg.solve(gram, xs.T @ (y - y_mean)) / std[:, None]
    return w, y_mean - mean @ w


def ridge_probe(x_fit: np.ndarray, y_fit: np.ndarray, x_score: np.ndarray, y_score: np.ndarray,
                l2: float = 1.0) -> ProbeScore:
    """Fit on one split, score nMSE on the other."""
    w, b = ridge_fit(x_fit, y_fit, l2)
    return nmse(x_score @ w + b, y_score)
