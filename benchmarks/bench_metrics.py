"""Timing of the evaluation statistics (bootstrap report, ROC band, DeLong, threshold counts) and the
pooled-vs-summed-counts AUROC gap per score scenario. Run: ``python benchmarks/bench_metrics.py``."""

from __future__ import annotations

import time

import numpy as np
from scipy.special import expit

from common import metrics as M


def _timeit(fn, repeat: int = 3) -> float:
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    rng = np.random.default_rng(0)
    for n in (100, 300, 1000, 3000):
        y = (rng.random(n) < 0.3).astype(int)
        s = expit(rng.normal(-1 + 1.2 * y, 1.0))
        s2 = expit(rng.normal(-1 + 0.8 * y, 1.0))
        print(f"n={n:5d}  binary_report(1000) {_timeit(lambda: M.binary_report(y, s, 0.3)):.3f}s  "
              f"roc_band(1000) {_timeit(lambda: M.bootstrap_roc_band(y, s)):.3f}s  "
              f"delong_test {_timeit(lambda: M.delong_test(y, s, s2)) * 1e3:.2f}ms  "
              f"threshold_counts {_timeit(lambda: M.threshold_counts(y, s)) * 1e3:.2f}ms")
    scenarios = {"wide": (-1.0, 1.2, 1.5), "confident": (-6.0, 5.0, 3.0), "focal_low_band": (-1.2, 0.3, 0.25),
                 "narrow_band": (0.0, 0.05, 0.04), "very_narrow_band": (-1.0, 0.03, 0.02)}
    print(f"grid: {len(M.THRESHOLD_GRID)} thresholds, max step {np.diff(M.THRESHOLD_GRID).max():.4g}")
    for name, (mu, shift, sd) in scenarios.items():
        gaps = []
        for _ in range(50):
            ys, ss = [], []
            for site in range(3):
                k = int(rng.integers(40, 200))
                y = (rng.random(k) < rng.uniform(0.2, 0.45)).astype(int)
                y[:2] = (0, 1)
                ys.append(y)
                ss.append(expit(rng.normal(mu + shift * y, sd) + 0.3 * sd * site))
            summed = sum(M.threshold_counts(y, s) for y, s in zip(ys, ss))
            gaps.append(abs(M.auroc_from_counts(summed) - M.auroc(np.concatenate(ys), np.concatenate(ss))))
        print(f"{name:17s} |AUROC(summed counts) - exact pooled|: mean {np.mean(gaps):.5f}, max {np.max(gaps):.5f}")


if __name__ == "__main__":
    main()
