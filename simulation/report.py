"""Experiment results -> tidy ``results.csv``, ``cross_site.json``, ``report.md`` and PNG plots.

Every table and plot is made from :class:`ArmResult` objects (tidy rows + the per-patient scores a
single machine keeps for ROC curves and DeLong tests). Nothing here trains anything.
"""

from __future__ import annotations

import json
import math
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

#: Columns of results.csv (docs/CONTRACTS.md section 6).
ROW_COLUMNS: tuple[str, ...] = (
    "experiment", "method", "train_sites", "test_site", "metric", "value", "ci_low", "ci_high", "seed",
)
#: Metrics shown in the MRP-Table-1-style tables, in this order.
TABLE_METRICS: tuple[str, ...] = ("auroc", "auprc", "sensitivity", "specificity", "ppv", "npv")
#: The baseline every other method is DeLong-tested against (when present).
CLINICAL_BASELINE = "clinical-lr"
#: Name of the pooled internal test set (concatenation of every training site's internal test split).
POOLED = "pooled"
#: Libraries whose versions are written next to every report.
LIBRARIES: tuple[str, ...] = ("numpy", "pandas", "scipy", "sklearn", "torch", "monai", "flwr", "SimpleITK",
                              "pydicom", "matplotlib")


@dataclass
class ArmResult:
    """One trained model (method x experiment x seed) and everything measured on it.

    ``predictions[test_site] = {"ids": [...], "y": [...], "score": [...]}`` stays on this machine; only
    ``rows`` go into results.csv. ``train_patients`` records who trained (for leakage audits).
    """

    arm_id: str
    experiment: str
    method: str
    seed: int
    train_sites: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    predictions: dict[str, dict[str, list]] = field(default_factory=dict)
    train_patients: dict[str, list[str]] = field(default_factory=dict)
    threshold: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def save(self, path: Path) -> None:
        """Write as JSON (atomically: a crash never leaves a half-written arm that resumes as finished)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), default=_json_default))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> "ArmResult":
        """Read an arm written by :meth:`save`."""
        return cls(**json.loads(Path(path).read_text()))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# ---------------------------------------------------------------- rows


def metric_rows(experiment: str, method: str, train_sites: Iterable[str], test_site: str, seed: int,
                report: dict[str, dict[str, float]], n: int | None = None,
                n_pos: int | None = None) -> list[dict[str, Any]]:
    """Tidy rows from a ``common.metrics.binary_report`` dict (plus ``n`` / ``n_pos`` count rows)."""
    base = {"experiment": experiment, "method": method, "train_sites": ";".join(sorted(train_sites)),
            "test_site": test_site, "seed": int(seed)}
    rows = [{**base, "metric": name, "value": _f(v.get("value")), "ci_low": _f(v.get("ci_low")),
             "ci_high": _f(v.get("ci_high"))} for name, v in report.items()]
    for name, value in (("n", n), ("n_pos", n_pos)):
        if value is not None and name not in report:
            rows.append({**base, "metric": name, "value": float(value), "ci_low": math.nan, "ci_high": math.nan})
    return rows


def _f(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def evaluate_predictions(y: np.ndarray, scores: np.ndarray, threshold: float, *, n_boot: int = 1000,
                         seed: int = 0) -> dict[str, dict[str, float]]:
    """``common.metrics.binary_report`` at a fixed threshold; AUROC/AUPRC are NaN when one class is absent."""
    from common.metrics import binary_report

    return binary_report(np.asarray(y, dtype=float), np.asarray(scores, dtype=float), threshold,
                         n_boot=n_boot, seed=seed)


def results_frame(arms: Iterable[ArmResult]) -> pd.DataFrame:
    """All arms' rows as one tidy DataFrame with exactly :data:`ROW_COLUMNS`."""
    rows = [r for arm in arms for r in arm.rows]
    frame = pd.DataFrame(rows, columns=list(ROW_COLUMNS))
    return frame.sort_values(["experiment", "method", "test_site", "seed", "metric"], kind="stable",
                             ignore_index=True)


def write_results_csv(arms: Iterable[ArmResult], path: Path) -> Path:
    """Write results.csv (tidy, one row per experiment x method x test set x metric x seed)."""
    results_frame(arms).to_csv(path, index=False)
    return path


# ---------------------------------------------------------------- cross-site matrix


