"""Federated Newton-Raphson logistic regression (the DataSHIELD / WebDISCO GLM scheme), simulation only.

Each round every site sends the gradient and Hessian of ITS summed log-loss at the current weights
(d+1 and (d+1)^2 numbers); the server sums them, adds the L2 penalty and takes one Newton step. The
iterates are exactly those of Newton's method on the pooled objective, so the federated model equals the
pooled one to solver tolerance: the reference that tells optimisation error (FedAvg-SGD not converged)
from the cost of federation itself. Not a deployed protocol: per-site Hessians at coordinator-chosen
weights are richer aggregates than model updates (docs/experiments.md says what they reveal).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _with_intercept(X: np.ndarray) -> np.ndarray:
    return np.hstack([X, np.ones((len(X), 1))])


def site_newton_terms(w: np.ndarray, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One site's (gradient, Hessian) of the summed logistic loss at ``w`` (last entry = intercept)."""
    Xb = _with_intercept(X)
    p = 1.0 / (1.0 + np.exp(-np.clip(Xb @ w, -30, 30)))
    return Xb.T @ (p - y), Xb.T @ (Xb * (p * (1.0 - p))[:, None])


def fit_federated_newton(site_data: dict[str, tuple[np.ndarray, np.ndarray]], inv_c: float = 1.0,
                         max_rounds: int = 50, tol: float = 1e-10) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Weights minimising sum of log-losses + inv_c/2 |w|^2 (intercept unpenalised: scikit-learn's
    ``LogisticRegression(C=1/inv_c)``) from summed per-site Newton terms; history = step size per round."""
    dim = next(iter(site_data.values()))[0].shape[1] + 1
    penalty = inv_c * np.eye(dim)
    penalty[-1, -1] = 0.0
    w = np.zeros(dim)
    history: list[dict[str, Any]] = []
    for rnd in range(1, max_rounds + 1):
        terms = [site_newton_terms(w, X, y) for X, y in site_data.values()]
        grad = sum(g for g, _ in terms) + penalty @ w
        hess = sum(h for _, h in terms) + penalty
        step = np.linalg.lstsq(hess, grad, rcond=None)[0]  # a feature constant over all sites: min-norm step
        w = w - step
        history.append({"round": rnd, "step": float(np.abs(step).max())})
        if np.abs(step).max() < tol:
            break
    return w, history


__all__ = ["fit_federated_newton", "site_newton_terms"]
