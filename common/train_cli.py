"""``fedpcr train``: pooled or single-site training on site caches -> model bundle.

Each cache's labelled patients are split by patient (stratified, seeded); the TEST split is held back
and never used; validation drives early stopping and the operating threshold. The split's patient
lists stay in the local file ``RUN/split.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from common.config import TrainConfig, from_dict, to_dict
from common.models.config import PRESETS, ModelConfig, preset

SPLIT_FILE = "split.json"


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options of ``fedpcr train``."""
    p = argparse.ArgumentParser(prog="fedpcr train", description=__doc__.splitlines()[0])
    p.add_argument("--cache", nargs="+", required=True, help="site cache directories (several = pooled training)")
    p.add_argument("--out", required=True, help="output run directory (model bundle)")
    p.add_argument("--config", help="YAML: TrainConfig keys, or sections 'train:' and 'model:' (ModelConfig overrides)")
    p.add_argument("--model-preset", default="small", choices=sorted(PRESETS), help="model preset (default small)")
    p.add_argument("--seed", type=int, help="overrides TrainConfig.seed (split, init, augmentation)")
    p.add_argument("--epochs", type=int, help="overrides TrainConfig.epochs")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="overrides TrainConfig.device")
    p.add_argument("--dp", action="store_true", help="DP-SGD (Opacus) with the budget below (docs/privacy.md)")
    p.add_argument("--epsilon", type=float, default=8.0, help="DP: total epsilon over all epochs (default 8)")
    p.add_argument("--delta", type=float, default=1e-5, help="DP: delta (default 1e-5)")
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="DP: per-patient clipping bound (default 1)")
    return p.parse_args(argv)


def read_configs(path: str | None, model_preset: str, in_channels: int) -> tuple[TrainConfig, ModelConfig]:
    """TrainConfig and ModelConfig from an optional YAML file (flat = train keys; or train:/model: sections)."""
    data: dict[str, Any] = {}
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"cannot read config {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"config {path} must hold a mapping")
    sectioned = set(data) <= {"train", "model"} and bool(data)
    train_part = data.get("train", {}) if sectioned else data
    model_part = dict(data.get("model", {}) or {}) if sectioned else {}
    train_cfg = from_dict(TrainConfig, train_part, source=f"{path}:train" if path else "train")
    model_part = {k.replace("-", "_"): v for k, v in model_part.items()}
    base = preset(model_preset, in_channels=in_channels)
    model_cfg = from_dict(ModelConfig, {**to_dict(base), **model_part}, source=f"{path}:model" if path else "model")
    if model_cfg.in_channels != in_channels:
        raise ValueError(f"model in_channels={model_cfg.in_channels} but the caches hold {in_channels} channels")
    return train_cfg, model_cfg


