"""The embedded semi-synthetic multi-site cohort: real anchors, phantom images, real DICOM, native tables.

``write_cohort(out)`` writes ``out/<site>/dicom/<patient>/...`` (DICOM), ``out/<site>/clinical.*``,
``out/<site>/Annotation_Boxes.xlsx``, ``out/truth.csv`` and ``out/cohort.json`` (docs/CONTRACTS.md §1,
docs/cohort.md). Deterministic for a seed: the same parameters give the same bytes.
"""

from __future__ import annotations

import json
import shutil
import zlib
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from common.parallel import map_with_progress
from simulation.clinical_writer import write_boxes, write_duke_clinical, write_ispy2_clinical, write_mama_mia_csv
from simulation.cohort_sites import DEFAULT_SITES, Anchor, SiteSpec, load_mama_mia, resolve_sites, select_anchors
from simulation.dicom_writer import ScannerInfo, StudyContext, safe_name, uid, write_series
from simulation.early_visit import plan_early_visit
from simulation.phantom import Nuisance, draw_anatomy, draw_phenotype, fov_centre, frame, phenotype_dict, render

COHORT_VERSION = "1"


@dataclass(frozen=True)
class CohortConfig:
    """Generator parameters: the one place their defaults are decided (written to cohort.json)."""

    sites: tuple[str, ...] = DEFAULT_SITES
    #: Patients per site; None = each site's own default size (30-50, like real sites differ).
    patients_per_site: int | None = None
    seed: int = 0
    #: Matrix scale (in-plane and through-plane); spacing grows by 1/scale so the field of view stays real.
    scale: float = 0.25
    #: Strength of the pCR information in the images (0 = none).
    signal: float = 1.0
    t2: bool = False
    early_visit: bool = False
    workers: int = 2
    version: str = field(default=COHORT_VERSION)


_ORD = {1: "1st", 2: "2nd", 3: "3rd"}

#: Duke SeriesDescription schemes per vendor: (pre, post template, first series number);
#: spellings from data/duke/duke_series_descriptions.md. {o} = ordinal (1st..), {k} = phase number.
DUKE_SCHEMES = {
    "GE": (("ax dyn pre", "ax dyn {o} pass", 3), ("ax 3d dyn", "Ph{k}/ax 3d dyn", 600),
           ("Ax Vibrant MultiPhase", "Ph{k}/Ax Vibrant MultiPhase", 400), ("ax dynamic", "Ph{k}/ax dynamic", 500)),
    "SIEMENS": (("t1_fl3d_tra_dynVIEWS_spair_ pre", "t1_fl3d_tra_dynVIEWS_spair {o} pass", 7),
                ("ax 3d dyn pre", "ax 3d dyn {o} pass", 5)),
}
ISPY2_SERIES = "ISPY2 VOLSER uni-lateral cropped original DCE"
ISPY1_SERIES = "Dynamic-3dfgre"
T2_SERIES = {("GE", "axial"): "Ax T2 FSE", ("GE", "sagittal"): "Sag T2 FSE", ("SIEMENS", "axial"): "t2_tse_tra",
             ("SIEMENS", "sagittal"): "t2_tse_sag", ("Philips", "axial"): "T2W_TSE_ax",
             ("Philips", "sagittal"): "T2W_TSE_sag"}
#: Scanner gain, stored bits and rescale slope per vendor (Philips stores value/slope, slope in the header).
VENDOR = {"GE": (3.0, 16, 1.0), "SIEMENS": (1.2, 12, 1.0), "Philips": (4.0, 16, 1.7)}


def _key(*parts: object) -> int:
    return zlib.crc32("|".join(str(p) for p in parts).encode())


def _ordinal(k: int) -> str:
    return _ORD.get(k, f"{k}th")


def duke_descriptions(manufacturer: str, n_phases: int, scheme: int) -> tuple[list[str], list[int]]:
    """SeriesDescriptions and SeriesNumbers of a Duke-style DCE (pre + posts) for a vendor scheme."""
    schemes = DUKE_SCHEMES.get(manufacturer.upper() if manufacturer.upper() == "SIEMENS" else "GE")
    pre, post, first = schemes[scheme % len(schemes)]
    descs = [pre] + [post.format(o=_ordinal(k), k=k) for k in range(1, n_phases)]
    return descs, [first + i for i in range(n_phases)]


