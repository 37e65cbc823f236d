"""Federated Newton logistic regression equals the pooled scikit-learn fit (same objective, C=1)."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression

from simulation.federated_glm import fit_federated_newton, site_newton_terms


def _sites(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    beta = np.array([1.0, -0.5, 0.0, 0.8])
    out = {}
    for k, (n, shift) in enumerate(((60, 0.0), (25, 1.0), (110, -0.5))):  # unequal, shifted sites
        X = rng.normal(shift, 1.0, (n, 4))
        X[:, 3] = rng.integers(0, 2, n)  # a binary indicator, as the clinical encoding has
        y = (rng.random(n) < 1 / (1 + np.exp(-(X @ beta - 0.3)))).astype(float)
        out[f"S{k}"] = (X, y)
    return out


def test_equals_pooled_sklearn() -> None:
    sites = _sites()
    X = np.vstack([x for x, _ in sites.values()])
    y = np.concatenate([t for _, t in sites.values()])
    ref = LogisticRegression(C=1.0, tol=1e-12, max_iter=10000).fit(X, y)
    w, history = fit_federated_newton(sites)
    assert np.allclose(w[:-1], ref.coef_[0], atol=1e-5) and abs(w[-1] - ref.intercept_[0]) < 1e-5
    assert len(history) < 15 and history[-1]["step"] < 1e-8  # quadratic convergence
    w2, _ = fit_federated_newton(sites, inv_c=10.0)  # stronger penalty shrinks the slopes
    assert np.abs(w2[:-1]).sum() < np.abs(w[:-1]).sum()


def test_site_terms_sum_to_pooled_terms() -> None:
    sites = _sites(1)
    w = np.array([0.2, -0.1, 0.3, 0.0, 0.5])
    g, h = map(sum, zip(*(site_newton_terms(w, X, y) for X, y in sites.values())))
    X = np.vstack([x for x, _ in sites.values()])
    y = np.concatenate([t for _, t in sites.values()])
    gp, hp = site_newton_terms(w, X, y)
    assert np.allclose(g, gp) and np.allclose(h, hp)
    eps = 1e-6  # the gradient is the derivative of the summed log-loss (finite differences)
    Xb = np.hstack([X, np.ones((len(X), 1))])
    loss = lambda v: float(np.sum(np.logaddexp(0, Xb @ v) - y * (Xb @ v)))  # noqa: E731
    num = np.array([(loss(w + eps * e) - loss(w - eps * e)) / (2 * eps) for e in np.eye(len(w))])
    assert np.allclose(gp, num, rtol=1e-5, atol=1e-5)
