"""Load site caches (format: ``common.site_cache``, docs/CONTRACTS.md §2) and serve them as torch Datasets;
patient-level splits."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import ConcatDataset, Dataset

from common.schema import MODEL_CLINICAL_FEATURES, RECEPTOR_TARGETS, encode_clinical
from common.site_cache import CLINICAL, MANIFEST, PREP_CONFIG, read_manifest, read_prep_config, read_table, \
    visit_columns

#: In-memory volume cache budget per dataset (bytes of float16); larger caches are read from disk each time.
MEMORY_BUDGET = 1 << 30


@dataclass
class SiteCache:
    """A loaded site cache: manifest and clinical tables, preprocessing config and its hash."""

    path: Path
    manifest: pd.DataFrame  # indexed by patient_id (str)
    clinical: pd.DataFrame  # indexed by patient_id (str); canonical columns
    prep_config: dict[str, Any]
    prep_hash: str
    channels: tuple[str, ...]
    issues: list[dict[str, str]] = field(default_factory=list)

    @property
    def site(self) -> str:
        """Site code(s) of the cache (``;``-joined if it holds several)."""
        sites = sorted(set(self.manifest["site"].astype(str)))
        return ";".join(sites) if sites else self.path.name

    @property
    def ids(self) -> list[str]:
        return list(self.manifest.index)

    def labels(self, ids: Sequence[str] | None = None) -> np.ndarray:
        """Labels as float (NaN = unlabelled) for ``ids`` (default: all patients)."""
        ids = self.ids if ids is None else list(ids)
        return self.manifest.loc[ids, "label"].to_numpy(dtype=np.float64)

    def labelled_ids(self) -> list[str]:
        return [pid for pid, y in zip(self.ids, self.labels()) if not np.isnan(y)]

    @property
    def visits(self) -> tuple[str, ...]:
        """Visits the cache holds (``PrepConfig.visits``; ``("pre",)`` for caches prepared without it)."""
        return tuple(self.prep_config.get("visits") or ("pre",))

    def check_visits(self, visits: Sequence[str]) -> None:
        """Raise ValueError naming the cache when it lacks a visit a model reads."""
        absent = [v for v in visits if v not in self.visits]
        if absent:
            raise ValueError(f"site cache {self.path} holds visits {list(self.visits)} but the model reads "
                             f"{list(visits)} (missing {absent}); re-prepare the site with PrepConfig.visits = "
                             f"{list(visits)}")


def _parse_label(value: Any, pid: str, path: Path) -> float:
    if value is None or (isinstance(value, float) and np.isnan(value)) or str(value).strip() == "":
        return float("nan")
    try:
        y = float(value)
    except ValueError:
        raise ValueError(f"{path}: patient {pid}: field 'label' must be 0, 1 or empty, got {value!r}") from None
    if y not in (0.0, 1.0):
        raise ValueError(f"{path}: patient {pid}: field 'label' must be 0, 1 or empty, got {value!r}")
    return y


def load_cache(path: str | Path) -> SiteCache:
    """Load and validate a site cache. Structural problems raise with the file named; a patient whose
    volume file is missing is dropped and recorded in ``issues`` (the rest goes on)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"site cache directory not found: {path}")
    cfg_path = path / PREP_CONFIG
    prep = read_prep_config(path)
    prep_hash = str(prep["hash"])
    issues: list[dict[str, str]] = []
    try:  # recompute the hash when the config is a current PrepConfig; a mismatch is reported
        from common.config import PrepConfig, from_dict

        recomputed = from_dict(PrepConfig, prep["config"], source=str(cfg_path)).hash()
        if recomputed != prep_hash:
            issues.append({"patient": "", "field": "prep_config.hash",
                           "reason": f"{cfg_path}: stored hash {prep_hash} != recomputed {recomputed}"})
    except (TypeError, ValueError) as exc:
        issues.append({"patient": "", "field": "prep_config.config", "reason": f"{cfg_path}: {exc}"})

    man_path = path / MANIFEST
    manifest = read_manifest(path)
    manifest["patient_id"] = manifest["patient_id"].astype(str)
    if manifest["patient_id"].duplicated().any():
        dup = manifest.loc[manifest["patient_id"].duplicated(), "patient_id"].tolist()
        raise ValueError(f"{man_path}: duplicate patient_id {dup[:5]}")
    if manifest["volume"].astype(str).duplicated().any():
        dup = manifest.loc[manifest["volume"].astype(str).duplicated(), "volume"].tolist()
        raise ValueError(f"{man_path}: several patients share the volume file(s) {dup[:5]}")
    manifest["label"] = [_parse_label(v, p, man_path) for v, p in zip(manifest["label"], manifest["patient_id"])]
    bad_hash = manifest.loc[manifest["prep_hash"].astype(str) != prep_hash, "patient_id"].tolist()
    if bad_hash:
        raise ValueError(f"{man_path}: patients {bad_hash[:5]} have a prep_hash other than {cfg_path}'s "
                         f"{prep_hash}; the cache mixes preprocessing runs")
    chan_sets = set(manifest["channels"].astype(str))
    if len(chan_sets) > 1:
        raise ValueError(f"{man_path}: patients have different channel lists {sorted(chan_sets)}")
    channels = tuple(next(iter(chan_sets)).split(";")) if chan_sets else tuple(prep["config"].get("channels", ()))
    keep = []
    for pid, rel in zip(manifest["patient_id"], manifest["volume"].astype(str)):
        ok = (path / rel).is_file()
        keep.append(ok)
        if not ok:
            issues.append({"patient": pid, "field": "volume", "reason": f"volume file missing: {path / rel}"})
    manifest = manifest.loc[keep].set_index("patient_id", drop=False)
    _drop_missing_visit_files(path, manifest, issues)

    clin_path = path / CLINICAL
    clinical = read_table(path, CLINICAL)
    clinical["patient_id"] = clinical["patient_id"].astype(str)
    clinical = clinical.drop_duplicates("patient_id", keep="first").set_index("patient_id", drop=False)
    for pid in manifest.index.difference(clinical.index):
        issues.append({"patient": pid, "field": "clinical", "reason": f"no row in {clin_path}; clinical inputs missing"})
    return SiteCache(path=path, manifest=manifest, clinical=clinical, prep_config=dict(prep["config"]),
                     prep_hash=prep_hash, channels=channels, issues=issues)


