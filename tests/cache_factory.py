"""Build tiny valid site caches (docs/CONTRACTS.md §2) with a planted pCR signal, for unit tests that
must not depend on the DICOM pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from common.config import PrepConfig, to_dict
from common.schema import CANONICAL_COLUMNS
from common.site_cache import KINETIC_FEATURES as KINETIC_COLUMNS
from common.site_cache import VOLUMES, write_cache_tables


def make_cache(root: str | Path, site: str = "SITEA", n: int = 60, *, seed: int = 0, signal: str = "image",
               strength: float = 1.0, pos_rate: float = 0.4, prep: PrepConfig | None = None,
               unlabelled: int = 0, id_prefix: str | None = None) -> Path:
    """Write a cache under ``root/site`` and return its path.

    ``signal``: "image" (pCR patients' tumour blob enhances more in post1/sub1; clinical noise),
    "clinical" (ER/HER2/grade carry the label; images noise-only), "both" or "none".
    """
    prep = prep or PrepConfig(shape=(32, 32, 32))
    rng = np.random.default_rng(seed)
    out = Path(root) / site
    (out / VOLUMES).mkdir(parents=True, exist_ok=True)
    prefix = id_prefix or f"{site}_"
    ids = [f"{prefix}{i:03d}" for i in range(n)]
    labels = (rng.random(n) < pos_rate).astype(int)
    labels[:2] = [0, 1]  # both classes always present
    z, y, x = np.meshgrid(*[np.arange(s) - s / 2 + 0.5 for s in prep.shape], indexing="ij")
    manifest, clinical, kinetics = [], [], []
    image_signal = signal in ("image", "both")
    clin_signal = signal in ("clinical", "both")
    for i, (pid, lab) in enumerate(zip(ids, labels)):
        radius = rng.uniform(3.0, 6.0)
        centre = rng.uniform(-3, 3, size=3)
        blob = np.exp(-((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) / (2 * radius**2))
        enh = 1.0 + (strength * (1.2 if lab else -0.2) if image_signal else 0.0) + rng.normal(0, 0.2)
        pre = 0.5 * blob + rng.normal(0, 0.3, prep.shape)
        post = pre + enh * blob + rng.normal(0, 0.3, prep.shape)
        chans = {"pre": pre, "post1": post, "sub1": post - pre}
        vol = np.stack([chans.get(c, np.zeros(prep.shape)) for c in prep.channels]).astype(np.float16)
        rel = f"{VOLUMES}/{pid}.npy"  # plain names: tests/test_train.py opens volumes/<pid>.npy
        np.save(out / rel, vol)
        is_unlab = i >= n - unlabelled
        manifest.append({
            "patient_id": pid, "site": site, "label": "" if is_unlab else int(lab),
            "phases": "pre;post1", "channels": ";".join(prep.channels),
            "shape": "x".join(map(str, prep.shape)), "spacing": f"{prep.spacing_mm} x {prep.spacing_mm} x {prep.spacing_mm}",
            "volume": rel, "prep_hash": prep.hash(), "manufacturer": "SIEMENS", "model": "Avanto",
            "field_strength": 1.5, "pixel_spacing": 0.7, "slice_thickness": 1.0, "repetition_time": 4.5,
            "echo_time": 1.8, "view": "axial", "series_choice": "factory", "t2_present": 0,
        })
        er = int(rng.random() < (0.2 if (clin_signal and lab) else 0.7 if clin_signal else 0.5))
        her2 = int(rng.random() < (0.8 if (clin_signal and lab) else 0.2 if clin_signal else 0.3))
        row = {c: np.nan for c in CANONICAL_COLUMNS}
        row.update({"patient_id": pid, "site": site, "source": "csv", "age": float(rng.normal(50, 10)),
                    "menopause": int(rng.random() < 0.5), "er": er, "pr": int(rng.random() < 0.5) if er else 0,
                    "her2": her2, "hr": er, "grade": int(rng.integers(1, 4)) if not clin_signal else (3 if lab else 2),
                    "t_stage": int(rng.integers(1, 4)), "n_stage": int(rng.integers(0, 3)), "nac": 1,
                    "anti_her2": her2, "pcr": np.nan if is_unlab else int(lab), "pcr_definition": "factory"})
        row["subtype"] = ("luminal_her2" if her2 else "luminal") if er else ("her2_pure" if her2 else "triple_negative")
        if rng.random() < 0.1:  # some missing clinical values
            row["age"] = np.nan
        clinical.append(row)
        k = {"patient_id": pid, "n_phases": 2}
        k.update({c: float(rng.normal(0, 1)) for c in KINETIC_COLUMNS})
        k["max_pe"] = float(100 * enh * blob.max() + rng.normal(0, 30))
        kinetics.append(k)
    write_cache_tables(out, pd.DataFrame(manifest), pd.DataFrame(clinical, columns=list(CANONICAL_COLUMNS)),
                       pd.DataFrame(kinetics), {"config": to_dict(prep), "hash": prep.hash()},
                       {"processed": ids, "skipped": [], "prep_hash": prep.hash()})
    return out
