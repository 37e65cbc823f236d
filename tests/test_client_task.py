"""client/task.py weight conversion through Flower's ArrayRecord: a model round-trips exactly, FedBN's local
norm layers override the incoming global ones (and nothing else), a record for another model is refused."""

from __future__ import annotations

import pytest
import torch

from client import task
from common.models.config import preset

MODEL = preset("small", width=4, image_features=8, clinical_hidden=8, fusion_hidden=8)


def test_round_trip_and_local_norm_override() -> None:
    a, b = task.new_model(MODEL, 1), task.new_model(MODEL, 2)
    norm = task.norm_keys(a)
    assert norm and norm < set(a.state_dict())
    merged = task.model_from_arrays(MODEL, 0, task.arrays_from_model(a), task.local_norm_arrays(b))
    for k, v in merged.state_dict().items():
        ref = (b if k in norm else a).state_dict()[k]
        assert torch.equal(v, ref), k
    plain = task.model_from_arrays(MODEL, 0, task.arrays_from_model(a))
    assert all(torch.equal(v, a.state_dict()[k]) for k, v in plain.state_dict().items())


def test_arrays_of_another_model_refused_naming_keys() -> None:
    other = preset("small", width=4, image_features=8, clinical_hidden=8, fusion_hidden=8, use_clinical=False)
    with pytest.raises(ValueError, match="missing"):
        task.model_from_arrays(MODEL, 0, task.arrays_from_model(task.new_model(other, 0)))
