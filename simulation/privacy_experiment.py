"""``simulation/run.py --experiment privacy``: federated fusion model at several DP budgets, held-out AUROC vs epsilon.

Same cohort, sites, folds and federated arm as the image experiments (``simulation.arms``); each arm is
FedAvg with the sites training under DP-SGD at target epsilon (fixed delta) over the whole run, plus the
no-DP arm. Evaluated at the held-out institution (never trained on, never used for selection). Writes
``results.csv`` (tidy rows, ``method`` = ``fedavg-dp-eps<E>`` / ``fedavg-nodp``; extra rows
``metric=epsilon`` with the largest epsilon any site actually spent) and ``report.md`` with the plot.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

#: Budgets of the experiment (None = no DP); delta fixed.
EPSILONS: tuple[float | None, ...] = (1.0, 3.0, 8.0, None)
DELTA = 1e-5


@dataclass(frozen=True)
class PrivacyExperimentConfig:
    """What the privacy experiment runs (quick: the quick image preset, 1 seed)."""

    epsilons: tuple[float | None, ...] = EPSILONS
    delta: float = DELTA
    max_grad_norm: float = 1.0
    seeds: tuple[int, ...] = (0,)


def method_name(eps: float | None) -> str:
    """``fedavg-dp-eps3`` / ``fedavg-dp-eps0.5`` / ``fedavg-nodp``."""
    return "fedavg-nodp" if eps is None else f"fedavg-dp-eps{eps:g}"


def _dp_arm(cfg, sites, fold, seed: int, eps: float | None, pcfg: PrivacyExperimentConfig, work: Path):
    """One federated arm (``simulation.arms`` helpers) with the sites' DP at ``eps``; (arm, max epsilon spent)."""
    from common.bundle import load_bundle
    from simulation.arm_result import ArmResult
    from simulation.arms import _evaluate_arm, _model_cfg, _network_scorer, _record_training
    from simulation.federated import run_federated, simulation_policy

    method = method_name(eps)
    arm = ArmResult(arm_id=f"{fold.name}__{method}__s{seed}", experiment="privacy", method=method, seed=seed,
                    train_sites=sorted(fold.train))
    _record_training(arm, fold, sites, list(fold.train))
    train_cfg = replace(cfg.train, seed=seed, epochs=cfg.local_epochs, prox_mu=0.0)
    model_cfg = _model_cfg(cfg, "fusion")
    extra = {} if eps is None else {"dp": True, "dp-epsilon": float(eps), "dp-delta": pcfg.delta,
                                    "dp-max-grad-norm": pcfg.max_grad_norm}
    policy = simulation_policy(max_epsilon=max(8.0, eps or 0.0), delta=pcfg.delta)
    result = run_federated({s: sites[s].cache for s in fold.train}, work / arm.arm_id, strategy="fedavg",
                           num_rounds=cfg.rounds, model_cfg=model_cfg, train_cfg=train_cfg,
                           local_epochs=cfg.local_epochs, seed=seed, extra_config=extra, policy=policy)
    bundle = load_bundle(result.bundle_dir)
    arm.threshold = float(bundle.threshold)
    arm.history = [dict(h) for h in result.history]
    spent = [max(h["epsilon"].values()) for h in result.history if h.get("epsilon")]
    _evaluate_arm(arm, fold, sites, _network_scorer(bundle.model, model_cfg, cfg.train, sites), cfg)
    return arm, (max(spent) if spent else float("nan"))


#: Evaluation protections compared by :func:`eval_cost` (name, EvaluationPolicy overrides).
EVAL_SETTINGS: tuple[tuple[str, dict], ...] = (
    ("bins20", {"score_bins": 20, "eval_epsilon": 0.0}),
    ("bins20+noise1", {"score_bins": 20, "eval_epsilon": 1.0}),
    ("bins50+noise1", {"score_bins": 50, "eval_epsilon": 1.0}),
    ("bins20+noise0.5", {"score_bins": 20, "eval_epsilon": 0.5}),
)


