"""The hospital's site policy: what this site accepts from the coordinator (its settings always win).

Loaded from ``flwr-client --policy FILE`` (YAML, one mapping per section below); absent file or
section -> the conservative defaults here. Flower-free and torch-free so it loads before anything
heavy. Enforcement lives with the code that acts on each rule (``client/rules.py`` for the round
checks, the SuperNode launcher ``client/approval.py`` for app hashes, the privacy code for DP/evaluation).
The ClientApp reads the policy through :func:`site_policy` only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from common.config import from_dict


@dataclass(frozen=True)
class CodePolicy:
    """Which code and data contract the site runs."""

    #: sha256 of the Flower app bundles (FAB) this site runs; empty = only apps signed by a trusted entity.
    app_hashes: tuple[str, ...] = ()
    #: Model presets the site accepts (by name); a custom model config must match ``model_hashes``.
    model_presets: tuple[str, ...] = ("small", "paper")
    model_hashes: tuple[str, ...] = ()  # "*" accepts any model (simulation's open policy only)
    #: Preprocessing hashes accepted; empty = the site cache's own prep hash only.
    prep_hashes: tuple[str, ...] = ()
    #: Whether the coordinator may name a pretrained-weights path for the site to read.
    allow_pretrained_path: bool = False


@dataclass(frozen=True)
class TrainingPolicy:
    """Bounds on what a training round may ask for."""

    max_rounds_per_run: int = 100
    max_local_epochs: int = 5
    lr_min: float = 1e-6
    lr_max: float = 1e-2
    min_batch_size: int = 4


@dataclass(frozen=True)
class PrivacyPolicy:
    """Differential privacy the site requires (sample-level DP-SGD, accounted at the site across rounds)."""

    #: Refuse any training round that does not run DP-SGD.
    require_dp: bool = False
    #: Total (epsilon, delta) budget for one run; a round that would exceed it is refused.
    max_epsilon: float = 8.0
    delta: float = 1e-5
    #: Per-sample gradient clipping bound and the smallest noise multiplier the site accepts.
    max_grad_norm: float = 1.0
    min_noise_multiplier: float = 0.0


@dataclass(frozen=True)
class EvaluationPolicy:
    """What an evaluate reply may reveal."""

    #: Below this many patients of either class in the evaluated split the site sends no counts.
    min_patients_per_class: int = 5
    #: Evaluate requests answered per run; later ones are refused.
    max_requests_per_run: int = 50
    #: Whether the coordinator may ask for the site's test split (default: never).
    allow_test_split: bool = False
    #: Opt-in: send this site's own AUROC (otherwise only protected counts for pooling).
    share_site_auroc: bool = False
    #: Protected counts (client/private_eval.py): scores binned to this many equal-width bins on [0, 1] ...
    score_bins: int = 20
    #: ... and discrete-Laplace noise per bin and class giving epsilon-DP per reply (0 = no noise).
    eval_epsilon: float = 1.0
    #: Opt-out (trusted federations only): send the exact counts on the full threshold grid.
    exact_counts: bool = False


@dataclass(frozen=True)
class SitePolicy:
    """The whole policy: one section per concern."""

    code: CodePolicy = field(default_factory=CodePolicy)
    training: TrainingPolicy = field(default_factory=TrainingPolicy)
    privacy: PrivacyPolicy = field(default_factory=PrivacyPolicy)
    evaluation: EvaluationPolicy = field(default_factory=EvaluationPolicy)

    @classmethod
    def from_mapping(cls, data: dict[str, Any] | None, source: str = "policy") -> "SitePolicy":
        """Build from a ``{section: {key: value}}`` mapping; unknown sections or keys are refused by name."""
        data = dict(data or {})
        sections = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in sections:
                raise ValueError(f"{source}: unknown section {key!r}; known: {sorted(sections)}")
            if not isinstance(value, dict):
                raise ValueError(f"{source}: section {key!r} must be a mapping, got {type(value).__name__}")
            kwargs[name] = from_dict(sections[name].default_factory, _floats(sections[name].default_factory, value),
                                     source=f"{source} [{key}]")  # type: ignore[misc]
        return cls(**kwargs)

    def to_mapping(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict (for printing at start and for the audit log)."""
        return {k: {kk: list(vv) if isinstance(vv, tuple) else vv for kk, vv in v.items()}
                for k, v in dataclasses.asdict(self).items()}


