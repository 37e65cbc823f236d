"""The site-cache format (docs/CONTRACTS.md §2): file names, manifest columns, atomic writer, reader.

The one owner of what a prepared site cache holds on disk. ``fedpcr prepare`` writes it, the client and
``common.data`` read it, the simulation's partitioner splits it. Importing this module is cheap (no torch,
no pandas): :func:`read_prep_hash` runs before a hospital imports torch. Table helpers import pandas
when called.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only
    import numpy as np
    import pandas as pd

#: ``{"config": PrepConfig as dict, "hash": PrepConfig.hash()}``; written last of the tables.
PREP_CONFIG = "prep_config.json"
#: One row per patient (columns :data:`MANIFEST_COLUMNS`).
MANIFEST = "manifest.csv"
#: Canonical clinical rows (``common.schema.CANONICAL_COLUMNS``), ``patient_id`` in the DICOM spelling.
CLINICAL = "clinical.csv"
#: Kinetic features per patient (columns :data:`KINETICS_COLUMNS`).
KINETICS = "kinetics.csv"
#: What the ``prepare`` run did (processed, skipped with reasons, ignored files, clinical issues).
REPORT = "report.json"
#: Folder of the per-patient ``float16`` volumes ``(C, Z, Y, X)``; the manifest's ``volume`` names the file.
VOLUMES = "volumes"

#: manifest.csv columns in file order -> whether every reader needs it (True) or it only describes the
#: acquisition (False). The one list: :data:`MANIFEST_COLUMNS` and :data:`MANIFEST_REQUIRED` derive from it.
_MANIFEST: dict[str, bool] = {
    "patient_id": True, "site": True, "label": True, "phases": False, "channels": True, "shape": True,
    "spacing": False, "volume": True, "prep_hash": True, "manufacturer": False, "model": False,
    "field_strength": False, "pixel_spacing": False, "slice_thickness": False, "repetition_time": False,
    "echo_time": False, "view": False, "t2_present": False, "n_phases": False, "phase_times": False,
    "crop_centre": False, "series_choice": False, "study_date": False, "study_uid": False, "dce_series": False,
    "t2_series": False, "tumour_box": False, "box_source": False,
    # a later visit (PrepConfig.visits): its volume (empty = the patient has no such visit), StudyDate and
    # days since the baseline StudyDate; one triple per LATER_VISITS entry
    "volume_early": False, "study_date_early": False, "days_early": False,
}
#: Later imaging visits a cache may hold besides the baseline (PrepConfig.visits[1:]); the manifest has
#: ``volume_<v>``, ``study_date_<v>`` and ``days_<v>`` for each.
LATER_VISITS: tuple[str, ...] = ("early",)
MANIFEST_COLUMNS: tuple[str, ...] = tuple(_MANIFEST)
MANIFEST_REQUIRED: tuple[str, ...] = tuple(c for c, needed in _MANIFEST.items() if needed)
#: The kinetic features (``common.preprocess.kinetics`` computes them) and the kinetics.csv columns.
KINETIC_FEATURES: tuple[str, ...] = ("time_to_peak", "max_pe", "early_pe", "late_pe", "ser", "uptake_rate",
                                     "washout_rate")
KINETICS_COLUMNS: tuple[str, ...] = ("patient_id", *KINETIC_FEATURES, "n_phases", "kinetic_region")


# ----------------------------------------------------------------------------- names

def volume_path(patient_id: str, visit: str | None = None) -> str:
    """Cache-relative volume file of a patient: ``volumes/<sanitised id>_<10 hex of sha256(raw id)>.npy``
    (``..._<visit>.npy`` for a later visit, e.g. ``early``).

    The hash of the raw ID keeps IDs that sanitise alike (``A B`` / ``A_B``, or ``AB`` / ``ab`` on a
    case-insensitive file system) in different files.
    """
    raw = str(patient_id)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", raw)[:80] or "_"
    digest = hashlib.sha256(raw.encode("utf-8")).hexdigest()[:10]
    tail = f"_{visit}" if visit and visit != "pre" else ""
    return f"{VOLUMES}/{safe}_{digest}{tail}.npy"


def visit_columns(visit: str) -> tuple[str, str, str]:
    """Manifest columns (volume, study date, days since baseline) of a later visit."""
    return f"volume_{visit}", f"study_date_{visit}", f"days_{visit}"


# ----------------------------------------------------------------------------- atomic writer

def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic(path: Path, write: Any, suffix: str = ".tmp") -> None:
    """Run ``write(fileobj)`` on a temporary file next to ``path``, fsync it, then ``os.replace`` it in."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a reader sees the old file or the new one, never half)."""
    _atomic(Path(path), lambda fh: fh.write(data))


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    write_bytes(path, (json.dumps(obj, indent=1) + "\n").encode("utf-8"))