def model_owner(experiment: str, method: str) -> str:
    """Cross-site key for a model: its method, plus the held-out site it never saw when there is one."""
    return method if not is_heldout(experiment) else f"{method} [{experiment}]"


def is_heldout(experiment: str) -> bool:
    """Held-out experiments carry ``heldout`` in their name (CONTRACTS section 6)."""
    return "heldout" in experiment


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


# ---------------------------------------------------------------- summaries


def summary_table(frame: pd.DataFrame, metrics: tuple[str, ...] = TABLE_METRICS) -> pd.DataFrame:
    """Mean over seeds of value / ci_low / ci_high per (experiment, method, test_site, metric)."""
    keys = ["experiment", "method", "test_site", "metric"]
    part = frame[frame["metric"].isin(metrics + ("n", "n_pos"))]
    return part.groupby(keys, sort=False)[["value", "ci_low", "ci_high"]].mean().reset_index()


def _cell(value: float, lo: float, hi: float) -> str:
    if value is None or not np.isfinite(value):
        return "n/a"
    if np.isfinite(lo) and np.isfinite(hi):
        return f"{value:.3f} ({lo:.3f}-{hi:.3f})"
    return f"{value:.3f}"


def _md_table(header: list[str], body: list[list[str]]) -> str:
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
    return _md_table(["method", "n (pCR)"] + [m.upper() if m in ("ppv", "npv") else m for m in TABLE_METRICS],
                     body)


def heldout_summary(frame: pd.DataFrame, metric: str = "auroc") -> pd.DataFrame:
    """Per method: the metric at every held-out institution, their mean and the worst site."""
    part = frame[frame["experiment"].map(is_heldout) & (frame["metric"] == metric)]
    part = part[part["test_site"] != POOLED]
    # The held-out site is the test site named by the experiment ("heldout-<site>...").
    part = part[[_heldout_site(e) == s for e, s in zip(part["experiment"], part["test_site"])]]
    if part.empty:
        return pd.DataFrame()
    wide = part.groupby(["method", "test_site"])["value"].mean().unstack("test_site")
    wide["mean"] = wide.mean(axis=1, skipna=True)
    wide["worst"] = wide.drop(columns=["mean"]).min(axis=1, skipna=True)
    wide["worst_site"] = wide.drop(columns=["mean", "worst"]).idxmin(axis=1, skipna=True)
    return wide.reset_index()


def _heldout_site(experiment: str) -> str:
    """``heldout-DUKE`` -> ``DUKE``; ``mrp-heldout-ISPY2`` -> ``ISPY2``; others -> ''."""
    if "heldout-" not in experiment:
        return ""
    return experiment.split("heldout-", 1)[1]


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


# ---------------------------------------------------------------- plots


def _pooled_prediction(arms: list[ArmResult], experiment: str, method: str, site: str) -> tuple[np.ndarray, np.ndarray]:
    ys, ss = [], []
    for a in arms:
        if a.experiment == experiment and a.method == method and site in a.predictions:
            ys.append(np.asarray(a.predictions[site]["y"], dtype=float))
            ss.append(np.asarray(a.predictions[site]["score"], dtype=float))
    if not ys:
        return np.array([]), np.array([])
    # Several seeds: the first seed's curve (seeds re-split the same patients, so curves are comparable).
    return ys[0], ss[0]