def eval_cost(per_site: dict[str, tuple[np.ndarray, np.ndarray]], reps: int = 200, seed: int = 0,
              min_per_class: int = 5) -> pd.DataFrame:
    """Pooled AUROC from the sites' protected counts vs the exact pooled AUROC, per protection setting.

    ``per_site``: {site: (labels, scores)} of the evaluated split. Rows: setting, exact, mean |error|,
    95th percentile |error|, sites withheld (below ``min_per_class``).
    """
    from client.policy import EvaluationPolicy
    from client.private_eval import protect
    from common.metrics_counts import auroc_from_counts

    ys = np.concatenate([y for y, _ in per_site.values()])
    ss = np.concatenate([s for _, s in per_site.values()])
    from sklearn.metrics import roc_auc_score

    exact = float(roc_auc_score(ys, ss))
    rng = np.random.default_rng(seed)
    out = []
    for name, over in EVAL_SETTINGS:
        pol = EvaluationPolicy(min_patients_per_class=min_per_class, **over)
        errs, withheld = [], 0
        for _ in range(reps if pol.eval_epsilon > 0 else 1):
            total = None
            for y, s in per_site.values():
                r = protect(y, s, pol, int(rng.integers(2**62)))
                withheld += int(r.withheld)
                total = r.counts if total is None else total + r.counts
            errs.append(abs(float(auroc_from_counts(total)) - exact))
        errs = np.asarray(errs)
        ok = errs[np.isfinite(errs)]
        out.append({"setting": name, "exact_pooled_auroc": exact,
                    "mean_abs_error": float(ok.mean()) if len(ok) else float("nan"),
                    "p95_abs_error": float(np.percentile(ok, 95)) if len(ok) else float("nan"),
                    "undefined": int(len(errs) - len(ok)),
                    "sites_withheld": withheld // max(1, len(errs)), "sites": len(per_site),
                    "patients": int(len(ys))})
    return pd.DataFrame(out)


