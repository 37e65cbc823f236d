"""``python -m simulation.ablation --out DIR``: which federated recipe closes the gap to pooled training.

FLamby's protocol: every recipe trains the same number of epochs (``--epochs``, split into rounds x local
epochs), on the same sites, folds, seeds and patients as the pooled reference; each is scored at the
held-out institutions (never trained on, never used for selection). Prints and writes ``ablation.csv``
(one row per recipe, held-out site and seed) and ``ablation.md`` (mean over seeds, the paired difference
to pooled per held-out site, mean and worst site). Semi-synthetic cohort unless ``--dataset`` says otherwise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from simulation.experiment_config import LARGE_PATIENTS, LARGE_SITES  # noqa: E402


@dataclass(frozen=True)
class Recipe:
    """One arm of the ablation: the harness arm it runs and the ExperimentConfig / TrainConfig changes."""

    arm: str
    local_epochs: int = 1
    lr: float | None = None
    prox_mu: float | None = None


#: The recipes compared (E = 6 epochs for all). ``pooled`` and ``local`` are the references.
RECIPES: dict[str, Recipe] = {
    "pooled": Recipe("pooled"),
    "local": Recipe("local"),
    "fedavg-3x2": Recipe("fedavg", local_epochs=2),
    "fedavg-6x1": Recipe("fedavg", local_epochs=1),
    "fedavg-6x1-lr2e-3": Recipe("fedavg", local_epochs=1, lr=2e-3),
    "fedavg-6x1-lr5e-4": Recipe("fedavg", local_epochs=1, lr=5e-4),
    "fedprox-6x1-mu0.01": Recipe("fedprox", local_epochs=1, prox_mu=0.01),
    "fedadam-6x1": Recipe("fedadam", local_epochs=1),
    "fedavg-2x3": Recipe("fedavg", local_epochs=3),
}



def recipe_config(base: Any, name: str) -> Any:
    """``base`` (an ExperimentConfig) changed to run recipe ``name`` as its only arm."""
    r = RECIPES[name]
    train = base.train if r.lr is None else replace(base.train, lr=r.lr)
    return replace(base, name=f"ablation-{name}", arms=(r.arm,), local_epochs=r.local_epochs, train=train,
                   prox_mu=base.prox_mu if r.prox_mu is None else r.prox_mu)


def heldout_rows(arms: list[Any], recipe: str, heldout: tuple[str, ...]) -> list[dict[str, Any]]:
    """Held-out AUROC rows (with the patients' scores kept for paired comparisons) of one recipe's arms."""
    rows = []
    for arm in arms:
        for r in arm.rows:
            if r["metric"] == "auroc" and r["test_site"] in heldout and arm.experiment == f"heldout-{r['test_site']}":
                # only the fold that held this site out (another fold tests it on its internal split)
                pred = arm.predictions.get(r["test_site"], {})
                rows.append({"recipe": recipe, "method": arm.method, "test_site": r["test_site"], "seed": arm.seed,
                             "auroc": r["value"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
                             "ids": pred.get("ids"), "y": pred.get("y"), "score": pred.get("score")})
    return rows


def local_mean(rows: pd.DataFrame) -> pd.DataFrame:
    """The ``local`` recipe has one arm per training site: average them per (held-out site, seed)."""
    loc = rows[rows.recipe == "local"]
    if loc.empty:
        return rows
    mean = loc.groupby(["test_site", "seed"], as_index=False)["auroc"].mean().assign(recipe="local-mean",
                                                                                    method="local-mean")
    return pd.concat([rows[rows.recipe != "local"], mean], ignore_index=True)


def paired_diff(a: list[dict[str, Any]], b: list[dict[str, Any]], n_boot: int = 2000,
                seed: int = 0) -> tuple[float, float, float]:
    """Mean over seeds of AUROC(a) - AUROC(b) on the same held-out patients, with a 95 % CI: the paired
    stratified bootstrap of ``common.paired_bootstrap`` per seed, replicate by replicate averaged over seeds."""
    from common.paired_bootstrap import paired_auroc_draws

    points, draws = [], []
    for ra, rb in zip(a, b):
        if list(ra["ids"]) != list(rb["ids"]):
            raise ValueError(f"{ra['method']} vs {rb['method']} at {ra['test_site']} (seed {ra['seed']}): a paired "
                             "comparison needs the same held-out patients in the same order")
        point, d = paired_auroc_draws(np.asarray(ra["y"]), np.vstack([ra["score"], rb["score"]]), n_boot, seed)
        points.append(point[0] - point[1])
        draws.append(d[0] - d[1])
    avg = np.mean(draws, axis=0)
    return float(np.mean(points)), float(np.percentile(avg, 2.5)), float(np.percentile(avg, 97.5))


def summarise(rows: pd.DataFrame, n_boot: int = 2000) -> pd.DataFrame:
    """Per recipe and held-out site: mean AUROC over seeds, and the paired difference to pooled with its CI."""
    out = []
    for (recipe, site), g in local_mean(rows).groupby(["recipe", "test_site"]):
        row = {"recipe": recipe, "test_site": site, "seeds": len(g), "auroc_mean": g["auroc"].mean(),
               "auroc_sd": g["auroc"].std(ddof=1) if len(g) > 1 else float("nan")}
        ref = rows[(rows.recipe == "pooled") & (rows.test_site == site)].set_index("seed")
        if recipe not in ("pooled", "local-mean") and not ref.empty:
            mine = g.set_index("seed")
            common = [s for s in mine.index if s in ref.index]
            d, lo, hi = paired_diff(mine.loc[common].to_dict("records"), ref.loc[common].to_dict("records"), n_boot)
            row.update(minus_pooled=d, minus_pooled_low=lo, minus_pooled_high=hi)
        out.append(row)
    df = pd.DataFrame(out)
    locm = df[df.recipe == "local-mean"].set_index("test_site")["auroc_mean"]
    df["minus_local_mean"] = df.apply(lambda r: r["auroc_mean"] - locm.get(r["test_site"], np.nan), axis=1)
    return df


def markdown(summary: pd.DataFrame, title: str, notes: list[str]) -> str:
    """The ablation table, one line per recipe and held-out site, then mean and worst site per recipe."""
    lines = [f"# {title}", "", *notes, "",
             "| recipe | held-out site | seeds | AUROC mean (sd) | minus pooled [95 % paired CI] | minus mean local |",
             "|---|---|---|---|---|---|"]
    for r in summary.sort_values(["test_site", "recipe"]).itertuples():
        d = "" if not np.isfinite(getattr(r, "minus_pooled", np.nan)) else \
            f"{r.minus_pooled:+.3f} [{r.minus_pooled_low:+.3f}, {r.minus_pooled_high:+.3f}]"
        lines.append(f"| {r.recipe} | {r.test_site} | {r.seeds} | {r.auroc_mean:.3f} ({r.auroc_sd:.3f}) | {d} | "
                     f"{r.minus_local_mean:+.3f} |")
    lines += ["", "| recipe | mean over held-out sites | worst site | mean minus pooled | worst minus pooled |",
              "|---|---|---|---|---|"]
    for recipe, g in summary.groupby("recipe"):
        mp = g["minus_pooled"] if "minus_pooled" in g else pd.Series(dtype=float)
        lines.append(f"| {recipe} | {g.auroc_mean.mean():.3f} | {g.auroc_mean.min():.3f} "
                     f"({g.loc[g.auroc_mean.idxmin(), 'test_site']}) | "
                     f"{mp.mean():+.3f} | {mp.min():+.3f} |" if mp.notna().any() else
                     f"| {recipe} | {g.auroc_mean.mean():.3f} | {g.auroc_mean.min():.3f} "
                     f"({g.loc[g.auroc_mean.idxmin(), 'test_site']}) | | |")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, from {', '.join(RECIPES)}")
    p.add_argument("--sites", default=",".join(LARGE_SITES), help="embedded cohort sites")
    p.add_argument("--patients-per-site", type=int, default=LARGE_PATIENTS)
    p.add_argument("--heldout", default="DUKE,AAI", help="held-out institutions (leave-one-out folds)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--epochs", type=int, default=6, help="total epochs of every recipe")
    p.add_argument("--n-boot", type=int, default=2000)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the recipes (finished arms are reused), write ablation.csv / ablation.md, print the table."""
    for key, val in (("FLWR_TELEMETRY_ENABLED", "0"), ("FLWR_DISABLE_UPDATE_CHECK", "1"),
                     ("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1"), ("MPLBACKEND", "Agg")):
        os.environ.setdefault(key, val)
    from simulation.experiment_config import preset
    from simulation.experiments import run_experiment
    from simulation.site_prep import prepare_sites

    args = build_parser().parse_args(argv)
    split = lambda s: tuple(x.strip() for x in s.split(",") if x.strip())  # noqa: E731
    heldout = split(args.heldout)
    unknown = [r for r in split(args.recipes) if r not in RECIPES]
    if unknown:
        print(f"ablation: unknown recipe(s) {unknown}; known: {', '.join(RECIPES)}", file=sys.stderr)
        return 2
    base = preset("default", cohort_sites=split(args.sites), patients_per_site=args.patients_per_site,
                  heldout=heldout, federated_heldout=heldout, seeds=tuple(int(s) for s in split(args.seeds)),
                  epochs=args.epochs, n_boot=200)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    caches = prepare_sites(base, args.out, progress=lambda m: print(m, flush=True))
    rows: list[dict[str, Any]] = []
    for name in split(args.recipes):
        t = time.perf_counter()
        cfg = recipe_config(base, name)
        arms = run_experiment(cfg, caches, args.out / name, progress=lambda m: print(m, flush=True))
        rows += heldout_rows(arms, name, heldout)
        print(f"recipe {name}: {time.perf_counter() - t:.0f} s", flush=True)
    df = pd.DataFrame(rows)
    df.drop(columns=["ids", "y", "score"]).to_csv(args.out / "ablation.csv", index=False)
    summary = summarise(df, args.n_boot)
    notes = [f"Semi-synthetic embedded cohort: sites {', '.join(base.cohort_sites or ())}, up to "
             f"{args.patients_per_site} patients each; every recipe {args.epochs} epochs in all; seeds "
             f"{args.seeds}; held-out AUROC, pooled-difference CIs from {args.n_boot} paired bootstrap resamples "
             f"of the held-out patients (averaged over seeds). Wall time {time.perf_counter() - t0:.0f} s."]
    text = markdown(summary, "Federated recipe ablation (semi-synthetic)", notes)
    (args.out / "ablation.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
