"""``fedpcr synth``: write the embedded semi-synthetic multi-site DICOM cohort (docs/cohort.md)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from simulation.cohort import CohortConfig, write_cohort
from simulation.cohort_sites import DEFAULT_SITES, KNOWN_SITES


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``fedpcr synth`` (defaults come from :class:`CohortConfig`)."""
    d = CohortConfig()
    p = argparse.ArgumentParser(prog="fedpcr synth", description=__doc__)
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--sites", nargs="+", default=list(DEFAULT_SITES),
                   help=f"site codes (default {' '.join(DEFAULT_SITES)}; known: {' '.join(KNOWN_SITES)}; "
                        "or ISPY2:<code> / ISPY1:<code> for any MAMA-MIA site)")
    p.add_argument("--patients-per-site", type=int, default=None,
                   help="patients per site (default: each site's own size, 27-48)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--scale", type=float, default=d.scale, help=f"matrix scale (default {d.scale})")
    p.add_argument("--signal", type=float, default=d.signal,
                   help=f"pCR information in the images, 0 = none (default {d.signal})")
    p.add_argument("--t2", action="store_true", help="also write a T2-weighted series")
    p.add_argument("--early-visit", action="store_true", help="also write an early-treatment visit (second study)")
    p.add_argument("--workers", type=int, default=d.workers, help=f"processes (default {d.workers})")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier cohort in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: list[str]) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    try:
        out = write_cohort(args.out, sites=args.sites, patients_per_site=args.patients_per_site, seed=args.seed,
                           scale=args.scale, signal=args.signal, t2=args.t2, early_visit=args.early_visit,
                           workers=args.workers, progress=not args.quiet, overwrite=args.overwrite)
    except ValueError as exc:
        print(f"fedpcr synth: {exc}", file=sys.stderr)
        return 2
    print(f"wrote cohort to {out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
