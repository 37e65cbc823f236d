"""Federation overhead, measured side by side on the same data and compute: pooled training, the same
rounds in Flower's Ray simulation, and over a real loopback SuperLink (TLS + node auth) with 3 SuperNodes.

    python benchmarks/bench_federation.py [--workload small|paper] [--rounds 5] [--n 40]
        [--encoding exact|fp16|bf16] [--compare-encodings] [--no-deploy]

Workloads (3 factory-built site caches, 3 x 32^3 crops, 1 local epoch per round, FedAvg, no augmentation):
``small`` = the ``small`` preset (0.24 M parameters); ``paper`` = the ``paper`` preset's network (ResNet-18
3D, 33.5 M parameters, 134 MB fp32) on the same crops, so the compute per round is CPU-feasible while the
bytes per round are the paper's. Pooled = one process trains the union of the sites' train splits for
``rounds`` epochs and evaluates every site's validation split after each (the federated run's compute).
Ends with one JSON line (fed_sim_over_pooled, fed_deploy_over_pooled, bytes_per_round_per_site, ...).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import ROOT, Timer, emit, flower_env, load  # noqa: E402

flower_env()

WORKLOADS = {"small": {"preset": "small", "batch": 8}, "paper": {"preset": "paper", "batch": 4}}
SITES = ("HOSPA", "HOSPB", "HOSPC")


def setup(root: Path, workload: str, n: int) -> tuple[dict[str, Path], Any, Any]:
    """Three site caches (different seeds, planted image signal) + the model and train configs."""
    from common.config import PrepConfig, TrainConfig
    from common.models.config import preset
    from tests.cache_factory import make_cache

    caches = {s: make_cache(root / "data", s, n=n, seed=i, prep=PrepConfig(shape=(32, 32, 32)))
              for i, s in enumerate(SITES)}
    spec = WORKLOADS[workload]
    model_cfg = preset(spec["preset"], in_channels=3)
    train_cfg = TrainConfig(device="cpu", batch_size=spec["batch"], augment=False, val_fraction=0.25,
                            test_fraction=0.25, seed=0)
    return caches, model_cfg, train_cfg


def pooled(caches: dict[str, Path], model_cfg: Any, train_cfg: Any, rounds: int) -> dict[str, Any]:
    """Centralised run of the federated compute; per-site epoch times for the straggler estimate."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from client.task import load_site, new_model
    from common.data import pool_datasets
    from common.train import predict, train_epochs

    with Timer() as t:
        sites = {s: load_site(str(p), train_cfg.seed, train_cfg.val_fraction, train_cfg.test_fraction)
                 for s, p in caches.items()}
        model = new_model(model_cfg, train_cfg.seed)
        train = pool_datasets([d.dataset("train", model_cfg) for d in sites.values()])
        round_s = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            train_epochs(model, train, train_cfg, 1)
            for d in sites.values():
                predict(model, d.dataset("val", model_cfg), train_cfg)
            round_s.append(time.perf_counter() - t0)
    y, p = zip(*(predict(model, d.dataset("test", model_cfg), train_cfg) for d in sites.values()))
    auroc = float(roc_auc_score(np.concatenate(y), np.concatenate(p)))
    site_s = {}
    for s, d in sites.items():  # one local epoch per site, alone: what each federated site computes per round
        t0 = time.perf_counter()
        train_epochs(new_model(model_cfg, 1), d.dataset("train", model_cfg), train_cfg, 1)
        site_s[s] = time.perf_counter() - t0
    return {"wall_s": t.s, "round_s": round_s, "test_auroc": auroc, "site_epoch_s": site_s,
            "n_train": len(train)}


def wire_costs(model_cfg: Any, encoding: str, repeats: int = 3) -> dict[str, Any]:
    """Flower protobuf bytes of one update in ``encoding`` and the time to encode+serialise+parse+decode it."""
    from flwr.app import ArrayRecord
    from flwr.common.serde import array_record_from_proto, array_record_to_proto
    from flwr.proto.recorddict_pb2 import ArrayRecord as ProtoArrayRecord

    from client.task import arrays_from_model, decode_record, new_model
    from common.encoding import payload_bytes

    model = new_model(model_cfg, 0)
    fp32 = payload_bytes({k: v.float().numpy() if v.is_floating_point() else v.numpy()
                          for k, v in model.state_dict().items()})
    times, size = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        blob = array_record_to_proto(arrays_from_model(model, encoding)).SerializeToString()
        back = decode_record(array_record_from_proto(ProtoArrayRecord.FromString(blob)), encoding)
        model.load_state_dict(back.to_torch_state_dict())
        times.append(time.perf_counter() - t0)
        size = len(blob)
    exact = len(array_record_to_proto(ArrayRecord(model.state_dict())).SerializeToString())
    return {"model_fp32_bytes": fp32, "update_bytes": size, "exact_update_bytes": exact,
            "serialise_roundtrip_s": statistics.median(times),
            "n_params": sum(p.numel() for p in model.parameters())}


