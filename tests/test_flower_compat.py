"""simulation/flower_compat.py: the Flower internals the simulation relies on are still there (fails loudly on a
Flower upgrade that changes them), the version gate refuses other Flower versions, and Flower's weighted
average equals a hand-computed one."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from simulation import flower_compat


def test_installed_flower_is_the_checked_version() -> None:
    flower_compat.require_supported_flower()  # raises with a clear message on another Flower


def test_flower_internals_present_with_expected_signatures() -> None:
    missing = flower_compat.missing_internals()
    assert not missing, "Flower internals used by simulation/flower_compat.py changed:\n" + "\n".join(missing)


def test_missing_internals_detects_a_change(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.server.superlink.fleet.vce.backend import raybackend

    monkeypatch.setattr(raybackend.RayBackend, "build", lambda self, app_fn, extra: None)
    assert any("RayBackend.build" in m for m in flower_compat.missing_internals())


@pytest.mark.parametrize("version", ["1.40.2", "1.42.0", "2.0.0"])
def test_other_flower_versions_fail_loudly(version: str) -> None:
    with pytest.raises(RuntimeError, match=f"flwr {version} is installed"):
        flower_compat.require_supported_flower(version)


def test_aggregate_arrayrecords_is_the_weighted_mean() -> None:
    a, b = np.array([1.0, 2.0]), np.array([4.0, 8.0])
    records = [RecordDict({"arrays": ArrayRecord({"w": Array(a)}), "metrics": MetricRecord({"num-examples": 1})}),
               RecordDict({"arrays": ArrayRecord({"w": Array(b)}), "metrics": MetricRecord({"num-examples": 3})})]
    out = flower_compat.aggregate_arrayrecords(records, "num-examples")["w"].numpy()
    np.testing.assert_allclose(out, (1 * a + 3 * b) / 4)


def test_warm_pool_reused_only_when_idle_and_same_resources() -> None:
    class Pool:
        client_resources = {"num_cpus": 1}
        num_actors = 2

        def __init__(self, idle: int) -> None:
            self.pool = [object()] * idle

    assert flower_compat._pool_reusable(Pool(2), {"num_cpus": 1})
    assert not flower_compat._pool_reusable(Pool(1), {"num_cpus": 1})  # a job is still in flight
    assert not flower_compat._pool_reusable(Pool(2), {"num_cpus": 2})
    assert not flower_compat._pool_reusable(None, {"num_cpus": 1})
