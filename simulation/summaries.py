"""Tables of an experiment report: cross-site matrix, MRP-Table-1 summaries, held-out summary, DeLong tests.

All of them read :class:`simulation.arm_result.ArmResult` objects or their tidy rows; markdown helpers
(``md_table``, ``fmt_num``, ``fmt_p``) format what ``simulation.report`` writes.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np
import pandas as pd

from simulation.arm_result import POOLED, ArmResult, results_frame

#: Metrics shown in the MRP-Table-1-style tables, in this order.
TABLE_METRICS: tuple[str, ...] = ("auroc", "auprc", "sensitivity", "specificity", "ppv", "npv")

#: The baseline every other method is DeLong-tested against (when present).
CLINICAL_BASELINE = "clinical-lr"


def model_owner(experiment: str, method: str) -> str:
    """Cross-site key for a model: its method, plus the held-out site it never saw when there is one."""
    return method if not is_heldout(experiment) else f"{method} [{experiment}]"


def is_heldout(experiment: str) -> bool:
    """Held-out experiments carry ``heldout`` in their name (CONTRACTS section 6)."""
    return "heldout" in experiment


def heldout_site(experiment: str) -> str:
    """``heldout-DUKE`` -> ``DUKE``; ``mrp-heldout-ISPY2`` -> ``ISPY2``; others -> ''."""
    if "heldout-" not in experiment:
        return ""
    return experiment.split("heldout-", 1)[1]


def cross_site(arms: Iterable[ArmResult], metrics: tuple[str, ...] = ("auroc", "auprc", "sensitivity",
                                                                      "specificity", "n")) -> dict:
    """``{data_site: {model_owner: {metric: mean over seeds, "n_seeds": k}}}`` (NVIDIA FLARE layout).

    Held-out institutions appear as data sites whose model owners never trained on them.
    """
    frame = results_frame(arms)
    frame = frame[frame["metric"].isin(metrics)]
    out: dict[str, dict[str, dict[str, float]]] = {}
    for (site, exp, method), part in frame.groupby(["test_site", "experiment", "method"], sort=True):
        entry: dict[str, float] = {}
        for metric, m in part.groupby("metric"):
            vals = m["value"].astype(float)
            entry[metric] = None if vals.isna().all() else float(vals.mean())  # type: ignore[assignment]
        entry["n_seeds"] = int(part["seed"].nunique())
        out.setdefault(str(site), {})[model_owner(str(exp), str(method))] = entry
    return out


def summary_table(frame: pd.DataFrame, metrics: tuple[str, ...] = TABLE_METRICS) -> pd.DataFrame:
    """Mean over seeds of value / ci_low / ci_high per (experiment, method, test_site, metric)."""
    keys = ["experiment", "method", "test_site", "metric"]
    part = frame[frame["metric"].isin(metrics + ("n", "n_pos"))]
    return part.groupby(keys, sort=False)[["value", "ci_low", "ci_high"]].mean().reset_index()


def _cell(value: float, lo: float, hi: float) -> str:
    """``value (lo-hi)``, the value alone without a CI, ``n/a`` when not finite."""
    if value is None or not np.isfinite(value):
        return "n/a"
    if np.isfinite(lo) and np.isfinite(hi):
        return f"{value:.3f} ({lo:.3f}-{hi:.3f})"
    return f"{value:.3f}"


def md_table(header: list[str], body: list[list[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def table_one(frame: pd.DataFrame, experiment: str, test_site: str) -> str:
    """MRP-Table-1 style: one row per method, metric (95 % CI) columns, for one experiment and test set."""
    summ = summary_table(frame[(frame["experiment"] == experiment) & (frame["test_site"] == test_site)])
    if summ.empty:
        return "_no results_"
    body = []
    for method, part in summ.groupby("method", sort=True):
        get = {r.metric: (r.value, r.ci_low, r.ci_high) for r in part.itertuples()}
        n = get.get("n", (math.nan,) * 3)[0]
        npos = get.get("n_pos", (math.nan,) * 3)[0]
        counts = f"{int(n)} ({int(npos)})" if np.isfinite(n) and np.isfinite(npos) else "n/a"
        body.append([str(method), counts] + [_cell(*get.get(m, (math.nan,) * 3)) for m in TABLE_METRICS])
    return md_table(["method", "n (pCR)"] + [m.upper() if m in ("ppv", "npv") else m for m in TABLE_METRICS],
                    body)


def heldout_summary(frame: pd.DataFrame, metric: str = "auroc") -> pd.DataFrame:
    """Per method: the metric at every held-out institution, their mean and the worst site."""
    part = frame[frame["experiment"].map(is_heldout) & (frame["metric"] == metric)]
    part = part[part["test_site"] != POOLED]
    # The held-out site is the test site named by the experiment ("heldout-<site>...").
    part = part[[heldout_site(e) == s for e, s in zip(part["experiment"], part["test_site"])]]
    if part.empty:
        return pd.DataFrame()
    wide = part.groupby(["method", "test_site"])["value"].mean().unstack("test_site")
    wide["mean"] = wide.mean(axis=1, skipna=True)
    wide["worst"] = wide.drop(columns=["mean"]).min(axis=1, skipna=True)
    wide["worst_site"] = wide.drop(columns=["mean", "worst"]).idxmin(axis=1, skipna=True)
    return wide.reset_index()


def delong_table(arms: list[ArmResult], baseline: str = CLINICAL_BASELINE) -> pd.DataFrame:
    """DeLong test of every method against ``baseline`` on the same patients (same experiment, seed, test set)."""
    from common.metrics import delong_test

    index = {(a.experiment, a.seed, a.method): a for a in arms}
    out = []
    for arm in arms:
        if arm.method == baseline:
            continue
        base = index.get((arm.experiment, arm.seed, baseline))
        if base is None:
            continue
        for site, pred in arm.predictions.items():
            bpred = base.predictions.get(site)
            if not bpred:
                continue
            common_ids = [i for i in pred["ids"] if i in set(bpred["ids"])]
            if len(common_ids) < 10:
                continue
            pos = {i: k for k, i in enumerate(pred["ids"])}
            bpos = {i: k for k, i in enumerate(bpred["ids"])}
            y = np.array([pred["y"][pos[i]] for i in common_ids], dtype=float)
            if y.min() == y.max():
                continue
            s1 = np.array([pred["score"][pos[i]] for i in common_ids], dtype=float)
            s2 = np.array([bpred["score"][bpos[i]] for i in common_ids], dtype=float)
            try:
                res = delong_test(y, s1, s2)
            except Exception as exc:  # noqa: BLE001 - a degenerate comparison is reported, not fatal
                res = {"auc1": math.nan, "auc2": math.nan, "z": math.nan, "p": math.nan, "error": str(exc)}
            out.append({"experiment": arm.experiment, "seed": arm.seed, "test_site": site, "method": arm.method,
                        "auroc": res.get("auc1"), "auroc_baseline": res.get("auc2"), "z": res.get("z"),
                        "p": res.get("p"), "n": len(common_ids)})
    return pd.DataFrame(out)


def site_matrix(part: pd.DataFrame, exclude: tuple[str, ...], metric: str = "auroc") -> str:
    """Methods x internal test sites, mean over seeds."""
    part = part[(part["metric"] == metric) & ~part["test_site"].isin([e for e in exclude if e])]
    if part.empty:
        return "_no internal test splits_"
    wide = part.groupby(["method", "test_site"])["value"].mean().unstack("test_site")
    cols = list(wide.columns)
    body = [[str(m)] + [fmt_num(wide.loc[m, c]) for c in cols] for m in wide.index]
    return md_table(["method"] + [str(c) for c in cols], body)


def fmt_num(x: Any) -> str:
    """``0.123`` or ``n/a`` for anything not finite."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "n/a"
    return f"{x:.3f}" if np.isfinite(x) else "n/a"


def fmt_p(x: Any) -> str:
    """A p-value: ``<0.001``, ``0.042`` or ``n/a``."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "n/a"
    if not np.isfinite(x):
        return "n/a"
    return "<0.001" if x < 1e-3 else f"{x:.3f}"
