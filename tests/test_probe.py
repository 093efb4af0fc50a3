"""The offline ridge probe and nMSE: a known linear map is recovered, noise scores about 1."""

from __future__ import annotations

import numpy as np
import pytest

from learner.probe import nmse, ridge_fit, ridge_probe


def test_ridge_probe_recovers_a_known_linear_map():
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(16, 6)), rng.normal(size=6)
    x = rng.normal(size=(2000, 16)) * rng.uniform(0.1, 10, size=16)  # features on very different scales
    y = x @ w + b
    score = ridge_probe(x[:1000], y[:1000], x[1000:], y[1000:], l2=1e-6)
    assert score.nmse < 1e-6 and max(score.per_dim) < 1e-6
    w_fit, b_fit = ridge_fit(x, y, l2=1e-6)
    np.testing.assert_allclose(w_fit, w, atol=1e-5)
    np.testing.assert_allclose(b_fit, b, atol=1e-5)


def test_ridge_probe_of_noise_scores_about_one():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(4000, 32)), rng.uniform(-1, 1, size=(4000, 6))
    score = ridge_probe(x[:2000], y[:2000], x[2000:], y[2000:])
    assert score.nmse == pytest.approx(1.0, abs=0.05)
    assert all(v == pytest.approx(1.0, abs=0.08) for v in score.per_dim)


def test_nmse_normalises_by_the_mean_per_dimension_variance():
    rng = np.random.default_rng(2)
    target = rng.normal(size=(10_000, 2)) * np.array([1.0, 3.0])
    assert nmse(np.zeros_like(target), target).nmse == pytest.approx(1.0, abs=0.02)  # the mean predictor
    score = nmse(target + rng.normal(size=target.shape) * np.array([1.0, 0.0]), target)
    assert score.nmse == pytest.approx(1.0 / 10.0, abs=0.01)  # MSE (1 + 0) / 2 over variance (1 + 9) / 2
    assert score.per_dim[0] == pytest.approx(1.0, abs=0.05) and score.per_dim[1] == 0.0


def test_constant_target_has_no_nmse():
    score = nmse(np.zeros((10, 2)), np.zeros((10, 2)))
    assert score.nmse is None and score.per_dim == [None, None]