def write_plots(arms: list[ArmResult], out_dir: Path) -> list[Path]:
    """ROC per held-out site, decision curves, calibration (``common.plots``) and per-round federated AUROC."""
    from common.plots import plot_calibration, plot_decision_curve, plot_roc

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    targets = sorted({(a.experiment, _heldout_site(a.experiment)) for a in arms if is_heldout(a.experiment)})
    if not targets:  # no held-out experiment: plot the pooled internal test set instead
        targets = sorted({(a.experiment, POOLED) for a in arms if POOLED in a.predictions})
    methods = sorted({a.method for a in arms if not a.method.startswith("local-")})
    for experiment, site in targets:
        curves = {}
        for method in methods:
            y, s = _pooled_prediction(arms, experiment, method, site)
            if len(y) and 0 < y.sum() < len(y):
                curves[method] = (y, s)
        if not curves:
            continue
        tag = _safe(f"{experiment}_{site}")
        band = CLINICAL_BASELINE if CLINICAL_BASELINE in curves else None
        what = f"{site} ({experiment}, seed {min(a.seed for a in arms if a.experiment == experiment)})"
        written.append(plot_roc(out_dir / f"roc_{tag}.png", curves, title=f"ROC, test {what}", band=band,
                                n_boot=200))
        written.append(plot_decision_curve(out_dir / f"decision_{tag}.png", curves, title=f"Decision curve, {what}"))
        written.append(plot_calibration(out_dir / f"calibration_{tag}.png", curves, title=f"Calibration, {what}",
                                        n_bins=5))
    fed = [a for a in arms if a.history]
    if fed:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 4.5))
        ax = fig.subplots()
        for a in fed:
            pts = [(h.get("round"), h.get("val_auroc", h.get("pooled_val_auroc"))) for h in a.history]
            pts = [(r, v) for r, v in pts if r is not None and v is not None and np.isfinite(v)]
            if pts:
                ax.plot(*zip(*pts), marker=".", label=f"{a.method} {a.experiment} s{a.seed}")
        ax.set(xlabel="round", ylabel="pooled validation AUROC (summed counts)", title="Federated training")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out_dir / "federated_rounds.png", dpi=110)
        written.append(out_dir / "federated_rounds.png")
    return written


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


# ---------------------------------------------------------------- report


def library_versions() -> dict[str, str]:
    """Versions of python and the libraries that produced the numbers."""
    from importlib import import_module

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in LIBRARIES:
        try:
            out[name] = str(getattr(import_module(name), "__version__", "?"))
        except Exception:  # noqa: BLE001 - a missing optional library is reported as such
            out[name] = "not installed"
    return out