def start_ray(attempts: int = 6) -> float:
    """Start the local Ray that Flower's backend then reuses (retried: on an overloaded machine the raylet
    can miss Ray's start-up deadline); seconds taken."""
    import ray

    t0 = time.perf_counter()
    for k in range(attempts):
        try:
            ray.init(include_dashboard=False, ignore_reinit_error=True)
            return time.perf_counter() - t0
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception on a start-up timeout
            print(f"Ray start attempt {k + 1} failed: {exc}", flush=True)
            ray.shutdown()
            time.sleep(5)
    raise RuntimeError("Ray did not start")


def simulate(caches: dict[str, Path], out: Path, model_cfg: Any, train_cfg: Any, rounds: int,
             encoding: str) -> dict[str, Any]:
    """The same rounds in Flower's Ray simulation (Ray kept warm between calls in this process)."""
    from simulation.federated import run_federated

    res = run_federated(caches, out, strategy="fedavg", num_rounds=rounds, model_cfg=model_cfg,
                        train_cfg=train_cfg, local_epochs=1, seed=train_cfg.seed,
                        extra_config={"initial-eval": False, "eval-split": "test", "update-encoding": encoding})
    return _summary(res.wall_s, res.history)


def _summary(wall: float, history: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [r for r in history if r["round"] >= 1]
    return {"wall_s": wall, "round_s": [r["time_s"] for r in rows],
            "test_auroc": rows[-1].get("pooled_test_auroc") if rows else None,
            "best_val_auroc": max((r["pooled_val_auroc"] for r in rows), default=None)}


def deploy(caches: dict[str, Path], tmp: Path, model_cfg: Any, train_cfg: Any, rounds: int,
           encoding: str) -> dict[str, Any]:
    """``fedpcr-server`` (SuperLink, TLS, node auth) + 3 ``flwr-client`` SuperNodes as processes on loopback."""
    sys.path.insert(0, str(ROOT / "tests"))
    from server.certs import make_dev_pki
    from server.checkpoint import read_metrics
    from server.config import config_json
    from test_deploy import BIN, Procs, free_ports, wait_for

    certs = make_dev_pki(tmp / "certs", [s.lower() for s in SITES])
    out, link_port, *node_ports = tmp / "deploy-run", *free_ports(4)
    procs, log = Procs(), tmp / "server.log"
    t0 = time.perf_counter()
    try:
        server = procs.start([str(BIN / "fedpcr-server"), "--certs", str(tmp / "certs"), "--port", str(link_port),
                              "--out-dir", str(out), "--rounds", str(rounds), "--min-nodes", str(len(SITES)),
                              "--set", "initial-eval=false", "--set", "eval-split='test'",
                              "--set", f"update-encoding='{encoding}'",
                              "--set", f"model-config='{config_json(model_cfg)}'",
                              "--set", f"train-config='{config_json(train_cfg)}'",
                              "--register", *(str(certs.node_keys[s.lower()][1]) for s in SITES)], log)
        wait_for(lambda: "submitting:" in log.read_text() or server.poll() is not None, 300, "SuperLink start")
        t_up = time.perf_counter()
        for (name, cache), port in zip(caches.items(), node_ports):
            procs.start([str(BIN / "flwr-client"), "--server", f"127.0.0.1:{link_port}", "--data-path", str(cache),
                         "--site-name", name, "--root-certificates", str(certs.ca_cert),
                         "--auth-key", str(certs.node_keys[name.lower()][0]), "--port", str(port)],
                        tmp / f"{name}.log")
        server.wait(timeout=1800)
        t_end = time.perf_counter()
        if server.returncode != 0:
            raise RuntimeError(f"fedpcr-server failed:\n{log.read_text()[-4000:]}")
    finally:
        procs.kill_all()
    res = _summary(t_end - t_up, read_metrics(out))
    res["startup_s"] = t_up - t0
    return res


def breakdown(pool: dict[str, Any], fed: dict[str, Any], wire: dict[str, Any], n_sites: int,
              protobuf: bool = True) -> dict[str, float]:
    """Where a federated run's extra time goes, per run (seconds); the remainder is transfer + scheduling.

    ``protobuf``: messages cross gRPC (deployment). The simulation hands messages to Ray actors instead
    (pickled, no protobuf), so its serialisation share is folded into the remainder."""
    rounds = len(fed["round_s"])
    serial = wire["serialise_roundtrip_s"] * 3 * n_sites * rounds if protobuf else 0.0  # train down/up, eval down
    site = list(pool["site_epoch_s"].values())
    straggler = (max(site) - statistics.mean(site)) * rounds
    outside = fed["wall_s"] - sum(fed["round_s"])  # run start (ServerApp, actors), final bundle
    extra = fed["wall_s"] - pool["wall_s"]
    return {"extra_s": extra, "outside_rounds_s": outside, "serialisation_s": serial,
            "straggler_wait_s": straggler,
            "transfer_scheduling_other_s": extra - outside - serial - straggler}


def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fedpcr-bench-fed-") as tmp_s:
        tmp = Path(tmp_s)
        caches, model_cfg, train_cfg = setup(tmp, args.workload, args.n)
        print(f"workload {args.workload}: {len(caches)} sites x {args.n} patients, {args.rounds} rounds, "
              f"load {load()}", flush=True)
        wire = wire_costs(model_cfg, args.encoding)
        pool = pooled(caches, model_cfg, train_cfg, args.rounds)
        print(f"pooled: {pool['wall_s']:.1f} s (load {load()})", flush=True)
        ray_s = start_ray()
        cold = simulate(caches, tmp / "sim-cold", model_cfg, train_cfg, args.rounds, args.encoding)
        sim = cold if args.single_sim else simulate(caches, tmp / "sim", model_cfg, train_cfg, args.rounds,
                                                    args.encoding)
        sim = {**sim, "cold_wall_s": cold["wall_s"] + ray_s, "ray_start_s": ray_s}
        print(f"simulation: {sim['wall_s']:.1f} s, {sim['cold_wall_s']:.1f} s first run incl. Ray start (load {load()})",
              flush=True)
        encodings = {}
        if args.compare_encodings:
            for enc in ("exact", "fp16", "bf16"):
                r = sim if enc == args.encoding else simulate(caches, tmp / f"sim-{enc}", model_cfg, train_cfg,
                                                              args.rounds, enc)
                encodings[enc] = {"test_auroc": r["test_auroc"], "best_val_auroc": r["best_val_auroc"],
                                  "update_bytes": wire_costs(model_cfg, enc, 1)["update_bytes"]}
                print(f"encoding {enc}: {encodings[enc]}", flush=True)
        dep = None
        if not args.no_deploy:
            dep = deploy(caches, tmp, model_cfg, train_cfg, args.rounds, args.encoding)
            print(f"deploy: {dep['wall_s']:.1f} s after a {dep['startup_s']:.1f} s start-up (load {load()})",
                  flush=True)
    return report(args, pool, sim, dep, wire, encodings)


def report(args: argparse.Namespace, pool: dict, sim: dict, dep: dict | None, wire: dict,
           encodings: dict) -> dict[str, Any]:
    fp32 = wire["model_fp32_bytes"]
    out = {"benchmark": "federation", "workload": args.workload, "rounds": args.rounds, "n_per_site": args.n,
           "encoding": args.encoding, "pooled_s": pool["wall_s"], "fed_sim_s": sim["wall_s"],
           "fed_sim_cold_s": sim["cold_wall_s"], "ray_start_s": sim["ray_start_s"],
           "single_sim": bool(args.single_sim), "fed_sim_over_pooled": sim["wall_s"] / pool["wall_s"],
           "fed_deploy_s": dep and dep["wall_s"], "deploy_startup_s": dep and dep["startup_s"],
           "fed_deploy_over_pooled": dep and dep["wall_s"] / pool["wall_s"],
           "bytes_per_round_per_site": wire["update_bytes"], "bytes_per_round_per_site_down": 2 * wire["update_bytes"],
           "model_fp32_bytes": fp32, "bytes_over_fp32": wire["update_bytes"] / fp32,
           "exact_update_bytes": wire["exact_update_bytes"], "n_params": wire["n_params"],
           "serialise_roundtrip_s": wire["serialise_roundtrip_s"], "pooled_round_s": pool["round_s"],
           "sim_round_s": sim["round_s"], "site_epoch_s": pool["site_epoch_s"],
           "test_auroc": {"pooled": pool["test_auroc"], "sim": sim["test_auroc"],
                          "deploy": dep and dep["test_auroc"]},
           "sim_breakdown": breakdown(pool, sim, wire, len(SITES), protobuf=False), "encodings": encodings}
    if dep:
        out["deploy_round_s"] = dep["round_s"]
        out["deploy_breakdown"] = breakdown(pool, dep, wire, len(SITES))
    for name in ("sim_breakdown", "deploy_breakdown"):
        if name in out:
            print(f"{name}: " + ", ".join(f"{k} {v:.1f}" for k, v in out[name].items()))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", choices=sorted(WORKLOADS), default="small")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--n", type=int, default=40, help="patients per site")
    p.add_argument("--encoding", default="exact", help="update encoding of the timed runs (exact | fp16 | bf16)")
    p.add_argument("--compare-encodings", action="store_true", help="also run exact/fp16/bf16: bytes + AUROC")
    p.add_argument("--no-deploy", action="store_true", help="skip the loopback SuperLink run")
    p.add_argument("--single-sim", action="store_true",
                   help="one simulation run (its wall includes the ClientApp actors' start; Ray start excluded)")
    args = p.parse_args(argv)
    emit(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