def md_table(df: pd.DataFrame) -> str:
    """A markdown table (floats to 4 decimals) without optional dependencies."""
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    rows = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    rows += ["| " + " | ".join(cell(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join(rows)


def seed_means(df: pd.DataFrame, heldout: str) -> pd.DataFrame:
    """Per method: mean held-out AUROC over seeds, its range, the mean of the per-seed 95 % CI bounds and the
    mean epsilon spent; ordered by epsilon (no-DP last)."""
    auc = df[(df.metric == "auroc") & (df.test_site == heldout)]
    eps = df[df.metric == "epsilon"].groupby("method")["value"].mean()
    g = auc.groupby("method")
    out = pd.DataFrame({"epsilon_spent": eps.reindex(g.size().index), "seeds": g.size(),
                        "auroc_mean": g["value"].mean(), "auroc_min": g["value"].min(), "auroc_max": g["value"].max(),
                        "ci_low_mean": g["ci_low"].mean(), "ci_high_mean": g["ci_high"].mean()})
    out["order"] = out["epsilon_spent"].fillna(np.inf)
    return out.sort_values("order").drop(columns="order")


def _plot(df: pd.DataFrame, path: Path, heldout: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.plots import save_figure

    m = seed_means(df, heldout)
    dp = m[m.index != "fedavg-nodp"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    y = dp["auroc_mean"].to_numpy()
    ax.errorbar(dp["epsilon_spent"].to_numpy(), y, yerr=[y - dp["ci_low_mean"].to_numpy(), dp["ci_high_mean"].to_numpy() - y],
                marker="o", capsize=3, label="FedAvg + DP-SGD")
    for method, r in dp.iterrows():  # every seed's value, so a reader sees the spread between seeds
        pts = df[(df.metric == "auroc") & (df.test_site == heldout) & (df.method == method)]["value"]
        ax.scatter([r["epsilon_spent"]] * len(pts), pts, s=10, color="C0", alpha=0.4)
    if "fedavg-nodp" in m.index:
        ax.axhline(m.loc["fedavg-nodp", "auroc_mean"], color="grey", ls="--", label="FedAvg, no DP")
    ax.axhline(0.5, color="k", lw=0.5)
    ax.set_xscale("log")
    ticks = sorted(x for x in dp["epsilon_spent"].round(2).unique() if np.isfinite(x) and x > 0)
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel(f"epsilon spent (delta = {DELTA:g}; log scale)")
    ax.set_ylabel(f"AUROC at held-out {heldout}")
    ax.set_title("mean over seeds; bars: mean per-seed 95 % CI", fontsize=8)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    plt.close(fig)


def run_privacy_experiment(cfg, out: Path, pcfg: PrivacyExperimentConfig | None = None,
                           progress: Callable[[str], None] = print) -> Path:
    """Prepare the sites (image experiment config ``cfg``), run every budget, write results.csv + report.md."""
    from simulation.folds import load_sites, make_folds
    from simulation.site_prep import prepare_sites

    pcfg = pcfg or PrivacyExperimentConfig(seeds=tuple(cfg.seeds))
    out.mkdir(parents=True, exist_ok=True)
    caches = prepare_sites(cfg, out, progress=progress)
    sites = load_sites(caches, cfg)
    fold = next(f for f in make_folds(sites, cfg) if f.heldout_name)
    rows, t0 = [], time.perf_counter()
    for seed in pcfg.seeds:
        for eps in pcfg.epsilons:
            t = time.perf_counter()
            arm, spent = _dp_arm(cfg, sites, fold, seed, eps, pcfg, out / "work")
            if eps is None:  # cost of protected evaluation: the no-DP model's scores at each training site
                per_site = {s: (np.asarray(arm.predictions[s]["y"]), np.asarray(arm.predictions[s]["score"]))
                            for s in fold.train if s in arm.predictions}
                eval_cost(per_site, min_per_class=1).to_csv(out / "eval_cost.csv", index=False)
            rows += [{**r, "experiment": "privacy"} for r in arm.rows]
            rows.append({"experiment": "privacy", "method": arm.method, "train_sites": ";".join(arm.train_sites),
                         "test_site": "all", "metric": "epsilon", "value": spent, "ci_low": np.nan,
                         "ci_high": np.nan, "seed": seed})
            auc = [r["value"] for r in arm.rows if r["metric"] == "auroc" and r["test_site"] == fold.heldout_name]
            progress(f"{arm.method}: held-out AUROC {auc[0] if auc else float('nan'):.3f}, epsilon spent {spent:.2f} "
                     f"({time.perf_counter() - t:.0f} s)")
    cols = ["experiment", "method", "train_sites", "test_site", "metric", "value", "ci_low", "ci_high", "seed"]
    df = pd.DataFrame(rows)
    df["train_sites"] = df["train_sites"].map(lambda v: v if isinstance(v, str) else ";".join(v))
    df = df[cols]
    df.to_csv(out / "results.csv", index=False)
    _plot(df, out / "auroc_vs_epsilon.png", fold.heldout_name)
    return _report(df, out, fold, cfg, pcfg, time.perf_counter() - t0)


def _report(df: pd.DataFrame, out: Path, fold, cfg, pcfg: PrivacyExperimentConfig, wall: float) -> Path:
    held = df[(df.metric == "auroc") & (df.test_site == fold.heldout_name)]
    eps = df[df.metric == "epsilon"].set_index(["method", "seed"])["value"]
    lines = [f"# fedpcr — privacy-utility experiment (semi-synthetic embedded cohort)", "",
             f"FedAvg of the fusion model on {', '.join(fold.train)}; held-out institution {fold.heldout_name} "
             f"(never trained on, never used for selection). {cfg.rounds} rounds x {cfg.local_epochs} local epochs; "
             f"DP-SGD at every site (Opacus, Poisson sampling, clip {pcfg.max_grad_norm}, delta {pcfg.delta:g}), "
             "noise calibrated by each site so the planned rounds spend its budget; RDP accountant at the site.", "",
             "| method | seed | target epsilon | epsilon spent (max over sites) | held-out AUROC [95% CI] |",
             "|---|---|---|---|---|"]
    for _, r in held.iterrows():
        target = r.method.split("eps")[-1] if "eps" in r.method else "-"
        lines.append(f"| {r.method} | {r.seed} | {target} | {eps.get((r.method, r.seed), float('nan')):.2f} | "
                     f"{r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}] |")
    means = seed_means(df, fold.heldout_name)
    if len(pcfg.seeds) > 1:
        lines += ["", f"Mean over {len(pcfg.seeds)} seeds:", "",
                  "| method | epsilon spent (mean) | held-out AUROC mean | min-max over seeds | mean per-seed 95% CI |",
                  "|---|---|---|---|---|"]
        lines += [f"| {m} | {r.epsilon_spent:.2f} | {r.auroc_mean:.3f} | {r.auroc_min:.3f}-{r.auroc_max:.3f} | "
                  f"[{r.ci_low_mean:.3f}, {r.ci_high_mean:.3f}] |" for m, r in means.iterrows()]
    lines += ["", "![held-out AUROC vs epsilon](auroc_vs_epsilon.png)", ""]
    if (out / "eval_cost.csv").exists():
        cost = pd.read_csv(out / "eval_cost.csv")
        lines += ["## Cost of protected evaluation", "",
                  "Pooled AUROC from the sites' protected counts vs the exact pooled AUROC (no-DP model, each "
                  "training site's internal test patients; minimum per class lowered to 1 so no site is withheld; "
                  "noise redrawn 200 times).", "", md_table(cost), ""]
    lines += [
              f"Wall time {wall:.0f} s. Semi-synthetic data: the numbers show the mechanics and the direction of "
              "the privacy cost, not clinical performance.", "",
              "```json", json.dumps({"epsilons": [e for e in pcfg.epsilons], "delta": pcfg.delta,
                                     "seeds": list(pcfg.seeds)}), "```"]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


__all__ = ["EVAL_SETTINGS", "eval_cost", "md_table", "EPSILONS", "PrivacyExperimentConfig", "method_name",
           "run_privacy_experiment", "seed_means"]