def _floats(cls: Any, values: dict[str, Any]) -> dict[str, Any]:
    """YAML 1.1 reads ``1e-6`` as a string: turn such values of float fields into floats (else refuse)."""
    kinds = {f.name: f.type for f in dataclasses.fields(cls)}
    out = dict(values)
    for key, value in values.items():
        if kinds.get(key.replace("-", "_")) in (float, "float") and isinstance(value, str):
            try:
                out[key] = float(value)
            except ValueError:
                raise ValueError(f"policy {key!r} must be a number, got {value!r}") from None
    return out


def load_policy(path: str | Path | None) -> SitePolicy:
    """The site's policy from a YAML file, or the built-in conservative default when ``path`` is None."""
    if path is None:
        return SitePolicy()
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read site policy {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"site policy {path} must hold a mapping of sections, got {type(data).__name__}")
    return SitePolicy.from_mapping(data, source=str(path))


#: Node-config key naming the site policy file (``flwr-client --policy FILE`` writes it). A value that starts
#: with ``{`` is the policy itself as inline JSON/YAML (how a simulation injects one).
POLICY_FILE = "policy-file"
#: Node-config key a deployment always sets (``client.site.DATA_PATH``; repeated here to stay import-free).
_DATA_PATH = "data-path"

_CACHE: dict[str, SitePolicy] = {}


def open_policy() -> SitePolicy:
    """A policy that accepts whatever the coordinator asks (simulation: coordinator and sites are one researcher).

    Never the default of a deployment: a SuperNode started with a data path and no policy gets
    :class:`SitePolicy`'s conservative defaults.
    """
    return SitePolicy(
        code=CodePolicy(model_presets=(), model_hashes=("*",), allow_pretrained_path=True),
        training=TrainingPolicy(max_rounds_per_run=1_000_000, max_local_epochs=1_000_000, lr_min=0.0,
                                lr_max=1e9, min_batch_size=1),
        # one researcher owns every emulated site: exact counts, no minimum (deployments never get this)
        evaluation=EvaluationPolicy(max_requests_per_run=1_000_000, allow_test_split=True, exact_counts=True,
                                    min_patients_per_class=0),
    )


def policy_from_text(text: str, source: str = "policy") -> SitePolicy:
    """A policy from YAML/JSON text (the inline form of the ``policy-file`` node-config value)."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"cannot parse site policy {source}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"site policy {source} must hold a mapping of sections, got {type(data).__name__}")
    return SitePolicy.from_mapping(data, source=source)


def site_policy(context: Any) -> SitePolicy:
    """THE accessor of this site's policy (cached per process and value of the ``policy-file`` node config).

    ``policy-file`` set: that file (or inline policy); else a deployment (``data-path`` set) gets the
    conservative default; else (simulation without a policy) :func:`open_policy`.
    """
    node_config: Mapping[str, Any] = getattr(context, "node_config", None) or {}
    value = node_config.get(POLICY_FILE)
    key = str(value) if value else ("<default>" if _DATA_PATH in node_config else "<open>")
    if key not in _CACHE:
        if not value:
            _CACHE[key] = SitePolicy() if key == "<default>" else open_policy()
        elif key.lstrip().startswith("{"):
            _CACHE[key] = policy_from_text(key, source="inline policy")
        else:
            _CACHE[key] = load_policy(key)
    return _CACHE[key]


def policy_inline(policy: SitePolicy) -> str:
    """The inline (JSON) form of ``policy`` for the ``policy-file`` node-config value."""
    import json

    return json.dumps(policy.to_mapping())
