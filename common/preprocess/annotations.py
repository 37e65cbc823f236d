"""Tumour annotations of a site, whatever form they come in, keyed by ``common.patient_id.id_key``:

- a box table (Duke ``Annotation_Boxes.xlsx`` or a CSV with the same columns; ``common.preprocess.boxes``);
- a folder of NIfTI masks named by patient (MAMA-MIA layout: ``<folder>/<patient>.nii.gz``, any
  spelling ``id_key`` accepts: ``duke_001.nii.gz`` for ``Breast_MRI_001``);
- DICOM-SEG objects anywhere in the patient's DICOM tree (found by the header scan, matched by PatientID).

Masks are kept as paths: the box is taken in the worker, in the pre-contrast grid of the patient
(``common.preprocess.localise``), so a mask on any grid (the MAMA-MIA masks are on the DCE grid, a SEG
on its source series) gives a box in the same voxel space as a Duke box.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pydicom

from common.patient_id import id_key
from common.preprocess.boxes import Box, read_boxes

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
_NIFTI = re.compile(r"^(?P<pid>.+?)(?:_seg|_mask|_tumou?r)?\.nii(?:\.gz)?$", re.IGNORECASE)


@dataclass(frozen=True)
class Annotation:
    """One patient's tumour annotation: a voxel box (pre-contrast grid) or a mask file (NIfTI / DICOM-SEG)."""

    kind: str  # box | nifti | seg
    source: str  # file it came from
    box: Box | None = None
    path: str | None = None


def nifti_masks(folder: str | Path) -> tuple[dict[str, Annotation], list[dict[str, str]]]:
    """NIfTI masks of a folder by patient key; issues for names that map to the same patient."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--masks {folder}: not a folder of NIfTI masks")
    out: dict[str, Annotation] = {}
    issues: list[dict[str, str]] = []
    for f in sorted(folder.iterdir()):
        m = _NIFTI.match(f.name)
        if not m or not f.is_file():
            continue
        key = id_key(m.group("pid"))
        if key in out:
            issues.append({"patient": m.group("pid"), "field": "Annotation_Boxes", "value": f.name,
                           "reason": f"two masks for the same patient: {Path(out[key].source).name}, {f.name}"})
            continue
        out[key] = Annotation("nifti", str(f), path=str(f))
    return out, issues


def seg_files(ignored: list[dict[str, str]]) -> tuple[dict[str, Annotation], list[dict[str, str]]]:
    """DICOM-SEG objects among the files the MR scan set aside, by the key of their PatientID; the
    remaining ignored files. Several SEGs of one patient: the last by path is used (noted in source)."""
    out: dict[str, Annotation] = {}
    rest = []
    for d in ignored:
        if not d["reason"].startswith("Modality SEG"):
            rest.append(d)
            continue
        try:
            ds = pydicom.dcmread(d["file"], stop_before_pixels=True, specific_tags=["PatientID", "SOPClassUID"])
        except Exception:
            rest.append(d)
            continue
        if str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS:
            rest.append(d)
            continue
        out[id_key(str(ds.get("PatientID", "")).strip())] = Annotation("seg", d["file"], path=d["file"])
    return out, rest


def gather(boxes: str | Path | None, masks: str | Path | None, ignored: list[dict[str, str]]
           ) -> tuple[dict[str, Annotation], list[dict[str, str]], list[dict[str, str]]]:
    """All annotations by patient key, in order of precedence: box table, NIfTI masks, DICOM-SEG in the
    tree. Returns (annotations, issues, ignored files without the SEGs used)."""
    issues: list[dict[str, str]] = []
    segs, rest = seg_files(ignored)
    found: dict[str, Annotation] = dict(segs)
    if masks is not None:
        nif, nif_issues = nifti_masks(masks)
        found.update(nif)
        issues += nif_issues
    if boxes is not None:
        table, box_issues = read_boxes(boxes)
        found.update({k: Annotation("box", str(boxes), box=b) for k, b in table.items()})
        issues += box_issues
    return found, issues, rest


__all__ = ["Annotation", "SEG_SOP_CLASS", "gather", "nifti_masks", "seg_files"]
