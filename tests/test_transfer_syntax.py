"""Pixel decoding of every transfer syntax a PACS may send, through the declared decoders (pydicom 3 with
pylibjpeg-libjpeg / -openjpeg / -rle and pyjpegls). The files are real DICOM written here: our
uncompressed MR series re-encoded by pydicom's encoders (RLE, JPEG-LS, JPEG 2000), GDCM (JPEG Lossless
SV1, via SimpleITK) and Pillow (JPEG Baseline). Lossless syntaxes must give the original pixels exactly;
lossy ones within a stated tolerance. JPEG Extended (12-bit) has no encoder among the installed
libraries: pydicom's own 12-bit sample file is decoded and compared with GDCM's decoder (SimpleITK)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.encaps import encapsulate

from common.config import PrepConfig
from common.preprocess.dicom import group_patients, list_files, scan_files, select_series
from common.preprocess.pipeline import run_prepare
from common.preprocess.volume import phase_image, read_pixels, to_array
from tests.dicom_factory import Grid, transcode, write_boxes, write_clinical, write_patient

GRID = Grid(slices=6, rows=32, cols=40, slice_mm=8.0, pixel_mm=3.5)
#: syntax -> max |decoded - original| allowed (0 = lossless)
SYNTAXES = {"RLELossless": 0, "JPEGLSLossless": 0, "JPEG2000Lossless": 0, "JPEGLosslessSV1": 0,
            "DeflatedExplicitVRLittleEndian": 0, "ExplicitVRBigEndian": 0, "JPEGLSNearLossless": 2,
            "JPEG2000": 40, "JPEGBaseline8Bit": 8}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("ts")
    info = {}
    for i, syn in enumerate(["ORIGINAL", *SYNTAXES]):
        info[syn] = write_patient(base / "dicom", syn, grid=GRID, seed=1)  # same pixels for every patient
        if syn != "ORIGINAL":
            for files in info[syn]["files"].values():
                for f in files:
                    transcode(f, syn)
    return {"base": base, "info": info}


def _phases(root: Path, pid: str) -> list[np.ndarray]:
    heads = group_patients(scan_files(list_files(root / pid))[0])[pid]
    return [to_array(phase_image(p)) for p in select_series(pid, heads).phases]


@pytest.mark.parametrize("syntax", list(SYNTAXES))
def test_decoded_pixels_match_the_original(site: dict, syntax: str) -> None:
    root = site["base"] / "dicom"
    f = site["info"][syntax]["files"]
    first = next(iter(f.values()))[0]
    assert pydicom.dcmread(first).file_meta.TransferSyntaxUID == getattr(pydicom.uid, syntax)
    orig, got = _phases(root, "ORIGINAL"), _phases(root, syntax)
    assert len(got) == len(orig) == 3
    for o, g in zip(orig, got):
        ref = np.floor(o / 16) if syntax == "JPEGBaseline8Bit" else o  # baseline is 8-bit: data scaled
        err = np.abs(g - ref).max()
        assert err <= SYNTAXES[syntax], (syntax, err)
        if SYNTAXES[syntax] == 0:
            np.testing.assert_array_equal(g, o)


def test_jpeg_extended_12bit_matches_gdcm() -> None:
    path = Path(pydicom.__file__).parent / "data" / "test_files" / "JPGExtended.dcm"
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEGExtended12Bit and ds.BitsStored == 12
    ours = read_pixels(str(path))
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[0].astype(np.float32)
    assert ours.shape == ref.shape and ours.std() > 1
    assert np.abs(ours - ref).max() <= 1  # two IDCT implementations of a lossy stream


def test_prepare_decodes_every_syntax_and_names_the_one_it_cannot(site: dict, tmp_path: Path) -> None:
    root = tmp_path / "dicom"
    shutil.copytree(site["base"] / "dicom", root)
    # a patient whose DCE arrives in JPEG 2000 Part 2 multi-component, for which no decoder exists
    bad = write_patient(root, "J2KMC", grid=GRID, seed=1)
    for f in next(iter(bad["files"].values())):
        ds = pydicom.dcmread(f)
        ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(64)])
        ds["PixelData"].VR = "OB"
        ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEG2000MCLossless
        ds.save_as(f, enforce_file_format=True)
    pids = ["ORIGINAL", *SYNTAXES, "J2KMC"]
    box = site["info"]["ORIGINAL"]["box"]
    write_boxes(tmp_path / "boxes.xlsx", {p: box for p in pids})
    mapping = write_clinical(tmp_path / "clin.csv", {p: "yes" for p in pids})
    res = run_prepare(root, tmp_path / "clin.csv", tmp_path / "cache",
                      PrepConfig(shape=(8, 8, 8), spacing_mm=4.0), clinical_format="csv", mapping=mapping,
                      boxes=tmp_path / "boxes.xlsx", progress=False)
    assert sorted(res.processed) == sorted(["ORIGINAL", *SYNTAXES])
    [skip] = res.skipped
    assert skip["patient"] == "J2KMC" and "cannot decode" in skip["reason"]
    assert "JPEG 2000 Part 2 Multi-component" in skip["reason"] and "1.2.840.10008.1.2.4.92" in skip["reason"]