def _drop_missing_visit_files(path: Path, manifest: pd.DataFrame, issues: list[dict[str, str]]) -> None:
    """A later visit's volume named in the manifest but absent on disk: recorded, and the visit treated as
    missing for that patient (the baseline still serves)."""
    from common.site_cache import LATER_VISITS

    for visit in LATER_VISITS:
        col = visit_columns(visit)[0]
        if col not in manifest.columns:
            continue
        for pid, rel in manifest[col].items():
            if isinstance(rel, str) and rel.strip() and not (path / rel).is_file():
                issues.append({"patient": str(pid), "field": col,
                               "reason": f"{visit} visit volume missing: {path / rel}; visit treated as missing"})
                manifest.loc[pid, col] = np.nan


def check_same_prep(caches: Sequence[SiteCache]) -> str:
    """Return the common prep hash, or raise naming both hashes and caches when they differ."""
    if not caches:
        raise ValueError("no site caches given")
    first = caches[0]
    for other in caches[1:]:
        if other.prep_hash != first.prep_hash:
            raise ValueError(f"preprocessing differs: {first.path} has prep hash {first.prep_hash}, "
                             f"{other.path} has {other.prep_hash}; re-prepare with the same PrepConfig")
    return first.prep_hash


def split_patients(ids: Sequence[str], labels: Sequence[float], seed: int, val_fraction: float,
                   test_fraction: float) -> dict[str, list[str]]:
    """Stratified, deterministic patient split -> {"train", "val", "test"} (sorted id lists).

    The result depends only on the set of (id, label) pairs, the seed and the fractions, not on input
    order. Unlabelled patients (NaN) go to no split.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"bad split fractions val={val_fraction} test={test_fraction}")
    ids = [str(i) for i in ids]
    if len(set(ids)) != len(ids):
        raise ValueError("split_patients: duplicate patient ids")
    lab = np.asarray(labels, dtype=np.float64)
    if len(lab) != len(ids):
        raise ValueError(f"split_patients: {len(ids)} ids but {len(lab)} labels")
    out: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    rng = np.random.default_rng(seed)
    for cls in (0.0, 1.0):
        members = sorted(i for i, y in zip(ids, lab) if y == cls)
        order = [members[k] for k in rng.permutation(len(members))]
        n_test = int(round(len(order) * test_fraction))
        n_val = int(round(len(order) * val_fraction))
        out["test"] += order[:n_test]
        out["val"] += order[n_test:n_test + n_val]
        out["train"] += order[n_test + n_val:]
    return {k: sorted(v) for k, v in out.items()}


class PCRDataset(Dataset):
    """Patients of one site cache as model-ready dicts (see docs/CONTRACTS.md §2).

    ``channels`` selects a subset of the cache's channels by name (default: all, in cache order);
    ``augment`` applies the MONAI training augmentation on the fly (the same draw to every visit).
    ``visits``: the visits to serve (a model's ``ModelConfig.visits``; default: every visit the cache holds).
    Each later visit ``v`` adds ``image_<v>``, ``<v>_present`` and ``<v>_days`` (``common.models.visits``);
    a patient without it gets zeros and present = 0. A visit the cache lacks raises ValueError.
    """

    def __init__(self, cache: SiteCache, ids: Sequence[str], augment: bool = False, *,
                 channels: Sequence[str] | None = None,
                 clinical_features: Sequence[str] = MODEL_CLINICAL_FEATURES, seed: int = 0,
                 memory_budget: int = MEMORY_BUDGET, visits: Sequence[str] | None = None) -> None:
        self.cache = cache
        self.ids = [str(i) for i in ids]
        unknown = [i for i in self.ids if i not in cache.manifest.index]
        if unknown:
            raise KeyError(f"patients {unknown[:5]} are not in site cache {cache.path}")
        self.channels = tuple(channels) if channels is not None else cache.channels
        absent = [c for c in self.channels if c not in cache.channels]
        if absent:
            raise ValueError(f"channels {absent} requested but site cache {cache.path} has {list(cache.channels)}")
        self.channel_index = [cache.channels.index(c) for c in self.channels]
        self.labels = cache.labels(self.ids).astype(np.float32)
        rows = cache.clinical.reindex(self.ids)
        self.clinical, self.clinical_present = encode_clinical(rows, tuple(clinical_features))
        self.receptors, self.receptors_present = encode_clinical(rows, RECEPTOR_TARGETS)
        self.paths = [cache.path / str(v) for v in cache.manifest.loc[self.ids, "volume"]]
        visits = cache.visits if visits is None else tuple(visits)
        cache.check_visits(visits)
        self.later_visits = tuple(v for v in visits if v != "pre")
        self.visit_paths, self.visit_days = self._visit_files(cache)
        self.augment = augment
        self._transform = None
        self._seed = seed
        self._memory: dict[int, np.ndarray] = {}
        self._budget = memory_budget
        self._used = 0

    def _visit_files(self, cache: SiteCache) -> tuple[dict[str, list[Path | None]], dict[str, np.ndarray]]:
        """Per later visit: each patient's volume file (None = missing) and days since baseline (0 if unknown)."""
        paths: dict[str, list[Path | None]] = {}
        days: dict[str, np.ndarray] = {}
        for v in self.later_visits:
            vol_col, _, days_col = visit_columns(v)
            rows = cache.manifest.reindex(self.ids)
            vols = rows[vol_col] if vol_col in rows.columns else pd.Series([""] * len(self.ids))
            paths[v] = [None if pd.isna(r) or str(r).strip() in ("", "nan") else cache.path / str(r) for r in vols]
            d = pd.to_numeric(rows[days_col], errors="coerce") if days_col in rows.columns else \
                pd.Series(np.nan, index=rows.index)
            days[v] = np.nan_to_num(d.to_numpy(dtype=np.float64), nan=0.0).astype(np.float32)
        return paths, days

    @property
    def in_channels(self) -> int:
        return len(self.channels)

    def __len__(self) -> int:
        return len(self.ids)

    def set_random_state(self, seed: int) -> None:
        """Reseed the augmentation (called per epoch and per DataLoader worker for determinism)."""
        self._seed = int(seed)
        if self._transform is not None:
            self._transform.set_random_state(seed=self._seed)

    def _volume(self, i: int, visit: str = "pre") -> np.ndarray:
        key = i if visit == "pre" else (i, visit)
        if key in self._memory:
            return self._memory[key]
        path = self.paths[i] if visit == "pre" else self.visit_paths[visit][i]
        try:
            arr = np.load(path, mmap_mode=None, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read volume of patient {self.ids[i]}: {path}: {exc}") from exc
        if arr.ndim != 4 or arr.shape[0] != len(self.cache.channels):
            raise ValueError(f"volume of patient {self.ids[i]} ({path}) has shape {arr.shape}, expected "
                             f"({len(self.cache.channels)}, Z, Y, X) for channels {list(self.cache.channels)}")
        arr = arr[self.channel_index]
        if self._used + arr.nbytes <= self._budget:
            self._memory[key] = arr
            self._used += arr.nbytes
        return arr

    def _images(self, i: int) -> dict[str, np.ndarray]:
        """The baseline image and each later visit's (zeros when the patient lacks it), float32."""
        images = {"image": self._volume(i).astype(np.float32)}
        for v in self.later_visits:
            present = self.visit_paths[v][i] is not None
            images[f"image_{v}"] = self._volume(i, v).astype(np.float32) if present else \
                np.zeros_like(images["image"])
        return images

    def __getitem__(self, i: int) -> dict[str, Any]:
        images = self._images(i)
        if self.augment:
            if self._transform is None:
                from common.augment import train_transform

                self._transform = train_transform(keys=tuple(images))  # one draw for all visits
                self._transform.set_random_state(seed=self._seed)
            images = self._transform(images)
        out = {key: _plain_tensor(img) for key, img in images.items()}
        for v in self.later_visits:
            out[f"{v}_present"] = torch.tensor(float(self.visit_paths[v][i] is not None), dtype=torch.float32)
            out[f"{v}_days"] = torch.tensor(self.visit_days[v][i], dtype=torch.float32)
        image_t = out.pop("image")
        return {
            **out,
            "image": image_t,
            "clinical": torch.from_numpy(self.clinical[i]),
            "clinical_present": torch.from_numpy(self.clinical_present[i]),
            "receptors": torch.from_numpy(self.receptors[i]),
            "receptors_present": torch.from_numpy(self.receptors_present[i]),
            "label": torch.tensor(self.labels[i], dtype=torch.float32),
            "index": i,
        }


def _plain_tensor(image: Any) -> torch.Tensor:
    """A contiguous float32 torch tensor (MONAI MetaTensor unwrapped)."""
    t = torch.as_tensor(image, dtype=torch.float32)
    if hasattr(t, "as_tensor"):
        t = t.as_tensor()
    return t.contiguous()


def pool_datasets(datasets: Sequence[PCRDataset]) -> Dataset:
    """Pool several sites' datasets for centralised training; refuses differing preprocessing."""
    datasets = list(datasets)
    check_same_prep([d.cache for d in datasets])
    chans = {d.channels for d in datasets}
    if len(chans) > 1:
        raise ValueError(f"pooled datasets use different channels: {sorted(chans)}")
    visits = {d.later_visits for d in datasets}
    if len(visits) > 1:
        raise ValueError(f"pooled datasets serve different later visits: {sorted(visits)}")
    return datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)


def leaf_datasets(dataset: Dataset) -> list[PCRDataset]:
    """The PCRDatasets inside ``dataset`` (itself, or the parts of a ConcatDataset), in order."""
    if isinstance(dataset, ConcatDataset):
        return [leaf for d in dataset.datasets for leaf in leaf_datasets(d)]
    if isinstance(dataset, PCRDataset):
        return [dataset]
    raise TypeError(f"expected PCRDataset or ConcatDataset of them, got {type(dataset).__name__}")


def dataset_labels(dataset: Dataset) -> np.ndarray:
    """Labels of every sample in dataset order (without loading images)."""
    return np.concatenate([d.labels for d in leaf_datasets(dataset)]) if len(dataset) else np.zeros(0, np.float32)


def dataset_ids(dataset: Dataset) -> list[tuple[str, str]]:
    """(site, patient_id) of every sample in dataset order."""
    return [(d.cache.site, pid) for d in leaf_datasets(dataset) for pid in d.ids]


def warn_issues(cache: SiteCache) -> None:
    """Emit one warning per recorded cache issue."""
    for issue in cache.issues:
        warnings.warn(f"{cache.path}: {issue['patient'] or '-'}: {issue['field']}: {issue['reason']}", stacklevel=2)
