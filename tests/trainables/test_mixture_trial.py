"""The search trial's side of mixing (trainables/mixture_trial.py): adapter weights shared through
Ray's object store, fetched per member."""

from __future__ import annotations

import pytest
import torch
from tests_support import two_layer_adapters


@pytest.mark.integration
def test_shared_weights_come_back_equal_and_only_the_members_are_fetched(ray_cluster):
    import ray

    from trainables.mixture_trial import fetch_members, share_adapter_weights

    weights = two_layer_adapters()
    shared = share_adapter_weights(weights)
    assert all(isinstance(ref, ray.ObjectRef) for ref in shared.values())

    @ray.remote(num_cpus=0)
    def mix_in_a_worker(shared, members):
        from trainables.mixture_trial import fetch_members

        got = fetch_members(shared, members)
        return sorted(got), {m: {k: t.clone() for k, t in w.items()} for m, w in got.items()}

    names, got = ray.get(mix_in_a_worker.remote(shared, ["c", "a"]))
    assert names == ["a", "c"]
    for m in names:
        assert got[m].keys() == weights[m].keys()
        assert all(torch.equal(got[m][k], weights[m][k]) for k in weights[m])
    # Plain dicts of tensors (no Ray) pass through unchanged.
    plain = fetch_members(weights, ["b"])
    assert list(plain) == ["b"] and all(plain["b"][k] is weights["b"][k] for k in weights["b"])
