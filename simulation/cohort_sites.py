"""Sites of the embedded cohort and their anchor patients, drawn from the real MAMA-MIA table.

Each synthetic patient copies one real patient's site, pCR label, receptors, subtype, age, grade,
menopause and real scanner (vendor, model, field strength, view, phases, phase times, spacing);
only the image geometry is scaled down (``scale``) so the default cohort stays small.
"""

from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from common.paths import MAMA_MIA_TABLE


@dataclass(frozen=True)
class SiteSpec:
    """One emulated hospital: the real collection and MAMA-MIA site code it copies, and its style."""

    name: str  # directory / site code, e.g. DUKE, AAI, ISPY1_AAB
    collection: str  # MAMA-MIA ``dataset``: DUKE | ISPY1 | ISPY2 | NACT
    code: str  # MAMA-MIA ``site`` column value
    n_default: int  # default sample size (real sites differ in size)

    @property
    def style(self) -> str:
        """DICOM layout: ``duke`` (one series per phase) or ``ispy`` (one series, all phases)."""
        return "duke" if self.collection == "DUKE" else "ispy"

    @property
    def clinical_format(self) -> str:
        """Native clinical table format: ``duke`` xlsx, ``ispy2`` xlsx or ``mama-mia`` csv."""
        return {"DUKE": "duke", "ISPY2": "ispy2"}.get(self.collection, "mama-mia")


#: Every site the generator knows (any MAMA-MIA site with enough labelled patients can be added).
KNOWN_SITES: dict[str, SiteSpec] = {
    s.name: s
    for s in (
        SiteSpec("DUKE", "DUKE", "DUKE", 48),
        SiteSpec("AAI", "ISPY2", "AAI", 44),
        SiteSpec("AAN", "ISPY2", "AAN", 40),
        SiteSpec("AAQ", "ISPY2", "AAQ", 33),
        SiteSpec("AAW", "ISPY2", "AAW", 40),
        SiteSpec("AAE", "ISPY2", "AAE", 40),
        SiteSpec("ISPY1_AAB", "ISPY1", "AAB", 27),
        SiteSpec("ISPY1_AAE", "ISPY1", "AAE", 36),
        SiteSpec("ISPY1_AAI", "ISPY1", "AAI", 40),
        SiteSpec("ISPY1_AAH", "ISPY1", "AAH", 21),
        SiteSpec("NACT", "NACT", "NACT", 40),
    )
}

#: Default cohort: four real collections/vendors: Duke (GE + Siemens, axial, one series per phase),
#: I-SPY2 AAI (GE) and AAQ (Philips), I-SPY1 AAB (Siemens/GE, sagittal, unilateral).
DEFAULT_SITES: tuple[str, ...] = ("DUKE", "AAI", "AAQ", "ISPY1_AAB")

#: Canonical subtype from (hr, her2) (common.schema.SUBTYPES).
_SUBTYPE_FROM_RECEPTORS = {(1, 1): "luminal_her2", (1, 0): "luminal", (0, 1): "her2_pure", (0, 0): "triple_negative"}
#: MAMA-MIA ``tumor_subtype`` -> our SUBTYPES, used only when hr/her2 are missing. In the MAMA-MIA table
#: luminal_b is HR+/HER2+ and her2_enriched is HER2+ with either HR status (86 HR-, 83 HR+), so it is
#: not mapped: the subtype stays unknown rather than guessed.
_SUBTYPE_FROM_MAMA = {
    "luminal_a": "luminal", "luminal": "luminal", "luminal_b": "luminal_her2",
    "her2_pure": "her2_pure", "triple_negative": "triple_negative",
}


#: Through-plane coverage of the cropped I-SPY2 series (mm).
ISPY2_MAX_COVER_MM = 200.0


@dataclass(frozen=True)
class Geometry:
    """Scaled acquisition grid of one DCE series (matrix, spacing in mm, view)."""

    view: str  # axial | sagittal
    rows: int
    cols: int
    slices: int
    pixel_mm: float  # in-plane spacing (square pixels)
    slice_mm: float  # slice thickness = spacing between slices
    real_rows: int
    real_cols: int
    real_slices: int
    real_pixel_mm: float
    real_slice_mm: float


