"""Model bundle directory: ``model.pt`` (state_dict) + ``bundle.json`` (configs, hashes, threshold)."""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common.config import PrepConfig, TrainConfig, from_dict, to_dict
from common.models import build_model
from common.models.config import ModelConfig

MODEL_FILE = "model.pt"
META_FILE = "bundle.json"


@dataclass
class Bundle:
    """A loaded bundle: the model (eval mode, CPU) and everything needed to use it correctly."""

    path: Path
    model: nn.Module
    model_config: ModelConfig
    prep_config: dict[str, Any]
    prep_hash: str
    train_config: TrainConfig
    train_sites: list[str]
    val_metrics: dict[str, Any]
    threshold: float
    threshold_rule: str
    meta: dict[str, Any] = field(default_factory=dict)


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("fedpcr")
    except Exception:  # noqa: BLE001 - not installed: still write a bundle
        return "unknown"


def _prep_dict_and_hash(prep_cfg: PrepConfig | dict[str, Any]) -> tuple[dict[str, Any], str]:
    if isinstance(prep_cfg, PrepConfig):
        return to_dict(prep_cfg), prep_cfg.hash()
    if isinstance(prep_cfg, dict) and "config" in prep_cfg and "hash" in prep_cfg:  # prep_config.json content
        return dict(prep_cfg["config"]), str(prep_cfg["hash"])
    raise TypeError("prep_cfg must be a PrepConfig or a cache's prep_config.json dict {'config', 'hash'}")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    if isinstance(obj, float) and obj != obj:
        return None
    return obj


def save_bundle(dir: str | Path, model: nn.Module, model_cfg: ModelConfig, prep_cfg: PrepConfig | dict[str, Any],
                train_cfg: TrainConfig, train_sites: list[str], val_metrics: dict[str, Any], threshold: float,
                extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.pt`` and ``bundle.json`` under ``dir`` (created); returns the directory."""
    out = Path(dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    (out / MODEL_FILE).write_bytes(buf.getvalue())
    prep_dict, prep_hash = _prep_dict_and_hash(prep_cfg)
    meta = {
        "model_config": to_dict(model_cfg),
        "model_hash": model_cfg.hash(),
        "prep_config": prep_dict,
        "prep_hash": prep_hash,
        "train_config": to_dict(train_cfg),
        "train_sites": list(train_sites),
        "val_metrics": _jsonable(val_metrics),
        "threshold": float(threshold),
        "threshold_rule": train_cfg.threshold_rule,
        "youden_weight": train_cfg.youden_weight,
        "weights_sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "fedpcr_version": _version(),
    }
    if extra:
        clash = set(extra) & set(meta)
        if clash:
            raise ValueError(f"save_bundle: extra keys {sorted(clash)} clash with bundle fields")
        meta.update(_jsonable(extra))
    (out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return out


def load_bundle(dir: str | Path) -> Bundle:
    """Read a bundle, rebuild the model and load its weights (checked against the stored hashes)."""
    path = Path(dir)
    meta_path = path / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"not a model bundle: {meta_path} missing") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read {meta_path}: {exc}") from exc
    for key in ("model_config", "model_hash", "prep_hash", "train_config", "threshold"):
        if key not in meta:
            raise ValueError(f"{meta_path}: missing field {key!r}")
    model_cfg = from_dict(ModelConfig, meta["model_config"], source=f"{meta_path}:model_config")
    if model_cfg.hash() != meta["model_hash"]:
        raise ValueError(f"{meta_path}: model_config hashes to {model_cfg.hash()}, bundle says {meta['model_hash']}")
    train_cfg = from_dict(TrainConfig, meta["train_config"], source=f"{meta_path}:train_config")
    weights_path = path / MODEL_FILE
    try:
        raw = weights_path.read_bytes()
    except OSError as exc:
        raise FileNotFoundError(f"model bundle weights missing: {weights_path}") from exc
    if "weights_sha256" in meta and hashlib.sha256(raw).hexdigest() != meta["weights_sha256"]:
        raise ValueError(f"{weights_path}: sha256 differs from {meta_path} (weights changed after saving)")
    state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    # never reload pretrained weights from a path that may not exist here: the bundle has the weights
    model = build_model(from_dict(ModelConfig, {**meta["model_config"], "pretrained_path": None}))
    model.load_state_dict(state, strict=True)
    model.eval()
    return Bundle(path=path, model=model, model_config=model_cfg, prep_config=dict(meta.get("prep_config", {})),
                  prep_hash=str(meta["prep_hash"]), train_config=train_cfg,
                  train_sites=list(meta.get("train_sites", [])), val_metrics=dict(meta.get("val_metrics", {})),
                  threshold=float(meta["threshold"]), threshold_rule=str(meta.get("threshold_rule", "youden")),
                  meta=meta)
