"""Time ``prepare`` on the embedded cohort: patients/s and MB/s of DICOM read, per site
(``python benchmarks/bench_prepare.py [--cohort DIR] [--workers 2]``)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.config import PrepConfig  # noqa: E402
from common.preprocess.pipeline import run_prepare  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Prepare every site of a cohort (written first to a temporary folder unless --cohort) and print rates."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--cohort", type=Path, default=None, help="existing cohort (default: write one, deleted after)")
    p.add_argument("--patients-per-site", type=int, default=None, help="cohort size when writing one")
    p.add_argument("--scale", type=float, default=None, help="cohort matrix scale when writing one")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--crop", default="tumour", choices=["tumour", "breast"])
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        cohort = args.cohort
        if cohort is None:
            from simulation.cohort import CohortConfig, write_cohort

            cohort = tmp / "cohort"
            write_cohort(cohort, patients_per_site=args.patients_per_site,
                         scale=args.scale or CohortConfig.scale, workers=args.workers, progress=False)
        cfg = PrepConfig(crop=args.crop)
        rows = []
        for site_dir in sorted(d for d in cohort.iterdir() if (d / "dicom").is_dir()):
            clinical = next(f for f in site_dir.iterdir() if f.name.startswith("clinical."))
            t0 = time.perf_counter()
            res = run_prepare(site_dir / "dicom", clinical, tmp / f"cache_{site_dir.name}", cfg,
                              boxes=site_dir / "Annotation_Boxes.xlsx", workers=args.workers, progress=False)
            wall = time.perf_counter() - t0
            n = len(res.processed)
            rows.append({"site": site_dir.name, "patients": n, "skipped": len(res.skipped), "files": res.n_files,
                         "mb": round(res.n_bytes / 1e6, 1), "seconds": round(wall, 2),
                         "scan_seconds": round(res.scan_seconds, 2), "patients_per_s": round(n / wall, 2),
                         "mb_per_s": round(res.n_bytes / 1e6 / wall, 1)})
            print(f"{site_dir.name:<12} {n:4d} patients {res.n_files:6d} files {res.n_bytes / 1e6:7.1f} MB "
                  f"{wall:6.1f}s (scan {res.scan_seconds:5.1f}s) -> {n / wall:5.2f} patients/s, "
                  f"{res.n_bytes / 1e6 / wall:5.1f} MB/s")
        tot_n = sum(r["patients"] for r in rows)
        tot_s = sum(r["seconds"] for r in rows)
        tot_mb = sum(r["mb"] for r in rows)
        print(json.dumps({"workers": args.workers, "patients": tot_n, "seconds": round(tot_s, 1),
                          "patients_per_s": round(tot_n / tot_s, 2), "mb_per_s": round(tot_mb / tot_s, 1),
                          "sites": rows}, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
