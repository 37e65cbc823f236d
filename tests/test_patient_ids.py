"""One patient-ID rule, collision-free volume files, one midnight-safe phase-time rule.

IDs that sanitise to the same file name (``A B`` / ``A_B``) and IDs of different collections with the same
number (``NACT_01`` / Duke ``Breast_MRI_001``) are prepared from real DICOM in one run; each volume must be
the one a single-patient preparation of that patient gives, and each clinical row must be that patient's.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from common.config import PrepConfig
from common.data import load_cache
from common.patient_id import id_key
from common.preprocess.dicom import group_patients, list_files, phase_seconds, scan_files, select_series, \
    unwrap_midnight
from common.preprocess.patient import process_patient
from common.preprocess.pipeline import run_prepare
from common.site_cache import KINETICS, KINETICS_COLUMNS, MANIFEST, MANIFEST_COLUMNS, volume_path
from tests.dicom_factory import MAPPING_YAML, Grid, write_boxes, write_patient

GRID = Grid(slices=14, rows=30, cols=40)
CFG = PrepConfig(channels=("pre", "post1", "sub1"), shape=(16, 16, 16), spacing_mm=3.0, crop="tumour")
#: DICOM PatientID -> (clinical-table spelling, pCR yes/no, age, noise seed, box shift in voxels)
PATIENTS = {
    "A B": ("A B", "yes", 31, 1, 0),
    "A_B": ("A_B", "no", 42, 2, 2),
    "NACT_01": ("NACT-1", "yes", 53, 3, -2),
    "Breast_MRI_001": ("DUKE_001", "no", 64, 4, 1),
}


def test_rule_keeps_collections_and_spellings_apart() -> None:
    assert id_key("NACT_01") == id_key("NACT-1") != id_key("Breast_MRI_001") == id_key("1") == id_key("DUKE_001")
    assert id_key("A B") != id_key("A_B")
    assert len({volume_path(p) for p in ("A B", "A_B", "A-B", "a_b", "AB", "ab")}) == 6
    assert volume_path("A B").startswith("volumes/A_B_") and volume_path("A B").endswith(".npy")
    assert volume_path("A B") == volume_path("A B")  # deterministic


def test_one_rule_module_without_fallback() -> None:
    """boxes / clinical adapters / prepare all use common.patient_id (no second rule left behind)."""
    import common.preprocess.boxes as boxes
    import common.preprocess.clinical as clinical
    import common.preprocess.clinical_sources as sources

    assert boxes.id_key is id_key and clinical.id_key is id_key and sources.id_key is id_key
    assert not hasattr(boxes, "_id_key")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("ids")
    dicom = root / "dicom"
    boxes = {}
    for pid, (_, _, _, seed, shift) in PATIENTS.items():
        box = write_patient(dicom, pid, grid=GRID, seed=seed, times=(0, 90))["box"]
        boxes[pid] = tuple(b + shift for b in box)
    # the boxes file spells the Duke patient as the Duke table does ("1") and NACT as "NACT_01"
    write_boxes(root / "boxes.xlsx", {("1" if pid == "Breast_MRI_001" else pid): b for pid, b in boxes.items()})
    rows = [{"ID": v[0], "response": v[1], "Age": v[2]} for v in PATIENTS.values()]
    pd.DataFrame(rows).to_csv(root / "clinical.csv", index=False)
    (root / "clinical.yaml").write_text(MAPPING_YAML)
    cache = root / "cache"
    res = run_prepare(dicom, root / "clinical.csv", cache, CFG, mapping=root / "clinical.yaml",
                      boxes=root / "boxes.xlsx", site="S", progress=False)
    return {"root": root, "dicom": dicom, "cache": cache, "boxes": boxes, "res": res}


def test_each_volume_pairs_with_its_own_patient(site: dict) -> None:
    assert site["res"].skipped == [] and sorted(site["res"].processed) == sorted(PATIENTS)
    cache = load_cache(site["cache"])
    heads = group_patients(scan_files(list_files(site["dicom"]))[0])
    vols = {}
    for pid in PATIENTS:
        ref_dir = site["root"] / "ref" / str(abs(hash(pid)))
        ref = process_patient(pid, heads[pid], CFG, site["boxes"][pid], str(ref_dir), "S", None)
        got = np.load(cache.path / cache.manifest.loc[pid, "volume"])
        np.testing.assert_array_equal(got, np.load(ref_dir / ref["row"]["volume"]), err_msg=pid)
        assert cache.manifest.loc[pid, "crop_centre"] == ref["row"]["crop_centre"]
        vols[pid] = got
    assert len(set(cache.manifest["volume"])) == len(PATIENTS)
    assert tuple(pd.read_csv(site["cache"] / MANIFEST).columns) == MANIFEST_COLUMNS
    assert tuple(pd.read_csv(site["cache"] / KINETICS).columns) == KINETICS_COLUMNS
    ids = list(vols)
    assert all(not np.array_equal(vols[a], vols[b]) for i, a in enumerate(ids) for b in ids[i + 1:])


def test_each_clinical_row_joins_its_patient(site: dict) -> None:
    cache = load_cache(site["cache"])
    for pid, (_, response, age, _, _) in PATIENTS.items():
        assert cache.clinical.loc[pid, "age"] == age
        assert cache.manifest.loc[pid, "label"] == (1.0 if response == "yes" else 0.0)


def test_phase_times_across_midnight(tmp_path: Path) -> None:
    """A DCE that starts at 23:59:30: phases keep their order and count seconds through midnight."""
    start = 16 * 3600 - 30  # write_patient's times are seconds after 08:00 -> 23:59:30
    write_patient(tmp_path, "MID", grid=GRID, times=(start, start + 90, start + 180))
    heads = group_patients(scan_files(list_files(tmp_path))[0])["MID"]
    sel = select_series("MID", heads)
    assert [p.description for p in sel.phases] == ["ax dyn pre", "ax dyn 1st pass", "ax dyn 2nd pass"]
    assert phase_seconds(sel.phases) == [0.0, 90.0, 180.0]
    assert not any("disagrees" in c for c in sel.choice)
    assert "post1=90s" in " ".join(sel.choice)


def test_unwrap_midnight_by_hand() -> None:
    assert unwrap_midnight([86370.0, 60.0, 150.0]) == [86370.0, 86460.0, 86550.0]
    assert unwrap_midnight([100.0, 190.0, None]) == [100.0, 190.0, None]
    assert unwrap_midnight([]) == []
