"""Federated vs pooled vs local models at every held-out site: paired AUROC differences with CIs.

For each held-out experiment (``heldout-<SITE>``, ``mrp-heldout-<COLLECTION>``) and seed, every federated
arm (method ``fed*``) is compared on the SAME held-out patients with the pooled arm, the mean of the local
models (``local-*``), the best local model and each local model, by one paired stratified bootstrap
(``common.paired_bootstrap``) shared by all contrasts. "Best local" is picked in hindsight on the
held-out labels: an oracle upper bound of "train at one other site", not a model anyone could choose.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from common.paired_bootstrap import DEFAULT_N_BOOT, contrast_ci, paired_auroc_draws
from simulation.arm_result import ArmResult
from simulation.summaries import fmt_num, fmt_p, heldout_site, md_table

#: Comparators of every federated arm (plus one ``local-<SITE>`` row per local model).
COMPARATORS: tuple[str, ...] = ("pooled", "mean-local", "best-local")

#: |federated - pooled| AUROC the issue's target allows at every held-out site.
TARGET_GAP = 0.01
#: ... and on the semi-synthetic image experiments (held-out sites >= 150 patients, >= 3 seeds).
SEMI_SYNTHETIC_GAP = 0.02


def _aligned(arms: list[ArmResult], site: str) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """Labels (N,), scores (k, N) in ``arms`` order on the patients every arm scored at ``site``."""
    preds = [a.predictions.get(site) for a in arms]
    if any(not p for p in preds):
        return None
    others = [set(p["ids"]) for p in preds[1:]]  # built once, not per patient
    ids = [i for i in preds[0]["ids"] if all(i in o for o in others)]
    rows, y = [], None
    for p in preds:
        pos = {pid: k for k, pid in enumerate(p["ids"])}
        rows.append([p["score"][pos[i]] for i in ids])
        y = np.array([p["y"][pos[i]] for i in ids], dtype=float) if y is None else y
    if y is None or y.size == 0 or y.min() == y.max():
        return None
    return y, np.asarray(rows, dtype=float), ids


def _contrasts(roles: list[ArmResult], point: np.ndarray, pooled: str
               ) -> dict[tuple[str, str], list[tuple[str, str, np.ndarray, np.ndarray, int]]]:
    """``{(federated, comparator): [(seed, comparator model, w_fed, w_other, n_local)]}`` over model rows."""
    k = len(roles)
    index = {(a.seed, a.method): j for j, a in enumerate(roles)}
    out: dict[tuple[str, str], list[tuple[str, str, np.ndarray, np.ndarray, int]]] = {}
    for seed in sorted({a.seed for a in roles}):
        if (seed, pooled) not in index:
            continue
        locs = sorted(m for s, m in index if s == seed and m.startswith("local-"))
        loc_idx = [index[(seed, m)] for m in locs]
        targets = [("pooled", pooled, [index[(seed, pooled)]])]
        if loc_idx:
            best = max(loc_idx, key=lambda j: point[j])
            targets += [("mean-local", f"mean of {len(loc_idx)}", loc_idx), ("best-local", roles[best].method, [best])]
            targets += [(m, m, [index[(seed, m)]]) for m in locs]
        for fed in sorted(m for s, m in index if s == seed and m.startswith("fed")):
            for comparator, label, idx in targets:
                out.setdefault((fed, comparator), []).append(
                    (str(seed), label, _unit(k, [index[(seed, fed)]]), _unit(k, idx), len(loc_idx)))
    return out


def _experiment_rows(group: list[ArmResult], pooled: str, n_boot: int) -> list[dict[str, Any]]:
    """Tidy comparison rows of one held-out experiment: one per seed and one ``seed='all'`` (mean over seeds)."""
    exp = group[0].experiment
    site = heldout_site(exp)
    roles = [a for a in group if a.method.startswith(("fed", "local-")) or a.method == pooled]
    aligned = _aligned(roles, site) if site else None
    if aligned is None:
        return []
    y, scores, _ = aligned
    if not np.isfinite(scores).all():  # a failed arm's NaN scores: no comparison rather than a crashed report
        return []
    # one set of draws (the held-out patients are the same for every seed) shared by every model and seed
    point, draws = paired_auroc_draws(y, scores, n_boot=n_boot, seed=0)
    rows = []
    for (fed, comparator), items in sorted(_contrasts(roles, point, pooled).items()):
        labels = "/".join(sorted({it[1] for it in items}))
        mean_item = ("all", labels, np.mean([it[2] for it in items], axis=0), np.mean([it[3] for it in items], axis=0),
                     float(np.mean([it[4] for it in items])))
        for seed, label, w_fed, w_other, n_local in items + [mean_item]:
            rows.append({"experiment": exp, "test_site": site, "seed": seed, "federated": fed,
                         "comparator": comparator, "comparator_model": label, "auroc_federated": float(w_fed @ point),
                         "auroc_comparator": float(w_other @ point), **contrast_ci(point, draws, w_fed - w_other),
                         "n": int(y.size), "n_pos": int(y.sum()), "n_local": n_local})
    return rows


def _unit(k: int, idx: list[int]) -> np.ndarray:
    """Weights averaging the models ``idx`` out of ``k``."""
    w = np.zeros(k)
    w[idx] = 1.0 / len(idx)
    return w


def heldout_comparisons(arms: list[ArmResult], pooled: str, n_boot: int = DEFAULT_N_BOOT) -> pd.DataFrame:
    """Per (experiment, seed or 'all', federated method, comparator): AUROCs, paired difference, CI and p."""
    groups: dict[str, list[ArmResult]] = {}
    for a in arms:
        groups.setdefault(a.experiment, []).append(a)
    return pd.DataFrame([r for exp in sorted(groups) for r in _experiment_rows(groups[exp], pooled, n_boot)])


def summarise(comp: pd.DataFrame) -> pd.DataFrame:
    """The mean-over-seeds rows (``seed == 'all'``), sorted by experiment, federated method and comparator."""
    keys = ["experiment", "test_site", "federated", "comparator"]
    return comp[comp["seed"].astype(str) == "all"].sort_values(keys, kind="stable").reset_index(drop=True)


def _diff_cell(r: Any) -> str:
    """``+0.012 (-0.020 to +0.041), p 0.45``."""
    if r is None or not np.isfinite(r.difference):
        return "n/a"
    return f"{r.difference:+.3f} ({r.ci_low:+.3f} to {r.ci_high:+.3f}), p {fmt_p(r.p)}"


def comparison_section(comp: pd.DataFrame, pooled: str, target_gap: float = TARGET_GAP) -> list[str]:
    """report.md lines: per federated method a per-site table, mean / worst site (against ``target_gap``) and
    where federation helps most."""
    if comp.empty:
        return []
    summ = summarise(comp)
    n_boot = int(comp["n_boot"].min())
    lines = [f"## Federated vs pooled (`{pooled}`) and local models at each held-out site", "",
             f"Paired stratified bootstrap over the held-out patients ({n_boot} resamples, the same draws for every "
             "model and seed): differences are means over seeds, their 95 % CI and two-sided p come from the "
             "resampled seed-mean difference. Mean local = mean AUROC of the local models "
             "(`local-*`) trained at the other sites; best local = the one best on the held-out labels, picked in "
             "hindsight (an oracle, not a selectable model). All comparisons per seed: `heldout_comparisons.csv`.", ""]
    for fed, part in summ.groupby("federated", sort=True):
        body, by_site = [], {}
        for exp, g in part.groupby("experiment", sort=True):
            r = {c: row for c, row in zip(g["comparator"], g.itertuples())}
            p = r.get("pooled")
            by_site[exp] = r
            body.append([str(p.test_site), f"{int(p.n)} ({int(p.n_pos)})", fmt_num(p.auroc_comparator),
                         fmt_num(p.auroc_federated),
                         fmt_num(r["mean-local"].auroc_comparator) if "mean-local" in r else "n/a",
                         (f"{fmt_num(r['best-local'].auroc_comparator)} ({r['best-local'].comparator_model})"
                          if "best-local" in r else "n/a"),
                         _diff_cell(p), _diff_cell(r.get("mean-local")), _diff_cell(r.get("best-local"))])
        lines += [f"### `{fed}`", "", md_table(["held-out", "n (pCR)", "pooled", "federated", "mean local",
                                                 "best local (oracle)", "fed - pooled (95 % CI)",
                                                 "fed - mean local (95 % CI)", "fed - best local (95 % CI)"], body), ""]
        lines += _site_summary(fed, by_site, target_gap)
    return lines


def _site_summary(fed: str, by_site: dict[str, dict[str, Any]], target_gap: float) -> list[str]:
    """Mean and worst held-out institution (``heldout-*`` folds; collection folds are not sites)."""
    sites = {e: r for e, r in by_site.items() if e.startswith("heldout-") and "pooled" in r}
    if not sites:
        return []
    gap = {r["pooled"].test_site: r["pooled"].difference for r in sites.values()}
    aucs = {r["pooled"].test_site: (r["pooled"].auroc_federated, r["pooled"].auroc_comparator) for r in sites.values()}
    worst_gap = min(gap, key=gap.get)
    within = sum(v >= -target_gap for v in gap.values())  # the target is "no worse than pooled by more than"
    fed_auc = {s: a for s, (a, _) in aucs.items()}
    pool_auc = {s: b for s, (_, b) in aucs.items()}
    lines = [f"- `{fed}` over {len(sites)} held-out institutions: mean AUROC {np.mean(list(fed_auc.values())):.3f} "
             f"(pooled {np.mean(list(pool_auc.values())):.3f}); worst site {min(fed_auc, key=fed_auc.get)} "
             f"{min(fed_auc.values()):.3f} (pooled's worst: {min(pool_auc, key=pool_auc.get)} "
             f"{min(pool_auc.values()):.3f}).",
             f"- fed - pooled: mean {np.mean(list(gap.values())):+.3f}, worst site {worst_gap} "
             f"{_diff_cell(sites[f'heldout-{worst_gap}']['pooled'])}; fed >= pooled - {target_gap} at "
             f"{within}/{len(gap)} sites" + (" (target met)" if within == len(gap) else " (target NOT met)") + "."]
    helps = {r["mean-local"].test_site: r["mean-local"] for r in sites.values() if "mean-local" in r}
    if helps:
        top = max(helps, key=lambda s: helps[s].difference)
        low = min(helps, key=lambda s: helps[s].difference)
        lines.append(f"- Federation helps most at **{top}**: fed - mean local {_diff_cell(helps[top])}; least at "
                     f"{low}: {_diff_cell(helps[low])}; mean over sites "
                     f"{np.mean([h.difference for h in helps.values()]):+.3f}.")
    return lines + [""]


__all__ = ["COMPARATORS", "SEMI_SYNTHETIC_GAP", "TARGET_GAP", "comparison_section", "heldout_comparisons", "summarise"]