def site_nuisance(site: str, anchor: Anchor, seed: int, rng: np.random.Generator) -> Nuisance:
    """Site (offset, bias amplitude and shape) + vendor (gain, bits, slope) + field (noise) + patient jitter."""
    srng = np.random.default_rng([seed, _key("site", site)])
    offset, bias_amp = srng.uniform(0.0, 40.0), srng.uniform(0.1, 0.4)
    site_coef = srng.normal(0.0, 1.0, 7)
    gain, bits, slope = VENDOR.get(anchor.manufacturer, VENDOR["GE"])
    gain *= float(np.exp(srng.normal(0.0, 0.15)))  # site calibration
    noise = (6.0 if anchor.field_strength >= 2.5 else 10.0) * gain * float(np.exp(srng.normal(0.0, 0.2)))
    coef = tuple(float(c) for c in site_coef + rng.normal(0.0, 0.4, 7))
    return Nuisance(gain=gain * float(np.exp(rng.normal(0.0, 0.1))), offset=float(offset * gain / 3.0),
                    bias_amp=float(bias_amp), bias_coef=coef, noise_sigma=float(noise), bits_stored=bits,
                    rescale_slope=slope)


def _study_context(site: SiteSpec, a: Anchor, seed: int, visit: int, when: date, rng: np.random.Generator,
                   n_index: int) -> tuple[StudyContext, str]:
    """Fake identifiers and the NBIA-style study folder name for one visit."""
    pid = a.patient_id
    suffix = f"{_key(seed, pid, visit) % 100000:05d}"
    d = when.strftime("%m-%d-%Y")
    if site.collection == "ISPY2":
        num = pid.split("-")[-1]
        desc, folder = f"ISPY2MRIT{visit}", f"{d}-{num}T{visit}-ISPY2MRIT{visit}-{suffix}"
        trial = "ISPY2"
    elif site.collection == "DUKE":
        desc = "MRI BREAST BILATERAL W/WO"
        folder, trial = f"{d}-NA-{safe_name(desc)}-{suffix}", "DUKE-BREAST-MRI"
    else:
        desc = "MRI BREAST UNILATERAL W/WO"
        folder = f"{d}-NA-{safe_name(desc)}-{suffix}"
        trial = "ISPY1-ACRIN-6657" if site.collection == "ISPY1" else "NACT"
    birth_year = when.year - int(a.age if a.age == a.age else 50)
    ctx = StudyContext(
        patient_id=pid, patient_name=f"FAKE^{site.name}^{n_index:03d}", birth_date=f"{birth_year}0101",
        age_years=a.age, accession=f"FAKEACC{_key(seed, pid, 'acc', visit) % 10**8:08d}",
        institution=f"FAKE INSTITUTION {site.name}", study_uid=uid(seed, pid, "study", visit),
        frame_uid=uid(seed, pid, "frame", visit), study_date=when.strftime("%Y%m%d"),
        study_time_s=int(rng.integers(8 * 3600, 17 * 3600)), study_description=desc,
        study_id=f"{_key(seed, pid, 'sid', visit) % 10000}", trial_protocol=trial, trial_site=site.name,
        time_point=f"T{visit}",
    )
    return ctx, folder


