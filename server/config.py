"""Federation settings of the coordinator (one dataclass; hospitals read only common.protocol.SiteSettings).

Under ``flower-superlink`` the values come from ``[tool.flwr.app.config]`` (``context.run_config``);
under ``flwr.simulation.run_simulation`` the run config is empty, so every field has its default
here and the simulation entry point injects overrides. The pyproject table must list the same keys.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Mapping

from common.config import PrepConfig, TrainConfig, from_dict
from common.encoding import check_encoding
from common.models.config import ModelConfig
from common.protocol import SiteSettings, json_object

_SITE = SiteSettings()  # the defaults of the fields a hospital also reads are decided there

STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi", "fedbn", "fedtrimmedavg", "fedmedian")
#: What SecAgg+ (server/secagg.py) can run: its unmasked sum is the FedAvg aggregate, which FedAvg / FedProx
#: use as is and FedAdam / FedYogi feed to their server optimiser (server.strategies.server_step); FedBN
#: (local norm layers) and the robust rules (trimmed mean, median: they need each update) cannot.
SECAGG_STRATEGIES = ("fedavg", "fedprox", "fedadam", "fedyogi")


@dataclass(frozen=True)
class FederationConfig:
    """What a federated run does; keys are the run-config keys with ``-`` for ``_``."""

    #: FedAdam, 6 rounds x 1 local epoch: the recipe that came closest to pooled training at held-out sites
    #: at equal compute (docs/experiments.md, "Federated recipe ablation").
    num_server_rounds: int = 6
    strategy: str = "fedadam"
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    #: Rounds wait until this many SuperNodes are connected (and sample at least this many).
    min_nodes: int = 2
    local_epochs: int = _SITE.local_epochs
    #: FedProx proximal weight mu (only used by ``fedprox``).
    proximal_mu: float = 0.01
    #: FedAdam / FedYogi server learning rate and adaptivity.
    server_lr: float = 0.01
    server_tau: float = 1e-3
    #: FedTrimmedAvg fraction cut from each end.
    trim_beta: float = 0.2
    #: Seconds the server waits for replies in a round (a site that has not answered by then is "missing").
    round_timeout: float = 3600.0
    #: A round's update is applied only when at least this many sites sent a valid reply (else the round
    #: is recorded as failed and the global model stays as it was).
    min_replies: int = 1
    #: After round 1, a round waits at most this many seconds for ``min-nodes`` connected sites, then starts
    #: with the connected ones if they are at least ``min-replies`` (round 1 waits for ``min-nodes``).
    node_wait: float = 120.0
    #: Whole-run limit in seconds from the (re)start of the coordinator (0 = none): rounds stop, the best
    #: round so far becomes the bundle.
    run_timeout: float = 172800.0
    #: An update is rejected when its norm exceeds this multiple of the previous global model's norm, or
    #: (with >= 3 replies) of the other sites' median update norm (0 = no norm check).
    norm_bound: float = 10.0
    #: From this many valid train replies up, fedavg / fedprox / fedbn aggregate with a trimmed mean that
    #: cuts at least one site from each end (0 = never); see docs/fault-tolerance.md for the measurement.
    robust_from: int = 3
    seed: int = _SITE.seed
    #: Where checkpoints, metrics.jsonl and the final bundle go (the ServerApp's machine).
    out_dir: str = "fedpcr-runs/federated"
    #: Resume from ``out_dir``'s last checkpoint when one exists.
    resume: bool = True
    #: Evaluate the initial model at the sites before round 1 (row ``round 0`` of metrics.jsonl).
    initial_eval: bool = True
    #: Also return test-split counts in evaluation ("val" | "test"); test is for final reporting only.
    eval_split: str = "val"
    #: Model preset name plus JSON overrides of ModelConfig fields ("" = none).
    model_preset: str = _SITE.model_preset
    model_config: str = _SITE.model_config
    #: JSON overrides of TrainConfig / PrepConfig fields ("" = defaults).
    train_config: str = _SITE.train_config
    prep_config: str = ""
    #: Arrays on the wire both ways (common.encoding): "exact" (default) | "fp16" | "bf16" (half the bytes, lossy).
    update_encoding: str = "exact"
    #: Ask every site for DP-SGD (sites apply min/max with their own policy; docs/privacy.md).
    dp: bool = False
    dp_epsilon: float = 8.0
    dp_delta: float = 1e-5
    dp_max_grad_norm: float = 1.0
    #: 0 = each site calibrates its noise to spend dp-epsilon over num-server-rounds.
    dp_noise_multiplier: float = 0.0
    #: Place each evaluation's score grid from the previous round's pooled counts (common/score_grid.py), so
    #: a barely trained model's scores do not all fall into one protected bin; False = scores as they are.
    adaptive_eval_grid: bool = True
    #: Secure aggregation of the train updates (Flower SecAgg+; server/secagg.py).
    secagg: bool = False
    #: SecAgg+: shares per site (also the minimum number of sites) and the reconstruction threshold.
    secagg_num_shares: int = 3
    secagg_threshold: int = 2
    #: SecAgg+ quantisation: values clipped to +-clip_range and mapped to [0, quantization_range).
    secagg_clip_range: float = 8.0
    secagg_quantization_range: int = 4194304
    #: SecAgg+: largest per-site weight (training patients); error per value <= sites x 2 clip / range x this / total.
    secagg_max_weight: float = 1000.0

    def __post_init__(self) -> None:
        check_encoding(self.update_encoding)
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {self.strategy!r}; known: {', '.join(STRATEGIES)}")
        if self.secagg and self.strategy not in SECAGG_STRATEGIES:
            raise ValueError(f"secagg = true unmasks only the FedAvg sum of the updates, so it runs with strategy "
                             f"{', '.join(SECAGG_STRATEGIES)}; got strategy {self.strategy!r}")
        if self.min_replies < 1 or self.min_nodes < 1:
            raise ValueError(f"min-replies and min-nodes must be >= 1, got {self.min_replies}, {self.min_nodes}")
        if self.eval_split not in ("val", "test"):
            raise ValueError(f"eval-split must be 'val' or 'test', got {self.eval_split!r}")

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None = None,
                        ) -> "FederationConfig":
        """Run config (possibly empty) + injected overrides -> config; unknown keys raise by name."""
        data = dict(run_config or {})
        data.update(overrides or {})
        return from_dict(cls, data, source="federation run config")

    def site(self) -> SiteSettings:
        """The part of this config a hospital reads (common.protocol.SiteSettings)."""
        return SiteSettings(seed=self.seed, local_epochs=self.local_epochs, model_preset=self.model_preset,
                            model_config=self.model_config, train_config=self.train_config)

    def model(self) -> ModelConfig:
        """The model config every node must build identically (its hash travels each round)."""
        return self.site().model()

    def train(self) -> TrainConfig:
        """Local training settings (seed defaults to the federation seed; no lr schedule)."""
        return self.site().train()

    def prep(self) -> PrepConfig:
        """The preprocessing every site's cache must have been made with."""
        return from_dict(PrepConfig, json_object(self.prep_config, "prep-config"), source="prep-config")

    def to_run_config(self) -> dict[str, Any]:
        """Flat dict with Flower's dashed keys (what ``[tool.flwr.app.config]`` holds)."""
        return {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}


def config_json(cfg: Any) -> str:
    """Compact JSON of a config dataclass, for the ``*-config`` run-config strings."""
    from common.config import to_dict

    return json.dumps(to_dict(cfg), sort_keys=True)
