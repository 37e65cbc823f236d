"""Header scan of a list of files: classic MR images (one header each) and Enhanced MR images (one header
per frame, ``common.preprocess.dicom_enhanced``); the others returned with the reason they are not used."""

from __future__ import annotations

import os
from typing import Iterable

from common.preprocess.dicom_enhanced import enhanced_headers
from common.preprocess.dicom_headers import SliceHeader, read_header


def read_headers(path: str) -> tuple[list[SliceHeader], str]:
    """The headers of one file: one for a classic MR image, one per frame for an Enhanced MR
    (multi-frame) image; ([], reason) when the file is not a usable MR image."""
    h, why = read_header(path)
    if h is not None:
        return [h], ""
    if why.startswith("Enhanced MR"):
        return enhanced_headers(path)
    return [], why


def scan_files(paths: Iterable[str]) -> tuple[list[SliceHeader], list[dict[str, str]], int]:
    """Headers of the usable MR image files among ``paths``; the others with their reason; bytes seen."""
    heads, ignored, n_bytes = [], [], 0
    for p in paths:
        try:
            n_bytes += os.path.getsize(p)
        except OSError:
            pass
        hs, why = read_headers(p)
        if not hs:
            ignored.append({"file": p, "reason": why})
        else:
            heads.extend(hs)
    return heads, ignored, n_bytes


__all__ = ["read_headers", "scan_files"]
