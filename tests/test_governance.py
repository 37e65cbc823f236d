"""Site governance without a network: each policy rule refuses with its own code and a short reason free of
data; the site's accepted models (not the coordinator's) decide; the policy accessor's defaults; hospital key
generation (0600, atomic, never overwritten); the coordinator refuses --insecure off loopback."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from client.policy import POLICY_FILE, SitePolicy, load_policy, open_policy, policy_inline, site_policy
from client.rules import EVALUATE, TRAIN, check_policy, dp_requested
from client.site import SiteRefusal
from common.models.config import preset
from common.protocol import (
    POLICY_BATCH_SIZE,
    POLICY_DP,
    POLICY_EVAL_REQUESTS,
    POLICY_LOCAL_EPOCHS,
    POLICY_LR,
    POLICY_MAX_ROUNDS,
    POLICY_MODEL,
    POLICY_PREP,
    POLICY_PRETRAINED,
    POLICY_TEST_SPLIT,
    RoundConfig,
    SiteSettings,
    describe_error,
)

OK = SiteSettings()  # preset "small", 1 local epoch, TrainConfig defaults (lr 5e-4, batch 8)


def _code(policy: SitePolicy, settings: SiteSettings = OK, rc: RoundConfig | None = None, kind: str = TRAIN,
          counts: dict | None = None, prep: str = "p") -> int | None:
    try:
        check_policy(policy, settings, rc or RoundConfig(server_round=1), kind, counts or {TRAIN: 1, EVALUATE: 1}, prep)
    except SiteRefusal as exc:
        assert exc.public in str(exc) and len(exc.public) < 200
        return exc.code
    return None


def test_default_policy_accepts_a_conservative_round() -> None:
    assert _code(SitePolicy()) is None
    assert _code(SitePolicy(), kind=EVALUATE) is None


@pytest.mark.parametrize("change, code", [
    (dict(rc=RoundConfig(server_round=101)), POLICY_MAX_ROUNDS),
    (dict(counts={TRAIN: 101}), POLICY_MAX_ROUNDS),
    (dict(rc=RoundConfig(server_round=1, local_epochs=6)), POLICY_LOCAL_EPOCHS),
    (dict(settings=SiteSettings(local_epochs=9)), POLICY_LOCAL_EPOCHS),
    (dict(rc=RoundConfig(server_round=1, lr=0.5)), POLICY_LR),
    (dict(settings=SiteSettings(train_config=json.dumps({"lr": 1e-9}))), POLICY_LR),
    (dict(settings=SiteSettings(train_config=json.dumps({"batch_size": 2}))), POLICY_BATCH_SIZE),
    (dict(rc=RoundConfig(server_round=1, eval_split="test"), kind=EVALUATE), POLICY_TEST_SPLIT),
    (dict(counts={EVALUATE: 51}, kind=EVALUATE), POLICY_EVAL_REQUESTS),
    (dict(settings=SiteSettings(model_config=json.dumps({"pretrained_path": "/coordinator/chooses.pt"}))),
     POLICY_PRETRAINED),
    (dict(settings=SiteSettings(model_config=json.dumps({"width": 4}))), POLICY_MODEL),
])
def test_each_rule_refuses_with_its_code(change: dict, code: int) -> None:
    assert _code(SitePolicy(), **change) == code
    assert describe_error(code).startswith("site policy")


def test_pretrained_path_never_reaches_the_reason() -> None:
    settings = SiteSettings(model_config=json.dumps({"pretrained_path": "/coordinator/chooses.pt"}))
    with pytest.raises(SiteRefusal) as err:
        check_policy(SitePolicy(), settings, RoundConfig(server_round=1), TRAIN, {TRAIN: 1}, "p")
    assert "/coordinator" not in err.value.public


def test_model_check_uses_the_sites_own_approved_models() -> None:
    """The coordinator's own model hash matching its own config is not enough: the SITE must approve it."""
    custom = SiteSettings(model_config=json.dumps({"width": 4}))
    policy = SitePolicy.from_mapping({"code": {"model_presets": [], "model_hashes": [custom.model().hash()]}})
    assert _code(policy, settings=custom) is None
    assert _code(policy) == POLICY_MODEL  # preset "small" is no longer approved by this site
    paper = SiteSettings(model_preset="paper")
    assert _code(SitePolicy(), settings=paper) is None and preset("paper").hash() != preset("small").hash()


def test_prep_and_dp_rules() -> None:
    policy = SitePolicy.from_mapping({"code": {"prep_hashes": ["aaa"]}, "privacy": {"require_dp": True}})
    assert _code(policy, prep="bbb") == POLICY_PREP
    assert _code(policy, prep="aaa") == POLICY_DP  # this RoundConfig asks for no DP
    assert _code(policy, prep="aaa", kind=EVALUATE) is None
    assert not dp_requested(RoundConfig())


