"""Time per federated train round with and without DP-SGD and with and without SecAgg+ (prints a table).

``python benchmarks/bench_privacy.py [--sites 3] [--patients 24] [--rounds 2] [--image]``

The real ClientApps (our handlers, Opacus, Flower's secaggplus_mod) answer the real server-side round code
(``server.app._train_round`` path: plain strategy FedAvg, or ``server.secagg.secagg_train_round``) through an
in-process Grid, so the figures are the compute + protocol cost without Ray/gRPC start-up.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

_ROOT = Path(__file__).resolve().parent.parent
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


class InProcessGrid:
    """Grid calls answered by ClientApps in this process (one Context per node; content copied per node)."""

    def __init__(self, apps: dict, contexts: dict) -> None:
        from flwr.supercore.task_identity import TaskIdentity

        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        self.apps, self.contexts, self.run = apps, contexts, SimpleNamespace(run_id=1)

    def get_node_ids(self) -> list[int]:
        return list(self.apps)

    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001
        from flwr.app import Message, Metadata

        out = []
        for i, msg in enumerate(messages):
            md = Metadata(run_id=1, message_id=f"m{time.time_ns()}-{i}", src_node_id=0,
                          dst_node_id=msg.metadata.dst_node_id, reply_to_message_id="", group_id=msg.metadata.group_id,
                          created_at=time.time(), ttl=3600.0, message_type=msg.metadata.message_type)
            node = md.dst_node_id
            out.append(self.apps[node](Message(content=copy.deepcopy(msg.content), metadata=md), self.contexts[node]))
        return out

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):  # noqa: ANN001
        from flwr.app import Message

        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)


def eval_cost_clinical(seed: int = 0) -> int:
    """Pooled-AUROC error of protected counts on MAMA-MIA: pooled clinical LR trained on every site's train
    split, each site's validation split evaluated and protected; printed per protection setting."""
    import numpy as np

    from simulation.clinical_experiment import fit_sklearn_lr, load_mama_mia, split_ids
    from simulation.privacy_experiment import eval_cost, md_table

    data = load_mama_mia()
    train, per_site = [], {}
    for site in np.unique(data.site):
        idx = np.flatnonzero(data.site == site)
        if len(idx) < 10 or len(np.unique(data.y[idx])) < 2:
            continue
        sp = split_ids(data.ids[idx], data.y[idx], seed, 0.2, 0.2)
        ids = {k: set(v) for k, v in sp.items()}
        train += [i for i in idx if data.ids[i] in ids["train"]]
        per_site[site] = [i for i in idx if data.ids[i] in ids["val"]]
    score = fit_sklearn_lr(data.X[train], data.y[train])
    sites = {s: (data.y[i], score(data.X[i])) for s, i in per_site.items() if i}
    for k in (5, 1):
        print(f"\nMAMA-MIA clinical LR, {len(sites)} sites, validation splits; min patients per class {k}")
        print(md_table(eval_cost(sites, min_per_class=k, seed=seed)))
    return 0


