"""Reference baselines every experiment reports: clinical-only logistic regression and Braman's
semi-quantitative kinetic model. Both fit on training patients only and share one small interface.

(Image-only and clinical-only networks are ModelConfig variants: ``use_clinical=False`` / ``use_image=False``.)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.feature_selection import VarianceThreshold
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from common.data import SiteCache
from common.schema import MODEL_CLINICAL_FEATURES, encode_clinical
from common.site_cache import KINETIC_FEATURES, KINETICS

# KINETIC_FEATURES: Braman et al. kinetic features (the cache's kinetics table), n_phases excluded.

Part = tuple[SiteCache, Sequence[str]]


class Baseline:
    """fit(parts) on [(cache, training ids), ...] then predict(cache, ids) -> pCR probabilities."""

    name = "baseline"

    def __init__(self) -> None:
        self.pipeline: Pipeline | None = None

    def features(self, cache: SiteCache, ids: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def make_pipeline(self) -> Pipeline:
        raise NotImplementedError

    def fit(self, parts: Sequence[Part]) -> Baseline:
        xs, ys = [], []
        for cache, ids in parts:
            ids = list(ids)
            y = cache.labels(ids)
            if np.isnan(y).any():
                raise ValueError(f"{self.name}: unlabelled patients among training ids of {cache.path}")
            xs.append(self.features(cache, ids))
            ys.append(y)
        x, y = np.concatenate(xs), np.concatenate(ys).astype(int)
        if len(np.unique(y)) < 2:
            raise ValueError(f"{self.name}: training labels hold a single class; cannot fit")
        self.pipeline = self.make_pipeline().fit(x, y)
        return self

    def predict(self, cache: SiteCache, ids: Sequence[str]) -> np.ndarray:
        if self.pipeline is None:
            raise RuntimeError(f"{self.name}: fit() before predict()")
        return self.pipeline.predict_proba(self.features(cache, list(ids)))[:, 1]


class ClinicalLogistic(Baseline):
    """Logistic regression on the fixed clinical encoding (values + missing indicators); no fitted scaling."""

    name = "clinical_logistic"

    def __init__(self, features: tuple[str, ...] = MODEL_CLINICAL_FEATURES, C: float = 1.0) -> None:
        super().__init__()
        self.feature_names = features
        self.C = C

    def features(self, cache: SiteCache, ids: Sequence[str]) -> np.ndarray:
        values, present = encode_clinical(cache.clinical.reindex(list(ids)), self.feature_names)
        return np.concatenate([values, present], axis=1)

    def make_pipeline(self) -> Pipeline:
        return make_pipeline(VarianceThreshold(0.0), LogisticRegression(C=self.C, max_iter=2000))


def read_kinetics(cache: SiteCache) -> pd.DataFrame:
    """CACHE/kinetics.csv indexed by patient_id (clear error naming the file when absent or malformed)."""
    path = Path(cache.path) / KINETICS
    if not path.is_file():
        raise FileNotFoundError(f"kinetic features missing: {path}")
    table = pd.read_csv(path, dtype={"patient_id": str})
    missing = [c for c in ("patient_id", *KINETIC_FEATURES) if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    return table.drop_duplicates("patient_id").set_index("patient_id")


class KineticLogistic(Baseline):
    """Braman's pharmacokinetic baseline: median imputation + standardisation with TRAINING statistics,
    then logistic regression on the semi-quantitative kinetic features."""

    name = "kinetic_logistic"

    def __init__(self, C: float = 1.0) -> None:
        super().__init__()
        self.C = C

    def features(self, cache: SiteCache, ids: Sequence[str]) -> np.ndarray:
        table = read_kinetics(cache)
        absent = [i for i in ids if i not in table.index]
        if absent:
            warnings.warn(f"{cache.path / KINETICS}: no kinetic features for patients {absent[:5]}"
                          f"{' ...' if len(absent) > 5 else ''}; imputed", stacklevel=2)
        rows = table.reindex(list(ids))[list(KINETIC_FEATURES)]
        return rows.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)

    def make_pipeline(self) -> Pipeline:
        return make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(),
                             LogisticRegression(C=self.C, max_iter=2000))


BASELINES: dict[str, type[Baseline]] = {"clinical_logistic": ClinicalLogistic, "kinetic_logistic": KineticLogistic}


def make_baseline(name: str) -> Baseline:
    """A fresh baseline by name (see BASELINES)."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {sorted(BASELINES)}")
    return BASELINES[name]()
