"""Federated simulation entry point (docs/CONTRACTS.md §5b): the real ServerApp + ClientApp in
Flower's Ray simulation engine, one virtual SuperNode per site cache.

``run_simulation`` leaves ``context.run_config`` empty, so the settings are injected into both
apps (:func:`server.app.make_server_app`, :func:`client.app.make_client_app`) and the
partition-id of each virtual SuperNode is mapped to its site cache.
"""

from __future__ import annotations

import atexit
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from common.config import PrepConfig, TrainConfig, from_dict
from common.models.config import ModelConfig
from common.site_cache import PREP_CONFIG
from server.checkpoint import read_metrics
from server.config import config_json
from simulation.flower_compat import ray_kept_warm, shutdown_ray

log = logging.getLogger("fedpcr.simulation")

#: Keep one Ray instance alive across run_federated calls (the harness calls it many times).
KEEP_RAY_WARM = os.environ.get("FEDPCR_KEEP_RAY_WARM", "1") != "0"
BACKEND_CONFIG: dict[str, Any] = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}}
#: Join an existing Ray cluster (``ray start --head`` / ``ray start --address=HEAD:6379``) instead of starting
#: a local Ray: FEDPCR_RAY_ADDRESS=auto (or HEAD:6379). Site caches must be at the same path on every node.
RAY_ADDRESS_ENV = "FEDPCR_RAY_ADDRESS"
if os.environ.get(RAY_ADDRESS_ENV):
    BACKEND_CONFIG["init_args"] = {"address": os.environ[RAY_ADDRESS_ENV]}


@dataclass
class FederatedResult:
    """Where the final bundle is and the per-round history rows (metrics.jsonl)."""

    bundle_dir: Path
    history: list[dict[str, Any]]
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _site_prep(site_caches: Mapping[str, Path]) -> PrepConfig:
    """The PrepConfig the caches were made with (they must agree; the federation enforces it too)."""
    from common.data import check_same_prep, load_cache

    caches = [load_cache(p) for p in site_caches.values()]
    check_same_prep(caches)
    return from_dict(PrepConfig, caches[0].prep_config, source=str(caches[0].path / PREP_CONFIG))


atexit.register(shutdown_ray)


def federation_overrides(site_caches: Mapping[str, Path], out_dir: Path, *, strategy: str, num_rounds: int,
                         model_cfg: ModelConfig, train_cfg: TrainConfig, local_epochs: int, seed: int,
                         extra_config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The run-config overrides both apps receive (dashed Flower keys, FederationConfig fields)."""
    overrides: dict[str, Any] = {
        "strategy": strategy,
        "num-server-rounds": int(num_rounds),
        "local-epochs": int(local_epochs),
        "seed": int(seed),
        "out-dir": str(Path(out_dir).resolve()),
        "min-nodes": len(site_caches),
        "resume": False,
        "model-preset": "small",
        "model-config": config_json(model_cfg),
        "train-config": config_json(train_cfg),
    }
    overrides.update(extra_config or {})
    if "prep-config" not in overrides:  # the federation's PrepConfig = the one the caches were made with
        overrides["prep-config"] = config_json(_site_prep(site_caches))
    return overrides


def simulation_policy(**privacy: Any) -> Any:
    """Every simulated site's policy: ``client.policy.open_policy`` (one researcher holds all sites' data and
    is the coordinator too: exact evaluation counts, every model approved) with ``privacy`` overrides."""
    from dataclasses import replace

    from client.policy import open_policy

    base = open_policy()
    return replace(base, privacy=replace(base.privacy, **privacy))


def run_federated(site_caches: dict[str, Path], out_dir: Path, *, strategy: str, num_rounds: int,
                  model_cfg: ModelConfig, train_cfg: TrainConfig, local_epochs: int, seed: int,
                  extra_config: dict[str, Any] | None = None, audit_dir: Path | None = None,
                  policy: Any = None) -> FederatedResult:
    """Federate ``site_caches`` ({site name: cache dir}) in simulation; returns bundle + history.

    ``extra_config`` overrides other FederationConfig keys (dashed); ``audit_dir`` keeps a JSONL copy of
    every reply the sites send (client.audit.make_audit_mod); ``policy`` is every site's SitePolicy
    (default :func:`simulation_policy`: exact evaluation counts, the researcher holds all the data anyway).
    """
    from flwr.simulation import run_simulation

    from client.app import make_client_app
    from server.app import make_server_app
    from server.config import FederationConfig

    if len(site_caches) < 1:
        raise ValueError("run_federated needs at least one site cache")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    overrides = federation_overrides(site_caches, out_dir, strategy=strategy, num_rounds=num_rounds,
                                     model_cfg=model_cfg, train_cfg=train_cfg, local_epochs=local_epochs,
                                     seed=seed, extra_config=extra_config)
    FederationConfig.from_run_config({}, overrides)  # fail fast on a bad key, before Ray starts
    sites = {i: (name, str(Path(path).resolve())) for i, (name, path) in enumerate(site_caches.items())}
    t0 = time.time()
    with ray_kept_warm(KEEP_RAY_WARM):
        run_simulation(server_app=make_server_app(overrides), client_app=make_client_app(
                           overrides, sites, None if audit_dir is None else str(audit_dir),
                           policy=policy if policy is not None else simulation_policy()),
                       num_supernodes=len(sites), backend_config={k: dict(v) for k, v in BACKEND_CONFIG.items()})
    wall = time.time() - t0
    bundle = out_dir / "bundle"
    if not (bundle / "bundle.json").exists():
        raise RuntimeError(f"federated simulation finished without a bundle in {bundle}; see the Flower log above")
    return FederatedResult(bundle_dir=bundle, history=read_metrics(out_dir), wall_s=wall)