def eval_cost_embedded(caches: list[str], seed: int = 0) -> int:
    """Same as :func:`eval_cost_clinical` on site caches (e.g. the embedded cohort simulation/run.py prepared)."""
    import numpy as np

    from common.data import load_cache, split_patients
    from common.schema import encode_clinical
    from simulation.clinical_experiment import fit_sklearn_lr
    from simulation.privacy_experiment import eval_cost, md_table

    parts = {}
    for path in caches:
        cache = load_cache(Path(path))
        ids = cache.labelled_ids()
        y = np.asarray(cache.labels(ids), dtype=float)
        table = cache.clinical.set_index("patient_id").loc[ids].reset_index()
        values, present = encode_clinical(table)
        X = np.hstack([values, present]).astype(float)
        sp = split_patients(ids, list(y), seed, 0.2, 0.2)
        pick = {k: np.isin(ids, v) for k, v in sp.items()}
        parts[cache.site] = (X, y, pick)
    score = fit_sklearn_lr(np.vstack([X[p["train"]] for X, _, p in parts.values()]),
                           np.concatenate([y[p["train"]] for _, y, p in parts.values()]))
    sites = {s: (y[p["val"]], score(X[p["val"]])) for s, (X, y, p) in parts.items()}
    for k in (5, 1):
        print(f"\nembedded cohort clinical LR, {len(sites)} sites, validation splits; min patients per class {k}")
        print(md_table(eval_cost(sites, min_per_class=k, seed=seed)))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--patients", type=int, default=24)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--image", action="store_true", help="the default image+clinical model (slow on CPU)")
    p.add_argument("--eval-cost", action="store_true",
                   help="instead: pooled-AUROC error of protected evaluation on the real MAMA-MIA clinical table")
    p.add_argument("--caches", nargs="*", default=None,
                   help="with --eval-cost: site caches of the embedded cohort (clinical LR on their train splits)")
    args = p.parse_args(argv)
    if args.sites < 3 and not args.eval_cost:
        p.error(f"--sites {args.sites}: Flower's SecAgg+ needs at least 3 sites (num_shares > 2)")
    if args.eval_cost:
        return eval_cost_embedded(args.caches) if args.caches else eval_cost_clinical()

    import torch
    from flwr.app import ArrayRecord, Context, RecordDict

    from client.app import make_client_app
    from common.config import PrepConfig
    from server.app import Run, _train_round
    from server.rounds import RunClock
    from server.config import FederationConfig, config_json
    from server.strategies import build_strategy
    from simulation.federated import simulation_policy
    from tests.cache_factory import make_cache

    root = Path(tempfile.mkdtemp(prefix="bench-privacy-"))
    caches = {i + 1: make_cache(root, f"S{i}", n=args.patients, seed=i, signal="both") for i in range(args.sites)}
    over = {"prep-config": config_json(PrepConfig(shape=(32, 32, 32))), "train-config": json.dumps({"batch_size": 8}),
            "min-nodes": args.sites, "num-server-rounds": args.rounds, "round-timeout": 600.0,
            "secagg-num-shares": args.sites, "secagg-threshold": max(2, args.sites - 1), "secagg-max-weight": 100.0}  # default strategy: FedAdam
    if not args.image:
        over["model-config"] = json.dumps({"use_image": False})
    rows = []
    for dp in (False, True):
        for secagg in (False, True):
            cfg = FederationConfig.from_run_config({}, {**over, "dp": dp, "secagg": secagg, "dp-epsilon": 8.0})
            site_over = {k: v for k, v in over.items() if k in ("model-config", "train-config")}
            policy = simulation_policy(max_epsilon=8.0)
            state = Path(tempfile.mkdtemp(dir=root))
            apps = {n: make_client_app(site_over, policy=policy) for n in caches}
            ctxs = {n: Context(run_id=1, node_id=n, node_config={"data-path": str(c), "partition-id": n - 1,
                                                                 "state-dir": str(state / str(n))},
                               state=RecordDict(), run_config={}) for n, c in caches.items()}
            grid = InProcessGrid(apps, ctxs)
            torch.manual_seed(0)
            from common.models import build_model

            arrays = ArrayRecord(build_model(cfg.model()).state_dict())
            run = Run(cfg, grid, build_strategy(cfg), RunClock(float(cfg.run_timeout)))
            times = []
            for rnd in range(1, args.rounds + 1):
                t0 = time.perf_counter()
                res = _train_round(run, rnd, arrays, sorted(grid.get_node_ids()))
                times.append(time.perf_counter() - t0)
                if res.arrays is None or any(res.faults.get(k) for k in ("refused", "invalid", "missing")):
                    raise RuntimeError(f"round {rnd} failed: {res.reason} {res.faults}")
                arrays, eps = res.arrays, res.epsilon
            rows.append((dp, secagg, times, max(eps.values()) if eps else float("nan")))
            print(f"dp={dp!s:5} secagg={secagg!s:5} per round: " + ", ".join(f"{t:.2f}s" for t in times)
                  + (f"  epsilon {rows[-1][3]:.2f}" if dp else ""), flush=True)
    base = sum(rows[0][2][1:] or rows[0][2]) / len(rows[0][2][1:] or rows[0][2])
    print(f"\n{args.sites} sites x {args.patients} patients, {'image+clinical' if args.image else 'clinical-only'} "
          "model; mean of rounds after the first (warm-up) where possible")
    print("| DP | SecAgg+ | s / round | x plain |")
    print("|---|---|---|---|")
    for dp, secagg, times, _ in rows:
        t = times[1:] or times
        mean = sum(t) / len(t)
        print(f"| {'yes' if dp else 'no'} | {'yes' if secagg else 'no'} | {mean:.2f} | {mean / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
