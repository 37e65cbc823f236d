"""Pixel decode speed per transfer syntax (MB/s of decoded 16-bit pixels), through the same reader
``fedpcr prepare`` uses (common.preprocess.volume.read_pixels).

    python benchmarks/bench_decode.py [--slices 40] [--size 256] [--repeat 3]

Writes one phantom MR series (uncompressed), re-encodes it in every syntax the test suite covers
(tests/dicom_factory.transcode) and times decoding all slices; prints one line per syntax.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.preprocess.volume import read_pixels  # noqa: E402
from tests.dicom_factory import Grid, transcode, write_patient  # noqa: E402

SYNTAXES = ("ExplicitVRLittleEndian", "ExplicitVRBigEndian", "DeflatedExplicitVRLittleEndian", "RLELossless",
            "JPEGLosslessSV1", "JPEGLSLossless", "JPEGLSNearLossless", "JPEG2000Lossless", "JPEG2000",
            "JPEGBaseline8Bit")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=40)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        grid = Grid(slices=a.slices, rows=a.size, cols=a.size, slice_mm=2.0, pixel_mm=300.0 / a.size)
        info = write_patient(Path(tmp) / "src", "B", grid=grid, times=(0,))
        src = sorted(next(iter(info["files"].values())))
        print(f"{a.slices} slices of {a.size}x{a.size} 16-bit; MB/s of decoded pixels (best of {a.repeat})")
        for syn in SYNTAXES:
            dst = Path(tmp) / syn
            dst.mkdir()
            files = []
            for f in src:
                g = dst / f.name
                shutil.copy(f, g)
                if syn != "ExplicitVRLittleEndian":
                    transcode(g, syn)
                files.append(str(g))
            size_mb = sum(Path(f).stat().st_size for f in files) / 1e6
            best = float("inf")
            for _ in range(a.repeat):
                t = time.perf_counter()
                for f in files:
                    read_pixels(f)
                best = min(best, time.perf_counter() - t)
            mb = a.slices * a.size * a.size * 2 / 1e6
            print(f"{syn:32s} {mb / best:8.1f} MB/s   ({size_mb:6.2f} MB on disk, "
                  f"{best * 1000 / a.slices:6.2f} ms/slice)")


if __name__ == "__main__":
    main()
