"""Find, group, order and name DICOM series in any folder layout (NBIA, I-SPY2, PACS export, flat).

Files are grouped by the headers (PatientID -> StudyInstanceUID -> SeriesInstanceUID), never by folder
names; slices are ordered by position along the slice normal; multi-phase series are split into their
phases; DCE phases are named ``pre, post1..postK`` by acquisition time, with the Duke SeriesDescription
conventions (data/duke/duke_series_descriptions.md) as the fallback. The tree is only read.

One job per module; this one is the public face that gathers them:
``dicom_headers`` (files and headers), ``dicom_series`` (studies, series, phases, slice order),
``dicom_phases`` (phase naming, phase times, series selection).
"""

from __future__ import annotations

from common.preprocess.dicom_headers import (
    HEADER_TAGS,
    DicomError,
    SliceHeader,
    group_patients,
    list_files,
    parse_tm,
    read_header,
    walk_files,
)
from common.preprocess.dicom_scan import read_headers, scan_files
from common.preprocess.dicom_phases import (
    Selection,
    classify,
    description_phase,
    phase_seconds,
    phase_time,
    select_series,
    unwrap_midnight,
)
from common.preprocess.dicom_series import Phase, Series, Study, build_studies, split_series

__all__ = ["HEADER_TAGS", "DicomError", "Phase", "Selection", "Series", "SliceHeader", "Study", "build_studies",
           "classify", "description_phase", "group_patients", "list_files", "parse_tm", "phase_seconds",
           "phase_time", "read_header", "read_headers", "scan_files", "walk_files", "select_series", "split_series", "unwrap_midnight"]