def write_report(arms: list[ArmResult], out_dir: Path, *, title: str, config: dict[str, Any],
                 semi_synthetic: bool, notes: list[str] | None = None) -> Path:
    """Write results.csv, cross_site.json, config.json, versions.json, plots/ and report.md; return report.md."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    arms = sorted(arms, key=lambda a: (a.experiment, a.method, a.seed))
    write_results_csv(arms, out_dir / "results.csv")
    (out_dir / "cross_site.json").write_text(json.dumps(cross_site(arms), indent=1, default=_json_default))
    versions = library_versions()
    (out_dir / "config.json").write_text(json.dumps(config, indent=1, default=_json_default))
    (out_dir / "versions.json").write_text(json.dumps(versions, indent=1))
    plots = write_plots(arms, out_dir / "plots")
    frame = results_frame(arms)
    md = _report_markdown(arms, frame, title=title, config=config, versions=versions, plots=plots,
                          out_dir=out_dir, semi_synthetic=semi_synthetic, notes=notes or [])
    path = out_dir / "report.md"
    path.write_text(md)
    return path


def _report_markdown(arms: list[ArmResult], frame: pd.DataFrame, *, title: str, config: dict[str, Any],
                     versions: dict[str, str], plots: list[Path], out_dir: Path, semi_synthetic: bool,
                     notes: list[str]) -> str:
    L: list[str] = [f"# {title}", ""]
    if semi_synthetic:
        L += ["> **SEMI-SYNTHETIC DATA.** Images come from the embedded generated cohort (real DICOM, synthetic",
              "> voxels with a planted signal). These numbers test the pipeline and compare arms on a known",
              "> signal; they are NOT clinical performance estimates.", ""]
    else:
        L += ["> Real data: numbers below are measured on the public tables / collections named in the configuration.",
              ""]
    seeds = sorted({a.seed for a in arms})
    experiments = sorted({a.experiment for a in arms})
    L += ["## Summary", "",
          f"- experiments: {', '.join(experiments)}",
          f"- methods: {', '.join(sorted({a.method for a in arms}))}",
          f"- seeds: {', '.join(map(str, seeds))}; values are means over seeds, CIs are bootstrap 95 % "
          "intervals averaged over seeds",
          f"- rows: {len(frame)} in `results.csv`; cross-site matrix in `cross_site.json`", ""]
    for note in notes:
        L.append(f"- {note}")
    if notes:
        L.append("")

    hs = heldout_summary(frame)
    if not hs.empty:
        L += ["## Held-out institutions (AUROC; never used for training, model selection, thresholds or "
              "normalisation)", ""]
        site_cols = [c for c in hs.columns if c not in ("method", "mean", "worst", "worst_site")]
        body = [[str(r["method"])] + [_num(r[c]) for c in site_cols] + [_num(r["mean"]), _num(r["worst"]),
                                                                        str(r["worst_site"])]
                for _, r in hs.iterrows()]
        L += [_md_table(["method"] + site_cols + ["mean", "worst", "worst site"], body), ""]

    L += ["## Table 1 — held-out institution and pooled internal test set (mean over seeds, 95 % CI)", ""]
    for exp in experiments:
        part = frame[frame["experiment"] == exp]
        held = _heldout_site(exp)
        for site in [s for s in (held, POOLED) if s and s in set(part["test_site"])]:
            label = "held-out institution" if site == held else "pooled internal test split"
            L += [f"### {exp} — test: {site} ({label})", "", table_one(frame, exp, site), ""]
        L += [f"#### {exp} — AUROC on each training site's internal test split", "",
              _site_matrix(part, exclude=(held, POOLED)), ""]

    dl = delong_table(arms)
    L += [f"## DeLong tests against the clinical baseline (`{CLINICAL_BASELINE}`)", ""]
    if dl.empty:
        L += ["_no comparable baseline predictions_", ""]
    else:
        agg = dl.groupby(["experiment", "test_site", "method"]).agg(
            auroc=("auroc", "mean"), auroc_baseline=("auroc_baseline", "mean"), p=("p", "max"),
            n=("n", "max"), seeds=("seed", "nunique")).reset_index()
        agg = agg[[s in (_heldout_site(e), POOLED) for e, s in zip(agg["experiment"], agg["test_site"])]]
        body = [[r.experiment, r.test_site, r.method, _num(r.auroc), _num(r.auroc_baseline), _p(r.p), str(int(r.n)),
                 str(int(r.seeds))] for r in agg.itertuples()]
        L += [_md_table(["experiment", "test set", "method", "AUROC", "baseline AUROC", "p (max over seeds)",
                         "n", "seeds"], body), ""]

    fed = [a for a in arms if a.history]
    if fed:
        L += ["## Federated training (per-round pooled validation AUROC from summed counts)", ""]
        body = []
        for a in fed:
            vals = [h.get("val_auroc", h.get("pooled_val_auroc")) for h in a.history]
            vals = [v for v in vals if v is not None and np.isfinite(v)]
            body.append([a.experiment, a.method, str(a.seed), str(sum(1 for h in a.history if h.get("round", 0) > 0)),
                         _num(vals[-1] if vals else math.nan), _num(max(vals) if vals else math.nan)])
        L += [_md_table(["experiment", "method", "seed", "rounds", "last", "best"], body), ""]

    arm_notes = sorted({n for a in arms for n in a.notes})
    if arm_notes:
        L += ["## Methods notes", ""] + [f"- {n}" for n in arm_notes] + [""]

    if plots:
        L += ["## Plots", ""]
        for p in plots:
            rel = p.relative_to(out_dir)
            L += [f"![{p.stem}]({rel.as_posix()})", ""]

    from common.analysis.subgroups import heldout_section  # issue 17: subgroups at each held-out institution

    L.append(heldout_section(arms, config.get("caches"), out_dir, _heldout_site))
    L += ["## Configuration", "", "```json", json.dumps(config, indent=1, default=_json_default), "```", "",
          "## Library versions", "", _md_table(["library", "version"], [[k, v] for k, v in versions.items()]), ""]
    timing = sum(a.seconds for a in arms)
    L += [f"_Compute time summed over arms: {timing:.1f} s._", ""]
    return "\n".join(L)


def _site_matrix(part: pd.DataFrame, exclude: tuple[str, ...], metric: str = "auroc") -> str:
    """Methods x internal test sites, mean over seeds."""
    part = part[(part["metric"] == metric) & ~part["test_site"].isin([e for e in exclude if e])]
    if part.empty:
        return "_no internal test splits_"
    wide = part.groupby(["method", "test_site"])["value"].mean().unstack("test_site")
    cols = list(wide.columns)
    body = [[str(m)] + [_num(wide.loc[m, c]) for c in cols] for m in wide.index]
    return _md_table(["method"] + [str(c) for c in cols], body)


def _num(x: Any) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "n/a"
    return f"{x:.3f}" if np.isfinite(x) else "n/a"


def _p(x: Any) -> str:
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "n/a"
    if not np.isfinite(x):
        return "n/a"
    return "<0.001" if x < 1e-3 else f"{x:.3f}"