@dataclass
class Anchor:
    """One real MAMA-MIA patient the synthetic patient copies, plus its scaled geometry."""

    site: str
    collection: str
    mama_id: str
    patient_id: str  # DICOM PatientID in the collection's spelling
    pcr: int
    subtype: str | None
    er: float
    pr: float
    her2: float
    hr: float
    age: float
    grade: str | None
    menopause: str | None
    manufacturer: str
    model: str
    field_strength: float
    phase_times: list[int]
    geometry: Geometry
    echo_time: float
    repetition_time: float
    row: dict = field(default_factory=dict, repr=False)  # the full real MAMA-MIA row


def load_mama_mia(path: Path = MAMA_MIA_TABLE) -> pd.DataFrame:
    """Read the MAMA-MIA ``dataset_info`` sheet (the real table)."""
    return pd.read_excel(path, sheet_name="dataset_info")


def _num(value: object, default: float = math.nan) -> float:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return default
    return default if math.isnan(out) else out


def _parse_list(text: object) -> list[float]:
    if isinstance(text, str):
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return []
        if isinstance(value, (list, tuple)):
            return [float(v) for v in value]
    return []


def scale_geometry(view: str, rows: float, cols: float, slices: float, pixel_mm: float, slice_mm: float,
                   scale: float, max_slice_mm: float = 4.0) -> Geometry:
    """Scale a real matrix down by ``scale`` keeping the field of view (spacing grows by 1/scale).

    Through-plane the slice spacing grows by 1/scale but not beyond ``max(original, max_slice_mm)``
    so tumours (10-40 mm) keep several slices.
    """
    rows_i, cols_i, sl_i = int(rows), int(cols), int(slices)
    n_r = max(16, int(round(rows_i * scale)))
    n_c = max(16, int(round(cols_i * scale)))
    pix = pixel_mm * rows_i / n_r
    z_factor = min(1.0, max(scale, slice_mm / max_slice_mm))
    n_z = max(8, int(round(sl_i * z_factor)))
    return Geometry(view, n_r, n_c, n_z, round(pix, 4), round(slice_mm * sl_i / n_z, 4), rows_i, cols_i, sl_i,
                    pixel_mm, slice_mm)


def _patient_id(collection: str, mama_id: str) -> str:
    num = mama_id.split("_", 1)[1]
    if collection == "DUKE":
        return f"Breast_MRI_{int(num):03d}"
    if collection == "ISPY2":
        return f"ISPY2-{num}"
    if collection == "ISPY1":
        return f"ISPY1_{num}"
    return f"NACT_{num}"


def _subtype(row: pd.Series) -> str | None:
    hr, her2 = _num(row.get("hr")), _num(row.get("her2"))
    if not math.isnan(hr) and not math.isnan(her2):
        return _SUBTYPE_FROM_RECEPTORS[(int(hr), int(her2))]
    return _SUBTYPE_FROM_MAMA.get(str(row.get("tumor_subtype")), None)


def _site_fallbacks(rows: pd.DataFrame) -> dict[str, object]:
    """Per-site medians/modes used when one patient's acquisition field is missing."""
    def mode(col: str, default: object) -> object:
        s = rows[col].dropna()
        return s.mode().iloc[0] if len(s) else default

    return {
        "view": mode("view", "axial"), "num_phases": mode("num_phases", 4), "image_rows": mode("image_rows", 512),
        "num_slices": mode("num_slices", 80), "slice_thickness": mode("slice_thickness", 2.0),
        "pixel_spacing": mode("pixel_spacing", "[0.7, 0.7]"), "manufacturer": mode("manufacturer", "GE"),
        "scanner_model": mode("scanner_model", "Signa HDxt"), "field_strength": mode("field_strength", 1.5),
        "acquisition_times": mode("acquisition_times", "[0, 120, 240, 360]"),
        "echo_time": mode("echo_time", 2.0), "repetition_time": mode("repetition_time", 5.0),
    }


