"""Agreement of the automatic tumour localisation with the known boxes of a synthetic cohort.

    fedpcr synth --out COHORT --patients-per-site 10 ...
    python benchmarks/bench_localise.py COHORT [--sites DUKE AAI]

For every patient of ``truth.csv``: the pre-treatment DCE is selected and read exactly as ``fedpcr prepare``
does, the box found by ``common.preprocess.localise.auto_box`` is compared with ``tumour_box`` (the
generator's truth, which ``Annotation_Boxes.xlsx`` also holds): centre distance in mm, IoU, and whether the
found centre lies inside the true box. Prints one line per patient and the summary per site and overall.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.preprocess.dicom import group_patients, list_files, scan_files, select_series  # noqa: E402
from common.preprocess.intensity import body_mask  # noqa: E402
from common.preprocess.localise import auto_box, box_iou  # noqa: E402
from common.preprocess.volume import onto, phase_image, same_grid, to_array  # noqa: E402


def measure(root: Path, site: str, truth: pd.DataFrame) -> list[dict]:
    heads = group_patients(scan_files(list_files(root / site / "dicom"))[0])
    rows = []
    for r in truth[truth["site"] == site].itertuples():
        sel = select_series(r.patient_id, heads[r.patient_id])
        imgs = [phase_image(p) for p in sel.phases[:2]]
        if not same_grid(imgs[1], imgs[0]):
            imgs[1] = onto(imgs[1], imgs[0])
        body = to_array(body_mask(imgs[0])) > 0
        found = auto_box(imgs[0], [to_array(i) for i in imgs], body)
        true = tuple(int(v) for v in str(r.tumour_box).split(";"))
        sp = np.asarray(imgs[0].GetSpacing())[::-1]
        c = lambda b: np.array([(b[0] + b[1]) / 2, (b[2] + b[3]) / 2, (b[4] + b[5]) / 2])  # noqa: E731
        dist = float(np.linalg.norm((c(found) - c(true)) * sp))
        inside = all(true[2 * k] <= c(found)[k] <= true[2 * k + 1] for k in range(3))
        rows.append({"site": site, "patient": r.patient_id, "view": r.view, "centre_mm": dist,
                     "iou": box_iou(found, true), "centre_inside": inside, "found": found, "true": true})
        print(f"{site:10s} {r.patient_id:16s} {r.view:8s} centre {dist:6.1f} mm  IoU {rows[-1]['iou']:.2f}  "
              f"inside {inside}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("cohort", type=Path)
    ap.add_argument("--sites", nargs="*", default=None)
    a = ap.parse_args()
    truth = pd.read_csv(a.cohort / "truth.csv", dtype={"patient_id": str})
    rows = [m for s in (a.sites or sorted(truth["site"].unique())) for m in measure(a.cohort, s, truth)]
    df = pd.DataFrame(rows)
    summ = df.groupby("site").agg(n=("iou", "size"), centre_mm_median=("centre_mm", "median"),
                                  centre_mm_mean=("centre_mm", "mean"), iou_mean=("iou", "mean"),
                                  iou_median=("iou", "median"), centre_inside=("centre_inside", "mean"))
    print(summ.round(2).to_string())
    print(f"ALL n={len(df)} centre distance median {df.centre_mm.median():.1f} mm (mean {df.centre_mm.mean():.1f}), "
          f"IoU mean {df.iou.mean():.2f} (median {df.iou.median():.2f}), centre inside true box "
          f"{df.centre_inside.mean():.0%}, within 10 mm {(df.centre_mm <= 10).mean():.0%}")


if __name__ == "__main__":
    main()
