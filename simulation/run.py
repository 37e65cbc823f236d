"""``python simulation/run.py [--out DIR] [--quick]``: multi-site experiments end to end, ending with a report.

Generates the embedded cohort when missing, prepares every site, runs the arms (resuming finished ones),
writes results.csv / cross_site.json / report.md / plots, and prints the report's path. ``--experiment
clinical`` runs the real clinical-only experiment on the public MAMA-MIA table (no images needed);
``--experiment longitudinal`` the real I-SPY2 early-treatment MRI experiment; ``--experiment early-visit``
the semi-synthetic one (pre-only vs pre+early fusion at a held-out I-SPY2 site).
"""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:  # runnable as a script from the repo root
    sys.path.insert(0, str(_ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402

DEFAULT_OUT = Path("runs") / "simulation"
#: Public clinical tables and DICOM partition keys per real collection (TCIA download layout).
REAL_DATASETS: dict[str, dict[str, str]] = {
    "duke": {"fmt": "duke", "partition": "scanner"},
    "ispy2": {"fmt": "ispy2", "partition": "site"},
    "mama-mia": {"fmt": "mama-mia", "partition": "site"},
}


def _split_list(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(t.strip() for t in text.split(",") if t.strip())


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``simulation/run.py``."""
    p = argparse.ArgumentParser(prog="simulation/run.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
    p.add_argument("--quick", action="store_true", help="the 3-minute configuration (1 seed, fewer arms)")
    p.add_argument("--experiment", default=None,
                   choices=["default", "quick", "large", "mrp", "tiny", "clinical", "longitudinal", "privacy",
                            "early-visit"],
                   help="named experiment (default: 'default', or 'quick' with --quick)")
    p.add_argument("--dataset", default="embedded", choices=["embedded", *REAL_DATASETS],
                   help="embedded semi-synthetic cohort, or a real collection under --data-root")
    p.add_argument("--data-root", type=Path, default=None, help="TCIA download folder of --dataset")
    p.add_argument("--clinical", type=Path, default=None,
                   help="clinical table of the real collection (default: the public copy in data/)")
    p.add_argument("--partition", default=None, choices=["site", "trial_site", "scanner", "collection"],
                   help="how patients map to sites on real data")
    p.add_argument("--min-site-size", type=int, default=None, help="group sites smaller than this")
    p.add_argument("--heldout", default=None, help="comma-separated held-out institutions (LOIO list)")
    p.add_argument("--federated-heldout", default=None,
                   help="held-out folds in which federated arms run (default: preset's choice)")
    p.add_argument("--internal", action="store_true", help="also run the internal fold (all sites train)")
    p.add_argument("--arms", default=None, help="comma-separated arms (see docs/experiments.md)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds")
    p.add_argument("--epochs", type=int, default=None, help="total local epochs E (federated: rounds x e = E)")
    p.add_argument("--local-epochs", type=int, default=None, help="local epochs per federated round e")
    p.add_argument("--sites", default=None, help="embedded cohort: comma-separated site codes")
    p.add_argument("--patients-per-site", type=int, default=None, help="embedded cohort: patients per site")
    p.add_argument("--no-resume", action="store_true", help="recompute finished arms")
    return p


def experiment_config(args: argparse.Namespace):  # -> ExperimentConfig
    """Preset chosen by --experiment / --quick, then every explicit flag on top."""
    from simulation.experiment_config import preset

    name = args.experiment or ("quick" if args.quick else "default")
    if name == "early-visit" and args.quick:  # pre-only vs pre+early fusion, the quick size
        name = "early-visit-quick"
    over: dict = {"dataset": args.dataset}
    if args.data_root is not None:
        over["data_root"] = str(args.data_root)
    if args.partition:
        over["partition"] = args.partition
    elif args.dataset in REAL_DATASETS:
        over["partition"] = REAL_DATASETS[args.dataset]["partition"]
    if args.min_site_size is not None:
        over["min_site_size"] = args.min_site_size
    for flag, key in (("heldout", "heldout"), ("federated_heldout", "federated_heldout"), ("arms", "arms"),
                      ("sites", "cohort_sites")):
        val = _split_list(getattr(args, flag))
        if val is not None:
            over[key] = val
    if args.seeds:
        over["seeds"] = tuple(int(s) for s in _split_list(args.seeds) or ())
    if args.epochs is not None:
        over["epochs"] = args.epochs
    if args.local_epochs is not None:
        over["local_epochs"] = args.local_epochs
    if args.patients_per_site is not None:
        over["patients_per_site"] = args.patients_per_site
    if args.internal:
        over["internal"] = True
    return preset(name, **over)


def _run_clinical(args: argparse.Namespace, out: Path, t0: float) -> int:
    """``--experiment clinical``: the clinical-only experiment on the public MAMA-MIA table."""
    from simulation.clinical_experiment import ClinicalExperimentConfig, run_clinical_experiment

    ccfg = ClinicalExperimentConfig()
    if args.heldout:
        ccfg = replace(ccfg, heldout=_split_list(args.heldout) or ())
    if args.seeds:
        ccfg = replace(ccfg, seeds=tuple(int(s) for s in _split_list(args.seeds) or ()))
    if args.min_site_size is not None:
        ccfg = replace(ccfg, min_site_size=args.min_site_size)
    if args.quick:
        ccfg = replace(ccfg, seeds=ccfg.seeds[:1])
    _, report = run_clinical_experiment(out, ccfg, resume=not args.no_resume)
    print(f"done in {time.perf_counter() - t0:.0f} s")
    print(report)
    return 0


def _run_longitudinal(args: argparse.Namespace, out: Path, t0: float) -> int:
    """``--experiment longitudinal``: clinical vs + T0 / T0->T1 / T0->T2 MRI measurements on real I-SPY2 tables."""
    from simulation.longitudinal_experiment import LongitudinalConfig, quick_config, run_longitudinal_experiment

    lcfg = LongitudinalConfig()
    if args.heldout:
        lcfg = replace(lcfg, heldout=_split_list(args.heldout) or ())
    if args.seeds:
        lcfg = replace(lcfg, seeds=tuple(int(s) for s in _split_list(args.seeds) or ()))
    if args.min_site_size is not None:
        lcfg = replace(lcfg, min_site_size=args.min_site_size)
    if args.quick:
        lcfg = quick_config(lcfg)
    _, report = run_longitudinal_experiment(out, lcfg, resume=not args.no_resume)
    print(f"done in {time.perf_counter() - t0:.0f} s")
    print(report)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the chosen experiment and write its report; returns the exit status."""
    args = build_parser().parse_args(argv)
    for key, val in (("FLWR_TELEMETRY_ENABLED", "0"), ("FLWR_DISABLE_UPDATE_CHECK", "1"),
                     ("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1"), ("MPLBACKEND", "Agg")):
        os.environ.setdefault(key, val)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.experiment == "clinical":
        return _run_clinical(args, out, t0)
    if args.experiment == "longitudinal":
        return _run_longitudinal(args, out, t0)
    if args.experiment == "privacy":  # DP budgets on the quick (or default) image preset
        from simulation.privacy_experiment import run_privacy_experiment

        args.experiment = "privacy-quick" if args.quick else "privacy"
        report = run_privacy_experiment(experiment_config(args), out)
        print(f"done in {time.perf_counter() - t0:.0f} s")
        print(report)
        return 0
    try:
        cfg = experiment_config(args)
    except ValueError as exc:
        print(f"run.py: {exc}", file=sys.stderr)
        return 2
    from simulation.experiment_config import NORM_RULE, config_dict
    from simulation.experiments import run_experiment
    from simulation.report import write_report
    from simulation.site_prep import prepare_sites

    print(f"experiment {cfg.name}: arms {', '.join(cfg.arms)}; seeds {list(cfg.seeds)}; "
          f"{cfg.epochs} epochs = {cfg.rounds} rounds x {cfg.local_epochs} local epochs", flush=True)
    try:
        caches = prepare_sites(cfg, out, clinical=args.clinical, progress=lambda m: print(m, flush=True))
    except (FileNotFoundError, ValueError) as exc:
        print(f"run.py: {exc}", file=sys.stderr)
        return 2
    print(f"sites ready in {time.perf_counter() - t0:.0f} s: "
          + ", ".join(f"{s}" for s in caches), flush=True)
    failures: list[str] = []
    arms = run_experiment(cfg, caches, out, resume=not args.no_resume,
                          progress=lambda m: print(m, flush=True), failures=failures)
    semi = cfg.dataset == "embedded"
    notes = [NORM_RULE, f"total wall time of this invocation: {time.perf_counter() - t0:.0f} s"]
    notes += [f"FAILED arm (not in the tables): {f}" for f in failures]
    config = {"experiment": config_dict(cfg), "caches": {k: str(v) for k, v in caches.items()},
              "argv": sys.argv[1:] if argv is None else list(argv)}
    report = write_report(arms, out, title=f"fedpcr — {cfg.name} experiment ({'semi-synthetic embedded cohort' if semi else cfg.dataset})",
                          config=json.loads(json.dumps(config, default=str)), semi_synthetic=semi, notes=notes,
                          n_boot=cfg.n_boot)
    print(f"done in {time.perf_counter() - t0:.0f} s" + (f"; {len(failures)} arm(s) failed" if failures else ""))
    print(report)
    return 1 if failures and not arms else 0


if __name__ == "__main__":
    sys.exit(main())