def select_anchors(site: SiteSpec, n: int, seed: int, scale: float, table: pd.DataFrame | None = None) -> list[Anchor]:
    """Draw ``n`` labelled real patients of ``site`` (deterministic for ``seed``), sorted by ID.

    Only rows with a pCR label of exactly 0 or 1 qualify (the stray 0.295 row is skipped).
    """
    table = load_mama_mia() if table is None else table
    rows = table[(table["dataset"] == site.collection) & (table["site"] == site.code)]
    rows = rows[rows["pcr"].isin([0.0, 1.0])]
    if rows.empty:
        raise ValueError(f"site {site.name}: no labelled MAMA-MIA rows for dataset={site.collection} site={site.code}")
    fb = _site_fallbacks(rows)
    rng = np.random.default_rng([seed, sum(site.name.encode())])
    take = min(n, len(rows))
    idx = np.sort(rng.choice(len(rows), size=take, replace=False))
    chosen = rows.iloc[idx].sort_values("patient_id")
    out: list[Anchor] = []
    for _, row in chosen.iterrows():
        def get(col: str) -> object:
            v = row.get(col)
            return fb[col] if v is None or (isinstance(v, float) and math.isnan(v)) else v

        times = _parse_list(get("acquisition_times"))
        n_ph = int(_num(get("num_phases"), len(times) or 4))
        if len(times) != n_ph or len(times) < 2 or times[0] != 0:
            times = _parse_list(fb["acquisition_times"])  # inconsistent record: site's typical timing
        spacing = _parse_list(get("pixel_spacing")) or _parse_list(fb["pixel_spacing"])
        rows_n = _num(get("image_rows"), 512.0)
        cols_n = _num(row.get("image_columns"), rows_n)
        slices_n = _num(get("num_slices"), 80.0)
        thick = _num(get("slice_thickness"), 2.0)
        if site.collection == "ISPY2":
            # the TCIA series is "uni-lateral cropped": half the in-plane field of view (about 256 x 256
            # at 0.6-0.7 mm, as BreastDCEDL's metadata shows), at most ~200 mm through-plane
            rows_n, cols_n = rows_n // 2, cols_n // 2
            slices_n = min(slices_n, math.ceil(ISPY2_MAX_COVER_MM / thick))
        view = str(get("view")).strip().lower()
        geom = scale_geometry(view, rows_n, cols_n, slices_n, float(spacing[0]), thick, scale)
        mama_id = str(row["patient_id"])
        out.append(Anchor(
            site=site.name, collection=site.collection, mama_id=mama_id,
            patient_id=_patient_id(site.collection, mama_id), pcr=int(row["pcr"]), subtype=_subtype(row),
            er=_num(row.get("er")), pr=_num(row.get("pr")), her2=_num(row.get("her2")), hr=_num(row.get("hr")),
            age=_num(row.get("age")),
            grade=None if pd.isna(row.get("nottingham_grade")) else str(row.get("nottingham_grade")),
            menopause=None if pd.isna(row.get("menopause")) else str(row.get("menopause")),
            manufacturer=str(get("manufacturer")).strip(), model=str(get("scanner_model")).strip(),
            field_strength=_num(get("field_strength"), 1.5), phase_times=[int(round(t)) for t in times],
            geometry=geom, echo_time=_num(get("echo_time"), 2.0), repetition_time=_num(get("repetition_time"), 5.0),
            row=row.to_dict(),
        ))
    return out


def resolve_sites(names: list[str] | tuple[str, ...] | None) -> list[SiteSpec]:
    """Site specs for ``names`` (default :data:`DEFAULT_SITES`); unknown names raise, naming the choices.

    Besides the named sites, ``ISPY2:<code>`` / ``ISPY1:<code>`` select any other MAMA-MIA site.
    """
    out = []
    for name in names or DEFAULT_SITES:
        if name in KNOWN_SITES:
            out.append(KNOWN_SITES[name])
        elif ":" in name:
            coll, code = name.split(":", 1)
            coll = coll.upper()
            if coll not in {"ISPY1", "ISPY2"}:
                raise ValueError(f"unknown collection {coll!r} in site {name!r}; use ISPY1:<code> or ISPY2:<code>")
            out.append(SiteSpec(code if coll == "ISPY2" else f"ISPY1_{code}", coll, code, 40))
        else:
            raise ValueError(f"unknown site {name!r}; known: {sorted(KNOWN_SITES)} (or ISPY2:<code>, ISPY1:<code>)")
    return out
