"""The hospital <-> coordinator contract: message keys, per-round site config, counts, error codes.

One home for every name that crosses between a site's ClientApp (``client/``) and the ServerApp
(``server/``); both import it, neither imports the other. Flower-free and torch-free (stdlib + numpy)
so a hospital can check a round's config before loading anything heavy. docs/CONTRACTS.md §5 is
the prose version of this module.

Extending it: a new per-round key = a constant + a :class:`RoundConfig` field + a row in
``_ROUND_FIELDS``; a new refusal reason = a constant + a line in :data:`ERROR_CODES`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from common.encoding import ENCODINGS

# ------------------------------------------------------------------ record names in a Message
ARRAYS = "arrays"  #: ArrayRecord: model weights named as the model's state_dict (server -> site, site -> server)
CONFIG = "config"  #: ConfigRecord: the per-round site config (server -> site; see RoundConfig)
METRICS = "metrics"  #: MetricRecord: a reply's aggregate numbers (site -> server)
SITE = "site"  #: ConfigRecord in every reply naming the site (an institution label, not patient data)
SITE_NAME = "name"  #: key inside the SITE record

# ------------------------------------------------------------------ per-round config keys (server -> site)
SERVER_ROUND = "server-round"  #: int, set by Flower's strategies (0 = the initial evaluation)
PREP_HASH = "prep-hash"  #: str, PrepConfig.hash() of the federation; must equal the site cache's
MODEL_HASH = "model-hash"  #: str, ModelConfig.hash() of the federation; must equal the site's own
LOCAL_EPOCHS = "local-epochs"  #: int, local epochs per train round
LR = "lr"  #: float, local learning rate
PROXIMAL_MU = "proximal-mu"  #: float, FedProx weight (Flower's FedProx spelling; 0 = plain local SGD)
LOCAL_NORM = "local-norm"  #: bool, FedBN: the site keeps its own norm-layer parameters
EVAL_SPLIT = "eval-split"  #: "val" | "test": evaluate also returns test-split counts when "test"
UPDATE_ENCODING = "update-encoding"  #: str, common.encoding name ("fp16" | "bf16"); absent = exact arrays both ways
#: float pair, evaluate: count scores as sigmoid(scale * (logit(s) - centre)) (common/score_grid.py); absent = as is
EVAL_LOGIT_CENTRE = "eval-logit-centre"
EVAL_LOGIT_SCALE = "eval-logit-scale"
#: What a site accepts for them (a monotone map the coordinator could build into the weights anyway).
MAX_EVAL_LOGIT_CENTRE = 50.0
MAX_EVAL_LOGIT_SCALE = 1000.0

# differential privacy requested by the coordinator (a site's own policy always wins; see client/privacy.py)
DP = "dp"  #: bool, train this round with DP-SGD
DP_EPSILON = "dp-epsilon"  #: float, requested total epsilon for the run (the site takes min with its own)
DP_DELTA = "dp-delta"  #: float, requested delta (the site takes min with its own)
DP_MAX_GRAD_NORM = "dp-max-grad-norm"  #: float, requested clipping bound (the site takes min with its own)
DP_NOISE_MULTIPLIER = "dp-noise-multiplier"  #: float, requested noise (the site takes max with its own; 0 = calibrate)
DP_ROUNDS = "dp-rounds"  #: int, train rounds planned for the run (the site calibrates its noise over them)

EVAL_SPLITS = ("val", "test")

# ------------------------------------------------------------------ reply metric keys (site -> server)
NUM_EXAMPLES = "num-examples"  #: int, patients behind the reply (train split / val split); weights averages
TRAIN_LOSS = "train-loss"  #: float, mean local training loss
LOSS = "loss"  #: float, validation BCE
N_POS = "n-pos"  #: int, pCR patients in the evaluated split
N_NEG = "n-neg"  #: int, non-pCR patients in the evaluated split
TP, FP, TN, FN = "tp", "fp", "tn", "fn"  #: int lists, one entry per THRESHOLD_GRID threshold
COUNT_KEYS = (TP, FP, TN, FN)
TEST_PREFIX = "test-"  #: the same keys for the test split (eval-split "test" only)
EPSILON = "epsilon"  #: float, train reply under DP: the site's epsilon spent so far in this run (at DELTA)
DELTA = "delta"  #: float, the delta EPSILON is accounted at
WITHHELD = "withheld"  #: int 0/1, evaluate reply: 1 = too few patients per class, counts all zero
SITE_AUROC = "site-auroc"  #: float, evaluate reply, only when the site opts in (policy share_site_auroc)
AUROC = "auroc"  #: added by the server when it aggregates counts (never sent by a site)

#: Site-local ArrayRecord name in ``context.state`` holding FedBN norm layers (never sent).
LOCAL_NORM_STATE = "fedpcr-local-norm"

# ------------------------------------------------------------------ error codes (Message.error.code)
#: The site will not take part in this round (hash mismatch, missing/unreadable cache); reason says why.
REFUSED = 4100
#: The round config is malformed or holds a key this site does not understand; reason names the key.
BAD_CONFIG = 4101
#: Training would exceed the site's privacy budget (reason names spent, projected and allowed epsilon).
PRIVACY_BUDGET = 4103

#: The global model the server sent holds NaN/Inf; the site refuses to train or evaluate on it.
BAD_MODEL = 4102
# Site-policy refusals (client/policy.py + client/rules.py): the code names the rule, the reason is short
# and free of data; the full reason stays in the site's own log.
POLICY_MAX_ROUNDS = 4130  #: more training rounds in this run than the site's policy allows
POLICY_LOCAL_EPOCHS = 4131  #: more local epochs than the policy allows
POLICY_LR = 4132  #: learning rate outside the policy's range
POLICY_BATCH_SIZE = 4133  #: batch size below the policy's minimum
POLICY_TEST_SPLIT = 4134  #: test-split evaluation asked for; the policy does not allow it
POLICY_PRETRAINED = 4135  #: a pretrained-weights path from the coordinator; the policy does not allow it
POLICY_MODEL = 4136  #: a model the site has not approved (preset / model hash)
POLICY_PREP = 4137  #: a preprocessing hash the site has not approved
POLICY_EVAL_REQUESTS = 4138  #: more evaluate requests in this run than the policy allows
POLICY_DP = 4139  #: a training round without the differential privacy the policy requires
APP_NOT_APPROVED = 4140  #: the app bundle (FAB) is not one the site approved; it was not executed
SITE_ERROR = 4141  #: the site failed while handling the message; details only in the site's own log
AUDIT_FAILED = 4142  #: the site could not write its audit log, so it sent nothing

#: Every fedpcr error code with its one-line meaning (Flower's own codes are below 100).
ERROR_CODES: dict[int, str] = {
    REFUSED: "site refused the round (hash mismatch, missing or unreadable site data)",
    BAD_CONFIG: "site could not accept the round config (malformed value or unknown key)",
    BAD_MODEL: "site refused a global model holding non-finite values (NaN/Inf)",
    POLICY_MAX_ROUNDS: "site policy: max-rounds-per-run exceeded",
    POLICY_LOCAL_EPOCHS: "site policy: max-local-epochs exceeded",
    POLICY_LR: "site policy: learning rate outside the accepted range",
    POLICY_BATCH_SIZE: "site policy: batch size below the minimum",
    POLICY_TEST_SPLIT: "site policy: test-split evaluation not allowed",
    POLICY_PRETRAINED: "site policy: pretrained-weights path not allowed",
    POLICY_MODEL: "site policy: model not approved",
    POLICY_PREP: "site policy: preprocessing not approved",
    POLICY_EVAL_REQUESTS: "site policy: max-evaluate-requests-per-run exceeded",
    POLICY_DP: "site policy: differential privacy required",
    APP_NOT_APPROVED: "site policy: app bundle not approved (not executed)",
    SITE_ERROR: "site error while handling the message (details in the site's log)",
    AUDIT_FAILED: "site could not write its audit log (nothing sent)",
    PRIVACY_BUDGET: "site's differential-privacy budget would be exceeded (reason: spent and allowed epsilon)",
}


def describe_error(code: int) -> str:
    """One-line meaning of an error code (fedpcr's or not)."""
    return ERROR_CODES.get(int(code), f"error code {int(code)} (not a fedpcr code; see Flower's ErrorCode)")


class ProtocolError(ValueError):
    """A message does not follow this contract; ``code`` is the error code a site replies with."""

    def __init__(self, message: str, code: int = BAD_CONFIG) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------ the per-round site config
def _as_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ProtocolError(f"round config {key!r} must be an int, got {value!r}")
    return int(value)


def _as_float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise ProtocolError(f"round config {key!r} must be a number, got {value!r}")
    return float(value)


def _as_bool(key: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ProtocolError(f"round config {key!r} must be a bool, got {value!r}")
    return bool(value)


def _as_str(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"round config {key!r} must be a string, got {value!r}")
    return value


@dataclass(frozen=True)
class RoundConfig:
    """What a hospital accepts in a train/evaluate message's ``config`` record (one round).

    ``None`` means "not sent": the site uses its own setting (local epochs and lr from the run config).
    """

    server_round: int = 0
    prep_hash: str = ""
    model_hash: str = ""
    local_epochs: int | None = None
    lr: float | None = None
    proximal_mu: float = 0.0
    local_norm: bool = False
    eval_split: str = "val"
    #: Encoding of the arrays both ways this round (common.encoding); None = exact (the key is not sent).
    update_encoding: str | None = None
    eval_logit_centre: float | None = None
    eval_logit_scale: float | None = None
    dp: bool | None = None  #: None = not requested (no DP unless the site requires it)
    dp_epsilon: float | None = None
    dp_delta: float | None = None
    dp_max_grad_norm: float | None = None
    dp_noise_multiplier: float | None = None
    dp_rounds: int | None = None

    def __post_init__(self) -> None:
        if self.update_encoding is not None:
            if self.update_encoding not in ENCODINGS:
                raise ProtocolError(f"round config {UPDATE_ENCODING!r} must be one of {ENCODINGS}, "
                                    f"got {self.update_encoding!r}")
        if self.eval_split not in EVAL_SPLITS:
            raise ProtocolError(f"round config {EVAL_SPLIT!r} must be one of {EVAL_SPLITS}, got {self.eval_split!r}")
        if self.local_epochs is not None and self.local_epochs < 1:
            raise ProtocolError(f"round config {LOCAL_EPOCHS!r} must be >= 1, got {self.local_epochs}")
        if self.proximal_mu < 0:
            raise ProtocolError(f"round config {PROXIMAL_MU!r} must be >= 0, got {self.proximal_mu}")
        if self.eval_logit_centre is not None and not abs(self.eval_logit_centre) <= MAX_EVAL_LOGIT_CENTRE:
            raise ProtocolError(f"round config {EVAL_LOGIT_CENTRE!r} must be within +/-{MAX_EVAL_LOGIT_CENTRE:g}, "
                                f"got {self.eval_logit_centre}")
        if self.eval_logit_scale is not None and not 0 < self.eval_logit_scale <= MAX_EVAL_LOGIT_SCALE:
            raise ProtocolError(f"round config {EVAL_LOGIT_SCALE!r} must be in (0, {MAX_EVAL_LOGIT_SCALE:g}], "
                                f"got {self.eval_logit_scale}")

    def eval_grid(self) -> tuple[float, float]:
        """(centre, scale) of this round's evaluation grid; (0, 1) = scores counted as they are."""
        return (0.0 if self.eval_logit_centre is None else float(self.eval_logit_centre),
                1.0 if self.eval_logit_scale is None else float(self.eval_logit_scale))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RoundConfig":
        """Parse a ConfigRecord (or plain dict); a wrong type or an UNKNOWN key raises ProtocolError naming it.

        Unknown keys are refused on purpose: a site never silently ignores an instruction it does not
        understand (e.g. a newer coordinator asking for a privacy setting this site does not apply).
        """
        unknown = sorted(set(data) - set(_ROUND_FIELDS))
        if unknown:
            raise ProtocolError(f"round config has key(s) this site does not understand: {', '.join(unknown)} "
                                f"(known: {', '.join(_ROUND_FIELDS)}); update the site's fedpcr")
        values = {field: parse(key, data[key]) for key, (field, parse) in _ROUND_FIELDS.items() if key in data}
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The ConfigRecord content (keys whose value is None are not sent)."""
        out = {}
        for key, (field, _) in _ROUND_FIELDS.items():
            value = getattr(self, field)
            if value is not None:
                out[key] = value
        return out

    def replace(self, **changes: Any) -> "RoundConfig":
        """A copy with fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


#: message key -> (RoundConfig field, parser). The one list of keys a site accepts.
_ROUND_FIELDS: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    SERVER_ROUND: ("server_round", _as_int),
    PREP_HASH: ("prep_hash", _as_str),
    MODEL_HASH: ("model_hash", _as_str),
    LOCAL_EPOCHS: ("local_epochs", _as_int),
    LR: ("lr", _as_float),
    PROXIMAL_MU: ("proximal_mu", _as_float),
    LOCAL_NORM: ("local_norm", _as_bool),
    EVAL_SPLIT: ("eval_split", _as_str),
    UPDATE_ENCODING: ("update_encoding", _as_str),
    EVAL_LOGIT_CENTRE: ("eval_logit_centre", _as_float),
    EVAL_LOGIT_SCALE: ("eval_logit_scale", _as_float),
    DP: ("dp", _as_bool),
    DP_EPSILON: ("dp_epsilon", _as_float),
    DP_DELTA: ("dp_delta", _as_float),
    DP_MAX_GRAD_NORM: ("dp_max_grad_norm", _as_float),
    DP_NOISE_MULTIPLIER: ("dp_noise_multiplier", _as_float),
    DP_ROUNDS: ("dp_rounds", _as_int),
}
ROUND_CONFIG_KEYS = tuple(_ROUND_FIELDS)


# ------------------------------------------------------------------ threshold counts <-> int lists
def counts_to_lists(counts: Any, prefix: str = "") -> dict[str, list[int]]:
    """(len(grid), 4) TP/FP/TN/FN counts -> ``{prefix+"tp": [...], ...}`` int lists a MetricRecord carries."""
    arr = np.asarray(counts)
    if arr.ndim != 2 or arr.shape[1] != len(COUNT_KEYS):
        raise ValueError(f"counts for {prefix}{'/'.join(COUNT_KEYS)} must have shape (n, 4), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer) or (arr < 0).any():
        raise ValueError(f"counts for {prefix}{'/'.join(COUNT_KEYS)} must be non-negative integers")
    return {prefix + k: [int(v) for v in arr[:, j]] for j, k in enumerate(COUNT_KEYS)}


def counts_from_lists(metrics: Mapping[str, Any], prefix: str = "", length: int | None = None) -> np.ndarray:
    """Inverse of :func:`counts_to_lists`: (n, 4) int64; ValueError naming the key when a list is missing,
    not a list of non-negative ints, of another length than the others, or not ``length`` long."""
    cols = []
    for key in (prefix + k for k in COUNT_KEYS):
        if key not in metrics:
            raise ValueError(f"count list {key!r} missing from the reply")
        value = metrics[key]
        if not isinstance(value, (list, tuple, np.ndarray)) or any(
                isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 for v in value):
            raise ValueError(f"count list {key!r} must be a list of non-negative ints")
        cols.append(np.asarray(value, dtype=np.int64).reshape(-1))
        want = len(cols[0]) if length is None else length
        if len(cols[-1]) != want:
            raise ValueError(f"count list {key!r} has {len(cols[-1])} entries, expected {want}")
    return np.stack(cols, axis=1)


# ------------------------------------------------------------------ run config a hospital reads
#: Run-config keys (``[tool.flwr.app.config]`` / simulation overrides) a hospital reads; all others are
#: the coordinator's and are ignored by sites, so a server-only typo never breaks a hospital.
RUN_SEED = "seed"
RUN_LOCAL_EPOCHS = "local-epochs"
RUN_MODEL_PRESET = "model-preset"
RUN_MODEL_CONFIG = "model-config"
RUN_TRAIN_CONFIG = "train-config"


@dataclass(frozen=True)
class SiteSettings:
    """The run-config subset a hospital reads (model, local training, seed). The coordinator's
    FederationConfig takes these fields' defaults and its model()/train() from here (one place decides)."""

    seed: int = 0
    local_epochs: int = 1
    #: Model preset name plus JSON overrides of ModelConfig fields ("" = none).
    model_preset: str = "small"
    model_config: str = ""
    #: JSON overrides of TrainConfig fields ("" = defaults; seed defaults to ``seed``).
    train_config: str = ""

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any] | None,
                        overrides: Mapping[str, Any] | None = None) -> "SiteSettings":
        """Pick only this class's keys from run config + overrides; a wrong type raises naming the key."""
        data = {**dict(run_config or {}), **dict(overrides or {})}
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = f.name.replace("_", "-")
            if key in data:
                values[f.name] = _RUN_PARSERS[f.type](key, data[key])
        return cls(**values)

    def model(self) -> Any:
        """The ModelConfig every node must build identically (its hash travels each round); no torch import."""
        from common.config import from_dict
        from common.models.config import ModelConfig, preset

        extra = json_object(self.model_config, RUN_MODEL_CONFIG)
        base = dataclasses.asdict(preset(self.model_preset))
        return from_dict(ModelConfig, {**base, **extra}, source=RUN_MODEL_CONFIG)

    def train(self) -> Any:
        """Local TrainConfig (seed defaults to ``seed``); an lr schedule is refused (rounds restart the optimiser)."""
        from common.config import TrainConfig, from_dict

        extra = json_object(self.train_config, RUN_TRAIN_CONFIG)
        extra.setdefault("seed", self.seed)
        cfg = from_dict(TrainConfig, extra, source=RUN_TRAIN_CONFIG)
        if cfg.lr_schedule != "constant":
            # a round trains local_epochs from the global weights with a fresh optimiser: an epoch schedule
            # over TrainConfig.epochs would silently never apply, so refuse it instead of ignoring it
            raise ValueError(f"train-config: lr_schedule {cfg.lr_schedule!r} applies to centralised training "
                             "(fedpcr train, the pooled and local arms) only; federated runs use 'constant'")
        return cfg