def write_table(path: str | Path, frame: "pd.DataFrame") -> None:
    """Write a DataFrame as CSV (no index, ``\\n`` line ends) atomically."""
    data = frame.to_csv(index=False, lineterminator="\n").encode("utf-8")
    write_bytes(path, data)


def write_volume(cache_dir: str | Path, patient_id: str, volume: "np.ndarray", visit: str | None = None) -> str:
    """Save one patient's volume (of ``visit``, default the baseline) atomically; returns its cache-relative
    path (the manifest's ``volume`` / ``volume_<visit>``)."""
    import numpy as np

    rel = volume_path(patient_id, visit)
    _atomic(Path(cache_dir) / rel, lambda fh: np.save(fh, volume, allow_pickle=False), suffix=".tmp.npy")
    return rel


def write_prep_config(cache_dir: str | Path, config: dict[str, Any], prep_hash: str) -> None:
    """Write ``prep_config.json`` = ``{"config": ..., "hash": ...}``."""
    write_json(Path(cache_dir) / PREP_CONFIG, {"config": config, "hash": prep_hash})


def write_cache_tables(cache_dir: str | Path, manifest: "pd.DataFrame", clinical: "pd.DataFrame | None",
                       kinetics: "pd.DataFrame | None", prep: dict[str, Any], report: dict[str, Any]) -> None:
    """Write a cache's tables (volumes already in place): manifest, clinical, kinetics, prep config, report.

    ``prep`` is the ``{"config", "hash"}`` dict; a ``None`` table is not written. Each file is replaced
    atomically.
    """
    out = Path(cache_dir)
    write_table(out / MANIFEST, manifest)
    if clinical is not None:
        write_table(out / CLINICAL, clinical)
    if kinetics is not None:
        write_table(out / KINETICS, kinetics)
    write_prep_config(out, prep["config"], str(prep["hash"]))
    write_json(out / REPORT, report)


# ----------------------------------------------------------------------------- reader

def read_prep_config(cache_dir: str | Path) -> dict[str, Any]:
    """``prep_config.json`` as ``{"config": {...}, "hash": str}``; FileNotFoundError / ValueError name the file."""
    path = Path(cache_dir) / PREP_CONFIG
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"site cache file missing: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict) or "hash" not in data:
        raise ValueError(f"{path}: expected {{'config': {{...}}, 'hash': '...'}}")
    if not isinstance(data["hash"], str) or not data["hash"].strip():
        raise ValueError(f"{path}: 'hash' must be a non-empty string, got {data['hash']!r}")
    return data


def read_prep_hash(cache_dir: str | Path) -> str:
    """The prep hash recorded in a cache's ``prep_config.json`` (no torch, no pandas; safe before either)."""
    return str(read_prep_config(cache_dir)["hash"])


def read_table(cache_dir: str | Path, name: str, required: tuple[str, ...] = ("patient_id",)) -> "pd.DataFrame":
    """One CSV of the cache, ``patient_id`` as text; a missing file, unreadable file or missing
    ``required`` column raises naming the file."""
    import pandas as pd

    path = Path(cache_dir) / name
    if not path.is_file():
        raise FileNotFoundError(f"site cache file missing: {path}")
    try:
        frame = pd.read_csv(path, dtype={"patient_id": str}, keep_default_na=True)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    return frame


def read_manifest(cache_dir: str | Path) -> "pd.DataFrame":
    """``manifest.csv`` with every :data:`MANIFEST_REQUIRED` column checked (the error names the file)."""
    return read_table(cache_dir, MANIFEST, MANIFEST_REQUIRED)


def read_report(cache_dir: str | Path) -> dict[str, Any]:
    """``report.json`` of a cache (``{}`` when absent)."""
    path = Path(cache_dir) / REPORT
    if not path.is_file():
        return {}
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc


__all__ = ["CLINICAL", "KINETICS", "KINETICS_COLUMNS", "KINETIC_FEATURES", "LATER_VISITS", "MANIFEST",
           "MANIFEST_COLUMNS", "MANIFEST_REQUIRED", "PREP_CONFIG", "REPORT", "VOLUMES", "read_manifest",
           "read_prep_config", "read_prep_hash", "read_report", "read_table", "visit_columns", "volume_path",
           "write_bytes", "write_cache_tables", "write_json", "write_prep_config", "write_table", "write_volume"]
