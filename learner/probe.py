"""Linear probes of a latent: how much of a target (the action, the background's motion) it holds.

The offline probe is ridge regression in closed form, fit on one split and scored on
another, so it measures what is linearly decodable rather than what a probe memorised.
Scores are normalised: nMSE = MSE / mean per-dimension variance of the target on the
scoring split (1.0 = no better than predicting the mean; 0 = perfect).

A probe set holds held-out windows, split into a fit half and a score half by whole
episodes. `evaluate_probes` scores any model family: each brings its own `encode`
(windows -> latents), and `encode_in_batches` runs it over the set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from common.windows import Windows
from learner.data import TransitionData, gather_windows

ENCODE_BATCH = 256  # windows per forward pass when encoding a probe set
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


@dataclass
class ProbeSet:
    """Held-out windows (k = 1) and which of them fit the probe (the rest score it)."""

    windows: Windows
    fit: np.ndarray  # bool (N,)


def make_probe_set(data: TransitionData, window: int, max_samples: int, seed: int) -> ProbeSet:
    """Up to `max_samples` windows; fit/score split by whole episodes (by chunk if under 4 episodes)."""
    starts = data.window_starts(window)
    if len(starts) > max_samples:
        starts = np.sort(np.random.default_rng(seed).choice(starts, max_samples, replace=False))
    chunk = np.searchsorted(data.chunk_start, starts, side="right") - 1
    unit = data.chunk_episode[chunk] if len(np.unique(data.chunk_episode)) >= 4 else chunk
    return ProbeSet(gather_windows(data, starts, window), fit=unit % 2 == 0)


# (latents, online-probe predictions, actions, background velocities) of every window of a probe set
Encoded = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@torch.no_grad()
def encode_in_batches(model: torch.nn.Module, probe_set: ProbeSet,
                      encode: Callable[[Windows], tuple[torch.Tensor, Any]]) -> Encoded:
    """Run `encode` (windows -> latent, batch with .action and .bg_velocity) over a probe set in
    slices of ENCODE_BATCH, in eval mode; results on the CPU whatever the model's device."""
    model.eval()
    latents, predictions, actions, velocity = [], [], [], []
    for i in range(0, len(probe_set.fit), ENCODE_BATCH):
        part = probe_set.windows.select(slice(i, i + ENCODE_BATCH))
        z, batch = encode(part)
        latents.append(z.float().cpu().numpy())
        predictions.append(model.probe(z).float().cpu().numpy())
        actions.append(batch.action.cpu().numpy())
        velocity.append(batch.bg_velocity.cpu().numpy())
    model.train()
    return tuple(np.concatenate(parts) for parts in (latents, predictions, actions, velocity))


def evaluate_probes(model: Any, config: Any, probe_sets: dict[str, ProbeSet],
                    encode: Callable[[Any, Any, ProbeSet], Encoded]) -> dict:
    """Offline ridge probes on each held-out set; the online probe and the background probe
    on the decorrelated `eval` set (the headline). `encode(model, config, probe_set)` is the
    model family's `encode_probe_set`."""
    results: dict = {}
    for name, probe_set in probe_sets.items():
        z, online, actions, velocity = encode(model, config, probe_set)
        fit, score = probe_set.fit, ~probe_set.fit
        action_score = ridge_probe(z[fit], actions[fit], z[score], actions[score])
        suffix = "" if name == "eval" else f"_{name}"
        results[f"probe_nmse{suffix}"] = action_score.nmse
        results[f"probe_nmse_per_dim{suffix}"] = action_score.per_dim
        if name == "eval":
            online_score = nmse(online[score], actions[score])
            results["probe_nmse_online"] = online_score.nmse
            results["probe_nmse_online_per_dim"] = online_score.per_dim
            results["background_nmse"] = ridge_probe(z[fit], velocity[fit], z[score], velocity[score]).nmse
    return results