def test_policy_file_and_accessor(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("training:\n  max-local-epochs: 1\nevaluation:\n  allow_test_split: true\n")
    pol = load_policy(path)
    assert pol.training.max_local_epochs == 1 and pol.evaluation.allow_test_split
    with pytest.raises(ValueError, match="unknown key"):
        SitePolicy.from_mapping({"training": {"max_epochs": 3}})

    class Ctx:
        def __init__(self, node_config: dict) -> None:
            self.node_config = node_config

    assert site_policy(Ctx({POLICY_FILE: str(path)})) == pol
    assert site_policy(Ctx({"data-path": "/x"})) == SitePolicy()  # a deployment without a file: conservative
    assert site_policy(Ctx({"partition-id": 0})) == open_policy()  # simulation: the researcher is both sides
    assert site_policy(Ctx({POLICY_FILE: policy_inline(pol)})) == pol


def test_keygen_private_key_0600_and_never_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    from client.cli import main

    assert main(["keygen", "--out", str(tmp_path), "--name", "hosp-a"]) == 0
    out = capsys.readouterr().out
    priv, pub = tmp_path / "hosp-a", tmp_path / "hosp-a.pub"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    key = load_ssh_private_key(priv.read_bytes(), password=None)
    assert load_ssh_public_key(pub.read_bytes()).public_numbers() == key.public_key().public_numbers()
    assert pub.read_text().strip() in out and "PRIVATE" not in out
    before = priv.read_bytes()
    assert main(["keygen", "--out", str(tmp_path), "--name", "hosp-a"]) == 2
    assert priv.read_bytes() == before


def test_server_refuses_insecure_off_loopback_and_keeps_ca_key_apart(tmp_path: Path) -> None:
    from server.certs import CA_KEY, make_dev_pki
    from server.cli import is_loopback, parse_args

    with pytest.raises(SystemExit):
        parse_args(["--insecure", "--host", "0.0.0.0", "--out-dir", str(tmp_path)])
    assert parse_args(["--insecure", "--host", "127.0.0.1", "--out-dir", str(tmp_path)]).insecure
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("10.0.0.5")
    make_dev_pki(tmp_path / "certs", [])
    assert (tmp_path / "certs" / CA_KEY).is_file() and not (tmp_path / "certs" / "ca.key").exists()
    assert not (tmp_path / "certs" / "nodes").exists()  # no hospital keys made by the coordinator


def test_yaml_exponent_floats_are_numbers(tmp_path: Path) -> None:
    """YAML 1.1 reads 1e-6 as a string; the policy loader turns it into the float the hospital meant."""
    path = tmp_path / "policy.yaml"
    path.write_text("training:\n  lr_min: 1e-6\n  lr_max: 2e-3\n")
    pol = load_policy(path)
    assert pol.training.lr_min == 1e-6 and pol.training.lr_max == 2e-3
    path.write_text("training:\n  lr_max: fast\n")
    with pytest.raises(ValueError, match="lr_max"):
        load_policy(path)


def test_supernode_refuses_an_unapproved_bundle_before_storing_it(tmp_path: Path) -> None:
    """Flower's own SuperNode loop with the app-hash check: a FAB differing by one byte from the approved one
    is answered with APP_NOT_APPROVED, never stored (so never executed), and recorded in the audit log."""
    import time

    import flwr.supernode.start_client_internal as sci
    from flwr.app import Message, Metadata, RecordDict
    from flwr.supercore.fab import Fab
    from flwr.supercore.object_store import ObjectStoreFactory
    from flwr.supercore.run import Run
    from flwr.supernode.nodestate import NodeStateFactory

    from client.approval import fab_sha256, pinned_pull
    from common.audit_chain import read_entries
    from common.protocol import APP_NOT_APPROVED

    approved_fab = b"PK approved app bundle"
    sent_fab = bytearray(approved_fab)
    sent_fab[-1] ^= 1
    stores = ObjectStoreFactory()
    state, store = NodeStateFactory(objectstore_factory=stores).state(), stores.store()
    state.set_node_id(42)
    md = Metadata(run_id=9, message_id="m1", src_node_id=1, dst_node_id=42, reply_to_message_id="", group_id="1",
                  created_at=time.time(), ttl=3600.0, message_type="train")
    msg = Message(content=RecordDict(), metadata=md)
    run = Run.create_empty(9)
    run.fab_hash = fab_sha256(bytes(sent_fab))
    pull = pinned_pull(sci._pull_and_store_message, {fab_sha256(approved_fab)}, tmp_path)
    run_id = pull(state=state, object_store=store, node_config={}, receive=lambda: (msg, None),
                  get_run=lambda rid: run, get_fab=lambda h, rid: Fab(h, bytes(sent_fab), {}),
                  pull_object=None, confirm_message_received=None, trusted_entities=None)
    assert run_id == 9
    replies = state.get_messages_legacy(is_reply=True)
    assert len(replies) == 1 and replies[0].error.code == APP_NOT_APPROVED
    assert state.get_run(9) is None  # neither the run nor its FAB was stored: nothing can start the app
    app = read_entries(tmp_path, "app")
    assert app[0]["fab_hash"] == run.fab_hash and app[0]["approved"] is False
    assert read_entries(tmp_path, "reply")[0]["error"]["code"] == APP_NOT_APPROVED
