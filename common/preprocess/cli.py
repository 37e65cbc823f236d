"""``fedpcr prepare``: command-line front end of :func:`common.preprocess.pipeline.run_prepare`."""

from __future__ import annotations

import argparse
import sys

from common.config import PrepConfig, load_yaml


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of ``fedpcr prepare``."""
    p = argparse.ArgumentParser(prog="fedpcr prepare",
                                description="DICOM tree + clinical table -> harmonised site cache "
                                            "(docs/CONTRACTS.md §2, docs/preprocessing.md)")
    p.add_argument("--dicom", required=True, help="root of the site's DICOM tree (any layout; read only)")
    p.add_argument("--clinical", required=True, help="site clinical table (xlsx/csv)")
    p.add_argument("--clinical-format", choices=["duke", "ispy2", "ispy1", "mama-mia", "csv"], default=None,
                   help="clinical table format (default: sniffed)")
    p.add_argument("--mapping", default=None, help="YAML column/value mapping for --clinical-format csv")
    p.add_argument("--boxes", default=None, help="tumour boxes: Duke Annotation_Boxes.xlsx or a CSV with its columns")
    p.add_argument("--masks", default=None, help="folder of NIfTI tumour masks named by patient (MAMA-MIA layout); "
                                                 "DICOM-SEG objects in the tree are used too; without any "
                                                 "annotation the tumour is localised automatically")
    p.add_argument("--site", default=None, help="site name (default: DICOM ClinicalTrialSiteID, clinical site)")
    p.add_argument("--out", required=True, help="cache directory (created; re-runs are incremental)")
    p.add_argument("--config", default=None, help="PrepConfig YAML (default: common.config.PrepConfig())")
    p.add_argument("--workers", type=int, default=1, help="patients processed in parallel (processes)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run ``prepare``; 0 = cache written (even if some patients were skipped), 2 = unusable input."""
    args = build_parser().parse_args(argv)
    from common.preprocess.pipeline import run_prepare

    try:
        cfg = load_yaml(PrepConfig, args.config)
        res = run_prepare(args.dicom, args.clinical, args.out, cfg, clinical_format=args.clinical_format,
                          mapping=args.mapping, boxes=args.boxes, masks=args.masks, site=args.site,
                          workers=max(1, args.workers), progress=not args.no_progress)
    except (ValueError, OSError, ImportError) as exc:
        print(f"fedpcr prepare: error: {exc}", file=sys.stderr)
        return 2
    print(res.summary())
    return 0 if res.processed else 1


if __name__ == "__main__":
    sys.exit(main())