def _patient_job(job: tuple[SiteSpec, Anchor, CohortConfig, int, str]) -> dict[str, object]:
    """Render and write one patient (all visits and series); returns its truth row."""
    site, a, cfg, index, out = job
    rng = np.random.default_rng([cfg.seed, _key("patient", site.name, a.patient_id)])
    anatomy = draw_anatomy(rng)
    pheno = draw_phenotype(a, cfg.signal, rng, anatomy)
    nu = site_nuisance(site.name, a, cfg.seed, rng)
    geom = a.geometry
    unilateral = site.collection == "ISPY2" or geom.view == "sagittal"
    centre = fov_centre(geom, anatomy, pheno.side) if unilateral else fov_centre(geom, anatomy, "L")
    if unilateral and geom.view != "sagittal":
        centre = ((1.0 if pheno.side == "L" else -1.0) * anatomy.breast_dx, centre[1], centre[2])
    sc = ScannerInfo(a.manufacturer, a.model, a.field_strength, a.repetition_time, a.echo_time, nu.bits_stored,
                     nu.rescale_slope, patient_position="FFP")
    order = {"GE": "desc", "SIEMENS": "asc"}.get(a.manufacturer, "random")
    if rng.random() < 0.2:
        order = "random"
    times = a.phase_times
    if site.style == "duke":
        times = times[:5]
    scheme = int(rng.integers(0, 4))
    start = date(1990, 1, 1) + timedelta(days=int(rng.integers(0, 3650))) if site.collection == "DUKE" else \
        date(2002 if site.collection != "ISPY2" else 2010, 1, 1) + timedelta(days=int(rng.integers(0, 1800)))
    pdir = Path(out) / site.name / "dicom" / a.patient_id
    row: dict[str, object] = {}
    n_files = 0
    early = plan_early_visit(site.collection, a.mama_id, a.pcr, cfg.seed) if cfg.early_visit else None
    visits = [0, 1] if cfg.early_visit and (early is None or early.present) else [0]
    early_scale = pheno.early_visit_shrink if early is None else early.diameter_scale
    for visit in visits:
        when = start + timedelta(days=0 if visit == 0 else int(rng.integers(18, 35)))
        ctx, study_folder = _study_context(site, a, cfg.seed, visit, when, rng, index)
        shift = np.zeros(3) if visit == 0 else rng.normal(0.0, 3.0, 3)
        origin, u, v, n = frame(geom, tuple(np.asarray(centre) + shift))
        phases, t2_img, box = render(geom, origin, u, v, n, anatomy, pheno, times, nu, rng,
                                     diameter_scale=1.0 if visit == 0 else early_scale, t2=cfg.t2)
        sdir = pdir / study_folder
        if site.style == "duke":
            descs, numbers = duke_descriptions(a.manufacturer, len(times), scheme)
            for p, (vol, t) in enumerate(zip(phases, times)):
                suid = uid(cfg.seed, a.patient_id, visit, "series", p)
                folder = sdir / f"{numbers[p]}.000000-{safe_name(descs[p])}-{_key(suid) % 100000:05d}"
                n_files += write_series(folder, ctx, sc, geom, origin, u, v, n, suid, numbers[p], descs[p],
                                        [(vol, t, p + 1)], order, rng, n_temporal=len(times))
            phase_series = ";".join(descs)
        else:
            desc = ISPY2_SERIES if site.collection == "ISPY2" else ISPY1_SERIES
            number = int(rng.choice([600, 700, 800, 1000]))
            suid = uid(cfg.seed, a.patient_id, visit, "series", "dce")
            folder = sdir / f"{number}.000000-{safe_name(desc)}-{_key(suid) % 100000:05d}"
            blocks = [(vol, t, p + 1) for p, (vol, t) in enumerate(zip(phases, times))]
            n_files += write_series(folder, ctx, sc, geom, origin, u, v, n, suid, number, desc, blocks, order, rng,
                                    n_temporal=len(times))
            phase_series = "single-series"
            if visit == 0:
                row["dce_series_uid"] = suid
        t2_desc = ""
        if t2_img is not None:
            t2_desc = T2_SERIES.get((a.manufacturer, geom.view), "T2")
            suid = uid(cfg.seed, a.patient_id, visit, "series", "t2")
            folder = sdir / f"{2}.000000-{safe_name(t2_desc)}-{_key(suid) % 100000:05d}"
            n_files += write_series(folder, ctx, sc, geom, origin, u, v, n, suid, 2, t2_desc, [(t2_img, 0, 1)],
                                    order, rng, n_temporal=1, t2=True)
        if visit == 0:
            row.update(
                patient_id=a.patient_id, site=site.name, collection=site.collection, anchor_id=a.mama_id, pcr=a.pcr,
                subtype=a.subtype or "", er=a.er, pr=a.pr, her2=a.her2, hr=a.hr, age=a.age,
                menopause=a.menopause or "", grade=a.grade or "", manufacturer=a.manufacturer, model=a.model,
                field_strength=a.field_strength, view=geom.view, n_phases=len(times),
                phase_times=";".join(str(t) for t in times), phase_series=phase_series,
                tumour_box=";".join(str(b) for b in box), shape=f"{geom.slices}x{geom.rows}x{geom.cols}",
                spacing=f"{geom.slice_mm}x{geom.pixel_mm}x{geom.pixel_mm}",
                origin=";".join(f"{c:.4f}" for c in origin), orientation=";".join(f"{c:g}" for c in (*u, *v)),
                instance_order=order, study_date=ctx.study_date, study_dir=str(sdir.relative_to(Path(out) / site.name)),
                t2_series=t2_desc, rescale_slope=nu.rescale_slope, gain=round(nu.gain, 4),
                offset=round(nu.offset, 3), noise_sigma=round(nu.noise_sigma, 3), bias_amp=round(nu.bias_amp, 4),
            )
        else:
            row["early_visit_box"] = ";".join(str(b) for b in box)
            row["early_visit_dir"] = str(sdir.relative_to(Path(out) / site.name))
            row["early_visit_date"] = ctx.study_date
    row.update(phenotype_dict(pheno))
    if cfg.early_visit:  # what the early visit's tumour change followed (simulation.early_visit)
        row.update(early_visit=int(len(visits) > 1), early_visit_scale=round(early_scale, 4) if len(visits) > 1 else "",
                   early_ftv_pch=round(early.ftv_pch, 3) if early is not None and early.present else "",
                   early_ftv_source="phantom" if early is None else early.source)
    row["signal"] = cfg.signal
    row["n_files"] = n_files
    return row