def _run_value(kind: type) -> Callable[[str, Any], Any]:
    """Parser of one run-config value of type ``kind`` (ValueError naming the key)."""
    accepted = {int: (int, np.integer), float: (int, float, np.number), bool: (bool, np.bool_), str: (str,)}[kind]

    def parse(key: str, value: Any) -> Any:
        if isinstance(value, accepted) and (kind is bool or not isinstance(value, (bool, np.bool_))):
            return kind(value)
        raise ValueError(f"run config {key!r} must be {kind.__name__}, got {value!r}")

    return parse


#: SiteSettings field annotation -> parser (a new field type needs an entry here).
_RUN_PARSERS = {t.__name__: _run_value(t) for t in (int, float, bool, str)}


def json_object(text: str, key: str) -> dict[str, Any]:
    """A run-config JSON string -> dict ("" -> {}); ValueError naming ``key`` otherwise."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"run config {key!r} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"run config {key!r} must be a JSON object")
    return value


__all__ = [
    "ARRAYS", "CONFIG", "METRICS", "SITE", "SITE_NAME",
    "SERVER_ROUND", "PREP_HASH", "MODEL_HASH", "LOCAL_EPOCHS", "LR", "PROXIMAL_MU", "LOCAL_NORM", "EVAL_SPLIT",
    "UPDATE_ENCODING", "EVAL_LOGIT_CENTRE", "EVAL_LOGIT_SCALE", "MAX_EVAL_LOGIT_CENTRE", "MAX_EVAL_LOGIT_SCALE",
    "EVAL_SPLITS", "ROUND_CONFIG_KEYS",
    "DP", "DP_EPSILON", "DP_DELTA", "DP_MAX_GRAD_NORM", "DP_NOISE_MULTIPLIER", "DP_ROUNDS",
    "EPSILON", "DELTA", "WITHHELD", "SITE_AUROC", "PRIVACY_BUDGET",
    "NUM_EXAMPLES", "TRAIN_LOSS", "LOSS", "N_POS", "N_NEG", "TP", "FP", "TN", "FN", "COUNT_KEYS", "TEST_PREFIX",
    "AUROC", "LOCAL_NORM_STATE",
    "REFUSED", "BAD_CONFIG", "BAD_MODEL", "ERROR_CODES", "POLICY_MAX_ROUNDS", "POLICY_LOCAL_EPOCHS", "POLICY_LR",
    "POLICY_BATCH_SIZE", "POLICY_TEST_SPLIT", "POLICY_PRETRAINED", "POLICY_MODEL", "POLICY_PREP",
    "POLICY_EVAL_REQUESTS", "POLICY_DP", "APP_NOT_APPROVED", "SITE_ERROR", "AUDIT_FAILED", "describe_error", "ProtocolError",
    "RoundConfig", "counts_to_lists", "counts_from_lists",
    "RUN_SEED", "RUN_LOCAL_EPOCHS", "RUN_MODEL_PRESET", "RUN_MODEL_CONFIG", "RUN_TRAIN_CONFIG", "SiteSettings",
    "json_object",
]
