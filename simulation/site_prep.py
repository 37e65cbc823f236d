"""Site caches for an experiment: the embedded cohort (generated when missing) or a real TCIA collection
split into sites; caches with the current preprocessing hash are reused."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from common.config import PrepConfig
from simulation.experiment_config import ExperimentConfig


def prepare_sites(cfg: ExperimentConfig, out_dir: Path, *, clinical: Path | None = None,
                  progress: Callable[[str], None] = print) -> dict[str, Path]:
    """Site caches for ``cfg``: the embedded cohort (generated when missing) or a real TCIA collection.

    Existing caches with the same preprocessing hash are reused.
    """
    out_dir = Path(out_dir)
    if cfg.dataset == "embedded":
        from common.hashing import stable_hash

        # One cohort folder per generator setting, so --quick and the default run never overwrite each other.
        setting: dict[str, Any] = {"sites": list(cfg.cohort_sites or ()), "patients_per_site": cfg.patients_per_site,
                                   "seed": cfg.cohort_seed}
        if cfg.early_visit:  # only when set, so the folders of earlier cohorts keep their names
            setting["early_visit"] = True
        key = stable_hash(setting)[:8]
        cohort = out_dir / f"cohort-{key}"
        if not (cohort / "cohort.json").is_file():
            from simulation.cohort import write_cohort

            progress(f"generating the embedded cohort in {cohort} ...")
            kwargs: dict[str, Any] = {"seed": cfg.cohort_seed, "early_visit": cfg.early_visit}
            if cfg.cohort_sites:
                kwargs["sites"] = list(cfg.cohort_sites)
            if cfg.patients_per_site:
                kwargs["patients_per_site"] = cfg.patients_per_site
            write_cohort(cohort, **kwargs)
        caches: dict[str, Path] = {}
        for site_dir in sorted(p for p in cohort.iterdir() if (p / "dicom").is_dir()):
            cache = out_dir / "caches" / f"{cohort.name}-{cfg.prep.hash()[:8]}" / site_dir.name
            if not _cache_is_current(cache, cfg.prep):
                clin = next((site_dir / n for n in ("clinical.xlsx", "clinical.csv") if (site_dir / n).is_file()),
                            None)
                boxes = site_dir / "Annotation_Boxes.xlsx"
                progress(f"preparing site {site_dir.name} ...")
                _prepare_one(site_dir / "dicom", clin, cache, cfg.prep, boxes=boxes if boxes.is_file() else None,
                             site=site_dir.name)
            caches[site_dir.name] = cache
        if not caches:
            raise FileNotFoundError(f"no site folders with dicom/ under {cohort}")
        return caches
    return _prepare_real(cfg, out_dir, clinical, progress)


def _prepare_one(dicom_root: Path, clinical: Path | None, cache: Path, prep: PrepConfig, *,
                 fmt: str | None = None, boxes: Path | None = None, site: str | None = None) -> Path:
    """Prepare one DICOM tree + clinical table into a site cache (``common.preprocess.pipeline``)."""
    from common.preprocess.pipeline import run_prepare

    result = run_prepare(dicom_root, clinical, cache, prep, clinical_format=fmt, boxes=boxes, site=site,
                         workers=_workers(), progress=False)
    print(result.summary().splitlines()[0], flush=True)
    return cache


def _workers() -> int:
    """Worker processes for preparation: the CPU cores this process may use."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _cache_is_current(cache: Path, prep: PrepConfig) -> bool:
    """A finished cache (manifest written) prepared with ``prep``'s hash."""
    from common.site_cache import MANIFEST, read_prep_hash

    try:
        return read_prep_hash(cache) == prep.hash() and (cache / MANIFEST).is_file()
    except (OSError, ValueError):
        return False


def _prepare_real(cfg: ExperimentConfig, out_dir: Path, clinical: Path | None,
                  progress: Callable[[str], None]) -> dict[str, Path]:
    """A real collection: prepare it as one cache, then split it into site caches by ``cfg.partition``."""
    from common import paths
    from common.site_cache import read_manifest
    from simulation.partition import assign_from_dicom, assign_from_table, make_partition, split_caches

    if not cfg.data_root:
        raise ValueError(f"--dataset {cfg.dataset} needs --data-root (the TCIA download folder)")
    root = Path(cfg.data_root)
    if not root.is_dir():
        raise FileNotFoundError(f"data root not found: {root}")
    default_tables = {"duke": paths.DUKE_CLINICAL, "ispy2": paths.ISPY2_CLINICAL, "mama-mia": paths.MAMA_MIA_TABLE}
    table = Path(clinical) if clinical else default_tables[cfg.dataset]
    # Tumour boxes: next to the download or the clinical table, else the public Duke file for Duke.
    candidates = [root / "Annotation_Boxes.xlsx", table.parent / "Annotation_Boxes.xlsx"]
    boxes = next((b for b in candidates if b.is_file()), paths.DUKE_BOXES if cfg.dataset == "duke" else None)
    prep = cfg.prep
    if boxes is None and prep.crop == "tumour":
        progress(f"no tumour boxes for {cfg.dataset}: using crop='breast' (whole-breast volume)")
        prep = replace(prep, crop="breast")
    whole = out_dir / "caches" / f"_{cfg.dataset}_all"
    if not _cache_is_current(whole, prep):
        progress(f"preparing {root} ({cfg.dataset}) into {whole} ...")
        _prepare_one(root, table, whole, prep, fmt=cfg.dataset, boxes=boxes)
    manifest = read_manifest(whole)
    if cfg.partition in ("trial_site", "site") and cfg.dataset != "mama-mia":
        try:
            assign = assign_from_dicom(root, by="trial_site")
        except ValueError:
            assign = _assign_from_mama_mia(manifest)
    elif cfg.partition == "site":
        assign = _assign_from_mama_mia(manifest)
    else:
        assign = assign_from_table(manifest, by=cfg.partition)
    assign = {pid: s for pid, s in assign.items() if pid in set(manifest["patient_id"])} or \
        _assign_by_key(manifest, assign)
    part = make_partition(assign, key=cfg.partition, min_site_size=cfg.min_site_size, keep=cfg.heldout)
    progress(f"partition by {cfg.partition}: " + ", ".join(f"{s} ({n})" for s, n in part.sizes().items()))
    return split_caches([whole], part.site_of(), out_dir / "caches" / cfg.partition)


def _assign_by_key(manifest: pd.DataFrame, assign: dict[str, str]) -> dict[str, str]:
    """Match DICOM PatientIDs / table ids to manifest ids across spellings (``id_key``)."""
    from common.patient_id import id_key

    by_key = {id_key(k): v for k, v in assign.items()}
    return {pid: by_key[id_key(pid)] for pid in manifest["patient_id"] if id_key(pid) in by_key}


def _assign_from_mama_mia(manifest: pd.DataFrame) -> dict[str, str]:
    """Patient -> MAMA-MIA ``site`` (trial-site code) by the id comparison key."""
    from common import paths

    table = pd.read_excel(paths.MAMA_MIA_TABLE, sheet_name="dataset_info", usecols=["patient_id", "site"])
    return _assign_by_key(manifest, dict(zip(table["patient_id"].astype(str), table["site"].astype(str))))