def write_cohort(out: Path, sites: list[str] | tuple[str, ...] | None = None, patients_per_site: int | None = None,
                 seed: int = 0, scale: float = CohortConfig.scale, signal: float = CohortConfig.signal,
                 t2: bool = False, early_visit: bool = False, workers: int = CohortConfig.workers,
                 progress: bool = True, overwrite: bool = False) -> Path:
    """Write the whole cohort under ``out``; returns ``out``. See docs/cohort.md.

    An earlier cohort in ``out`` (``cohort.json`` present) is replaced only with ``overwrite``.
    """
    if scale <= 0 or scale > 1:
        raise ValueError(f"scale must be in (0, 1], got {scale}")
    if signal < 0:
        raise ValueError(f"signal must be >= 0, got {signal}")
    if patients_per_site is not None and patients_per_site < 1:
        raise ValueError(f"patients_per_site must be >= 1, got {patients_per_site}")
    cfg = CohortConfig(tuple(sites or DEFAULT_SITES), patients_per_site, seed, scale, signal, t2, early_visit, workers)
    specs = resolve_sites(list(cfg.sites))
    out = Path(out)
    _prepare_out(out, specs, overwrite)
    table = load_mama_mia()
    anchors = {s.name: select_anchors(s, patients_per_site or s.n_default, seed, scale, table) for s in specs}
    jobs = [(s, a, cfg, i + 1, str(out)) for s in specs for i, a in enumerate(anchors[s.name])]
    rows: list[dict[str, object]] = map_with_progress(_patient_job, jobs, workers=workers, desc="synth patients",
                                                      unit="pt", progress=progress)
    truth = pd.DataFrame(rows)
    for s in specs:
        _write_site_tables(out / s.name, s, anchors[s.name], truth[truth["site"] == s.name], list(table.columns))
    truth.to_csv(out / "truth.csv", index=False, lineterminator="\n")
    meta = {k: v for k, v in asdict(cfg).items() if k != "workers"}  # workers do not change the output
    meta |= {"sites": list(cfg.sites), "n_patients": {s.name: len(anchors[s.name]) for s in specs},
             "n_files": int(truth["n_files"].sum()), "source_table": "MAMA-MIA clinical_and_imaging_info.xlsx"}
    (out / "cohort.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


_OUR_SITE_FILES = {"dicom", "clinical.xlsx", "clinical.csv", "Annotation_Boxes.xlsx"}


def _prepare_out(out: Path, specs: list[SiteSpec], overwrite: bool) -> None:
    """Create ``out``. An earlier complete cohort there (``cohort.json``) is replaced only with
    ``overwrite``; leftovers of an interrupted run (site folders holding only generator outputs) are
    removed; anything else in a site folder we would write makes it refuse."""
    old = out / "cohort.json"
    if old.is_file():
        if not overwrite:
            raise ValueError(f"{out} already holds a cohort (cohort.json); choose a new directory or pass --overwrite")
        for name in json.loads(old.read_text()).get("sites", []):
            if (out / name).is_dir():
                shutil.rmtree(out / name)
        for f in ("truth.csv", "cohort.json"):
            (out / f).unlink(missing_ok=True)
    for s in specs:
        site_dir = out / s.name
        if site_dir.is_dir():
            foreign = sorted(p.name for p in site_dir.iterdir() if p.name not in _OUR_SITE_FILES)
            if foreign:
                raise ValueError(f"{site_dir} holds files the generator did not write ({', '.join(foreign[:5])}); "
                                 "choose a new output directory")
            shutil.rmtree(site_dir)
    out.mkdir(parents=True, exist_ok=True)


def _write_site_tables(site_dir: Path, s: SiteSpec, anchors: list[Anchor], truth: pd.DataFrame,
                       columns: list[str]) -> None:
    boxes = {r.patient_id: tuple(int(v) for v in r.tumour_box.split(";")) for r in truth.itertuples()}
    write_boxes(site_dir / "Annotation_Boxes.xlsx", {a.patient_id: boxes[a.patient_id] for a in anchors})
    if s.clinical_format == "duke":
        write_duke_clinical(site_dir / "clinical.xlsx", anchors)
    elif s.clinical_format == "ispy2":
        write_ispy2_clinical(site_dir / "clinical.xlsx", anchors)
    else:
        by_id = truth.set_index("patient_id")
        overrides = {}
        for a in anchors:
            r = by_id.loc[a.patient_id]
            g = a.geometry
            overrides[a.patient_id] = {
                "image_rows": g.rows, "image_columns": g.cols, "num_slices": g.slices,
                "pixel_spacing": f"[{g.pixel_mm}, {g.pixel_mm}]", "slice_thickness": g.slice_mm,
                "num_phases": int(r.n_phases),
                "acquisition_times": "[" + ", ".join(str(r.phase_times).split(";")) + "]",
                "tcia_series_uid": r.get("dce_series_uid", ""), "patient_id": a.patient_id,
                "site": s.name, "acquisition_date": str(r.study_date),
            }
        write_mama_mia_csv(site_dir / "clinical.csv", anchors, overrides, columns)
