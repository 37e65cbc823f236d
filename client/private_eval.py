"""What an evaluate reply may reveal: protected threshold counts (the default) instead of exact ones.

Threat: an honest-but-curious coordinator that chooses the weights a site evaluates (e.g. a crafted
model whose score is a function of one clinical variable) and how often. Exact counts on the
2,641-threshold grid give every patient's score to within one grid step, tagged with the label.

The default reply (``EvaluationPolicy``; docs/privacy.md) therefore:
1. sends no counts at all when the split holds fewer than ``min_patients_per_class`` patients of
   either class (``withheld`` = 1, every count 0, num-examples 0);
2. bins every score into ``score_bins`` equal-width bins on [0, 1] (resolution 1/score_bins) after the
   monotone map of the round's evaluation grid (common/score_grid.py; a shift and scale of the logit that
   the coordinator could build into the weights anyway): it learns at most how many positives /
   negatives fall in each bin;
3. adds discrete-Laplace noise (scale 1/eval_epsilon) to each of the 2 x score_bins histogram cells,
   so one reply is eval_epsilon-DP for any one patient (add/remove), then makes the cumulative counts
   non-negative and monotone (post-processing, no privacy cost);
4. draws that noise from a key of (site secret, the evaluated weights, the split): asking again for
   the SAME weights returns the SAME reply, so repeating a request does not average the noise away.
   (Different weights get fresh noise; the number of requests per run is capped by the governance
   rules, ``max_requests_per_run``, so the total is at most max_requests x eval_epsilon.)
Counts, n-pos, n-neg, num-examples and the loss are all computed from the protected histogram
(post-processing), so they are consistent and reveal nothing more.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from common.metrics_counts import THRESHOLD_GRID, threshold_counts
from common.score_grid import IDENTITY, from_grid, to_grid


@dataclass(frozen=True)
class EvalReply:
    """The numbers an evaluate reply carries for one split."""

    counts: np.ndarray  #: (len(THRESHOLD_GRID), 4) int64 TP/FP/TN/FN
    n: int
    n_pos: int
    n_neg: int
    loss: float
    withheld: bool = False


def score_histogram(labels: np.ndarray, scores: np.ndarray, bins: int) -> np.ndarray:
    """(2, bins) int64: row 0 negatives, row 1 positives, per equal-width score bin on [0, 1]."""
    idx = np.clip(np.floor(np.asarray(scores, dtype=np.float64) * bins).astype(int), 0, bins - 1)
    y = np.asarray(labels).astype(int)
    hist = np.zeros((2, bins), dtype=np.int64)
    np.add.at(hist, (y, idx), 1)
    return hist


def discrete_laplace(shape: tuple[int, ...], epsilon: float, rng: np.random.Generator) -> np.ndarray:
    """Two-sided geometric noise P(k) ~ exp(-epsilon |k|): epsilon-DP for a count of sensitivity 1."""
    p = 1.0 - np.exp(-epsilon)
    return (rng.geometric(p, size=shape) - rng.geometric(p, size=shape)).astype(np.int64)


def consistent_histogram(noisy: np.ndarray) -> np.ndarray:
    """A valid (non-negative) histogram from a noisy one, by post-processing its top-down cumulative counts
    (what the threshold counts are): clipped at 0 and made non-increasing. Clipping each cell instead
    would add a positive bias in every empty bin and pull the pooled AUROC towards 0.5."""
    cum = np.clip(np.cumsum(noisy[:, ::-1], axis=1)[:, ::-1], 0, None)  # patients with score >= bin edge
    cum = np.minimum.accumulate(cum, axis=1)
    return cum - np.concatenate([cum[:, 1:], np.zeros((cum.shape[0], 1), dtype=cum.dtype)], axis=1)


def counts_from_histogram(hist: np.ndarray) -> np.ndarray:
    """Threshold counts on the shared grid of patients placed at their bin's LOWER edge."""
    bins = hist.shape[1]
    edges = np.arange(bins) / bins
    labels = np.concatenate([np.zeros(int(hist[0].sum())), np.ones(int(hist[1].sum()))])
    scores = np.concatenate([np.repeat(edges, hist[0]), np.repeat(edges, hist[1])])
    return np.asarray(threshold_counts(labels, scores, THRESHOLD_GRID), dtype=np.int64)


def histogram_loss(hist: np.ndarray, grid: tuple[float, float] = IDENTITY) -> float:
    """Mean BCE with every patient scored at its bin's centre, mapped back from grid units (0 when empty)."""
    bins = hist.shape[1]
    centre = np.clip([from_grid(c, *grid) for c in (np.arange(bins) + 0.5) / bins], 1e-6, 1 - 1e-6)
    n = hist.sum()
    if n == 0:
        return 0.0
    return float((hist[0] @ -np.log(1 - centre) + hist[1] @ -np.log(centre)) / n)


def noise_seed(secret: bytes, weights_digest: str, split: str) -> int:
    """Seed of a reply's noise: same secret + same weights + same split -> same noise."""
    h = hashlib.sha256(secret + weights_digest.encode() + split.encode()).digest()
    return int.from_bytes(h[:8], "little")


def weights_digest(state: dict[str, Any]) -> str:
    """sha256 over a state_dict's names and bytes (which weights were evaluated)."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(np.ascontiguousarray(state[key].detach().cpu().numpy() if hasattr(state[key], "detach")
                                      else np.asarray(state[key])).tobytes())
    return h.hexdigest()


def _withheld() -> EvalReply:
    return EvalReply(np.zeros((len(THRESHOLD_GRID), 4), dtype=np.int64), 0, 0, 0, 0.0, withheld=True)


def protect(labels: np.ndarray, scores: np.ndarray, policy: Any, seed: int,
            grid: tuple[float, float] = IDENTITY) -> EvalReply:
    """The reply ``policy`` (an ``EvaluationPolicy``) allows for these labels and scores; counts (and bins) are
    taken on the coordinator's evaluation ``grid`` (common/score_grid.py), the loss on the scores themselves."""
    from common.metrics import binary_cross_entropy

    y = np.asarray(labels, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if min(n_pos, n_neg) < int(policy.min_patients_per_class) or len(y) == 0:
        return _withheld()
    g = to_grid(s, *grid)
    if policy.exact_counts:
        counts = np.asarray(threshold_counts(y, g, THRESHOLD_GRID), dtype=np.int64)
        return EvalReply(counts, len(y), n_pos, n_neg, float(binary_cross_entropy(y, s)))
    bins = int(policy.score_bins)
    if bins < 2:
        raise ValueError(f"evaluation.score_bins must be >= 2, got {bins}")
    hist = score_histogram(y, g, bins)
    if policy.eval_epsilon > 0:
        hist = consistent_histogram(hist + discrete_laplace(hist.shape, float(policy.eval_epsilon),
                                                            np.random.default_rng(seed)))
    n_neg_p, n_pos_p = int(hist[0].sum()), int(hist[1].sum())
    return EvalReply(counts_from_histogram(hist), n_neg_p + n_pos_p, n_pos_p, n_neg_p, histogram_loss(hist, grid))


__all__ = ["EvalReply", "counts_from_histogram", "discrete_laplace", "histogram_loss", "noise_seed", "protect",
           "score_histogram", "weights_digest"]
