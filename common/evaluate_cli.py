"""``fedpcr evaluate``: score a site cache with a model bundle -> metrics, predictions, report, plots.

Refuses a cache whose preprocessing hash differs from the model's. ``--split test`` evaluates the
patients the training run held back (same seeded split); ``--split all`` every labelled patient.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options of ``fedpcr evaluate``."""
    p = argparse.ArgumentParser(prog="fedpcr evaluate", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="model bundle directory (from fedpcr train or a federated run)")
    p.add_argument("--cache", required=True, help="site cache directory")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--split", choices=["test", "all"], default="test",
                   help="test = the held-back test split (default); all = every labelled patient")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for confidence intervals")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    p.add_argument("--reference", action="append", default=[], choices=["clinical_logistic", "kinetic_logistic"],
                   help="also report a baseline refitted on the run's TRAINING patients (needs the run's local "
                        "split.json and its caches), compared by DeLong; repeatable")
    p.add_argument("--explain", type=int, default=0, metavar="N",
                   help="explanations (Grad-CAM + Integrated Gradients) of the N highest- and N lowest-scored patients")
    p.add_argument("--explain-patients", nargs="+", default=[], metavar="ID", help="explain these patients too")
    p.add_argument("--truth", default=None, help="cohort truth.csv with tumour boxes (embedded cohort): adds the "
                                                 "attribution-inside-tumour figures to the explanations")
    return p.parse_args(argv)


def select_ids(bundle: Any, cache: Any, split: str) -> tuple[list[str], str]:
    """Patients to evaluate and a note on where they come from."""
    from common.data import split_patients

    ids = cache.labelled_ids()
    if split == "all":
        note = "all labelled patients"
        if cache.site in bundle.train_sites:
            note += " (WARNING: this site trained the model; includes its training and validation patients)"
        return ids, note
    tc = bundle.train_config
    test = split_patients(ids, cache.labels(ids), tc.seed, tc.val_fraction, tc.test_fraction)["test"]
    split_file = Path(bundle.path) / "split.json"
    if cache.site in bundle.train_sites and split_file.is_file():
        stored = json.loads(split_file.read_text()).get("sites", {}).get(cache.site)
        if stored is not None and sorted(stored["test"]) != sorted(test):
            test = sorted(i for i in stored["test"] if i in set(ids))
            return test, f"held-back test split from {split_file} (cache changed since training)"
    origin = "training site" if cache.site in bundle.train_sites else "site not used in training"
    return test, f"held-back test split (seed {tc.seed}, test fraction {tc.test_fraction}; {origin})"


def reference_scores(bundle: Any, names: list[str], cache: Any, ids: list[str]) -> tuple[dict, dict]:
    """Baselines fitted on the training run's train splits, thresholds chosen on its val splits."""
    from common.baselines import make_baseline
    from common.data import load_cache
    from common.train import operating_threshold

    if not names:
        return {}, {}
    split_file = Path(bundle.path) / "split.json"
    if not split_file.is_file():
        raise ValueError(f"--reference needs the training run's local split file {split_file}")
    sites = json.loads(split_file.read_text())["sites"]
    parts = [(load_cache(info["cache"]), info) for info in sites.values()]
    scores, thresholds = {}, {}
    for name in names:
        model = make_baseline(name).fit([(c, info["train"]) for c, info in parts])
        val_y = np.concatenate([c.labels(info["val"]) for c, info in parts])
        val_s = np.concatenate([model.predict(c, info["val"]) for c, info in parts])
        if len(np.unique(val_y)) == 2:
            thresholds[name] = operating_threshold(val_y, val_s, bundle.train_config)
        scores[name] = model.predict(cache, ids)
    return scores, thresholds


def run(args: argparse.Namespace) -> int:
    """Score the cache with the bundle and write the evaluation report; returns the exit status."""
    import dataclasses

    from common.bundle import load_bundle
    from common.data import PCRDataset, load_cache, warn_issues
    from common.evaluation import write_evaluation
    from common.train import predict

    bundle = load_bundle(args.model)
    cache = load_cache(args.cache)
    if cache.prep_hash != bundle.prep_hash:
        print(f"fedpcr evaluate: refusing: cache {cache.path} was prepared with prep hash {cache.prep_hash}, "
              f"but model {bundle.path} expects prep hash {bundle.prep_hash}; re-prepare the site with the "
              "model's PrepConfig (bundle.json 'prep_config')", file=sys.stderr)
        return 2
    warn_issues(cache)
    if len(cache.channels) != bundle.model_config.in_channels:
        raise ValueError(f"cache {cache.path} has channels {list(cache.channels)} but the model takes "
                         f"{bundle.model_config.in_channels}")
    ids, note = select_ids(bundle, cache, args.split)
    if not ids:
        raise ValueError(f"no labelled patients to evaluate in {cache.path} ({note})")
    tc = bundle.train_config if args.device is None else dataclasses.replace(bundle.train_config, device=args.device)
    ds = PCRDataset(cache, ids, augment=False, clinical_features=bundle.model_config.clinical_features,
                    visits=bundle.model_config.visits)  # refuses a cache without the model's visits
    labels, scores = predict(bundle.model, ds, tc)
    context = {"site": cache.site, "cache": str(cache.path), "model": str(bundle.path), "prep_hash": cache.prep_hash,
               "model_hash": bundle.meta.get("model_hash"), "train_sites": bundle.train_sites,
               "patients": note, "threshold_rule": bundle.threshold_rule, "split": args.split}
    refs, ref_thresholds = reference_scores(bundle, args.reference, cache, ids)
    out = Path(args.out)
    write_evaluation(out, ids=ids, labels=labels, scores=scores, threshold=bundle.threshold,
                     manifest=cache.manifest.loc[ids], clinical=cache.clinical.reindex(ids),
                     context=context, n_boot=args.n_boot, reference_scores=refs or None,
                     reference_thresholds=ref_thresholds or None)
    if args.explain or args.explain_patients:
        from common.analysis.site_report import explain_into_report  # explanations + report section

        explain_into_report(out, bundle, cache, ids, labels, scores, n=args.explain, named=args.explain_patients,
                            truth=args.truth, train_config=tc)
    print(f"{cache.site}: {len(ids)} patients ({note}); report written to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fedpcr evaluate``; returns the exit status (2 on refusal or bad input)."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return run(args)
    except (OSError, ValueError, KeyError) as exc:
        print(f"fedpcr evaluate: error: {exc}", file=sys.stderr)
        return 2