def run(args: argparse.Namespace) -> int:
    """Train on the site caches and write the model bundle plus the local split file; returns the exit status."""
    import numpy as np

    from common.bundle import save_bundle
    from common.data import check_same_prep, load_cache, pool_datasets, warn_issues
    from common.models import build_model
    from common.train import fit, seed_everything

    caches = [load_cache(p) for p in args.cache]
    for cache in caches:
        warn_issues(cache)
    prep_hash = check_same_prep(caches)
    channels = caches[0].channels
    train_cfg, model_cfg = read_configs(args.config, args.model_preset, len(channels))
    overrides = {k: v for k, v in (("seed", args.seed), ("epochs", args.epochs), ("device", args.device)) if v is not None}
    train_cfg = dataclasses.replace(train_cfg, **overrides)

    splits, train_parts, val_parts = _site_splits(caches, train_cfg, model_cfg)
    sites = list(splits["sites"])
    train_ds, val_ds = pool_datasets(train_parts), pool_datasets(val_parts)

    seed_everything(train_cfg.seed)
    model = build_model(model_cfg)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model {model_cfg.preset} (ResNet-{model_cfg.depth}, width {model_cfg.width}, norm {model_cfg.norm}, "
          f"{n_params:,} parameters), {len(train_ds)} training patients, device {train_cfg.device}")
    t0 = time.perf_counter()
    dp, epoch_fn = None, None
    if args.dp:  # centralised DP-SGD: budget over all epochs, refused (DPBudgetExceeded) beyond it
        from common.dp import DPConfig, DPTrainer

        dp = DPConfig(target_epsilon=args.epsilon, delta=args.delta, max_grad_norm=args.max_grad_norm)
        epoch_fn = DPTrainer(model, train_ds, train_cfg, dp).epoch
    result = fit(model, train_ds, val_ds, train_cfg, log=print, epoch_fn=epoch_fn)
    val_metrics: dict[str, Any] = {"auroc": result.val_auroc, "n": int(len(val_ds)), "best_epoch": result.best_epoch}
    if result.val_labels is not None and len(np.unique(result.val_labels)) == 2:
        from common.metrics import binary_report

        val_metrics["report"] = binary_report(result.val_labels, result.val_scores, result.threshold,
                                              n_boot=200, seed=train_cfg.seed)
    out = Path(args.out)
    save_bundle(out, model, model_cfg, {"config": caches[0].prep_config, "hash": prep_hash}, train_cfg, sites,
                val_metrics, result.threshold,
                extra={"history": result.history, "n_train": int(len(train_ds)), "n_val": int(len(val_ds)),
                       "train_seconds": round(time.perf_counter() - t0, 2),
                       **({"privacy": {"epsilon": result.history[-1]["epsilon"], "delta": dp.delta,
                                       "max_grad_norm": dp.max_grad_norm}} if dp is not None else {})})
    (out / SPLIT_FILE).write_text(json.dumps(splits, indent=1))
    print(f"bundle written to {out} (val AUROC {result.val_auroc:.3f}, threshold {result.threshold:.3f}); "
          f"patient split kept locally in {out / SPLIT_FILE}")
    return 0


def _site_splits(caches: list[Any], train_cfg: TrainConfig, model_cfg: Any) -> tuple[dict[str, Any], list, list]:
    """Per site: the seeded train/val/test split (kept in split.json) and its train / val datasets."""
    import numpy as np

    from common.data import PCRDataset

    splits: dict[str, Any] = {"seed": train_cfg.seed, "val_fraction": train_cfg.val_fraction,
                              "test_fraction": train_cfg.test_fraction, "sites": {}}
    train_parts, val_parts = [], []
    for cache in caches:
        ids = cache.labelled_ids()
        if not ids:
            raise ValueError(f"site cache {cache.path} has no labelled patients")
        sp = _split(cache, ids, train_cfg)
        site = cache.site
        if site in splits["sites"]:
            raise ValueError(f"two caches hold site {site!r}: {cache.path} and {splits['sites'][site]['cache']}")
        splits["sites"][site] = {"cache": str(cache.path.resolve()), **sp}
        print(f"{site}: {len(sp['train'])} train / {len(sp['val'])} val / {len(sp['test'])} test (held back) "
              f"patients, {int(np.nansum(cache.labels(ids)))} pCR of {len(ids)}")
        kw = {"clinical_features": model_cfg.clinical_features, "seed": train_cfg.seed, "visits": model_cfg.visits}
        train_parts.append(PCRDataset(cache, sp["train"], augment=train_cfg.augment, **kw))
        val_parts.append(PCRDataset(cache, sp["val"], augment=False, **kw))
    return splits, train_parts, val_parts


def _split(cache: Any, ids: list[str], cfg: TrainConfig) -> dict[str, list[str]]:
    from common.data import split_patients

    return split_patients(ids, cache.labels(ids), cfg.seed, cfg.val_fraction, cfg.test_fraction)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``fedpcr train``; returns the exit status (2 on bad input, message on stderr)."""
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        return run(args)
    except (OSError, ValueError, KeyError) as exc:
        print(f"fedpcr train: error: {exc}", file=sys.stderr)
        return 2
