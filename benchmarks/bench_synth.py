"""Time writing the default embedded cohort: seconds, files/s and MB (``python benchmarks/bench_synth.py``)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulation.cohort import CohortConfig, write_cohort  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Write the default cohort (or with the given overrides) once and print its cost."""
    d = CohortConfig()
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=None, help="keep the cohort here (default: temporary, deleted)")
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--scale", type=float, default=d.scale)
    p.add_argument("--patients-per-site", type=int, default=None)
    args = p.parse_args(argv)
    tmp = None if args.out else tempfile.mkdtemp(prefix="bench_synth_")
    out = args.out or Path(tmp) / "cohort"
    try:
        t0, c0 = time.perf_counter(), os.times()
        write_cohort(out, scale=args.scale, patients_per_site=args.patients_per_site, workers=args.workers,
                     progress=False)
        wall = time.perf_counter() - t0
        c1 = os.times()
        cpu = sum(getattr(c1, k) - getattr(c0, k) for k in ("user", "system", "children_user", "children_system"))
        files = [f for f in out.rglob("*") if f.is_file()]
        n_dcm = sum(1 for f in files if f.suffix == ".dcm")
        mb = sum(f.stat().st_size for f in files) / 1e6
        meta = json.loads((out / "cohort.json").read_text())
        print(f"sites={','.join(meta['sites'])} patients={sum(meta['n_patients'].values())} scale={args.scale} "
              f"workers={args.workers} cores={os.cpu_count()} load={os.getloadavg()[0]:.1f}")
        print(f"seconds={wall:.1f} cpu_seconds={cpu:.1f} dicom_files={n_dcm} files_per_s={n_dcm / wall:.0f} MB={mb:.0f}")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
