"""Serving a group's domains in each option, on the tiny BERT's adapters of the demo domains."""

from __future__ import annotations

import pytest

from tests_support import write_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def group_setup(tmp_path_factory, shared_store, tiny_bert, demo_domains):
    from search.runtime.trial_inputs import shared_initialisation
    from search.settings.config import load_config
    from trainables.evaluate import MixtureModel, encoded_split
    from trainables.store import AdapterStore, load_sign_index

    cfg = load_config(write_config(tmp_path_factory.mktemp("serve"), base_model=tiny_bert, domains=dict(demo_domains),
                                   targets=None, store=shared_store, search={"merge_methods": ["ties"]}))
    domains = sorted(cfg.domains)
    weights, _ = load_sign_index(cfg.store_path, domains)
    init = shared_initialisation(cfg, weights)
    experiment = cfg.experiment(targets=domains)
    model = MixtureModel(base_model=cfg.base_model, store=AdapterStore(cfg.store_path), heads=domains, device="cpu")

    def encoded(domain, split):
        return encoded_split(experiment, domain, split, model.label_names[domain])

    return model, weights, init, encoded


def accuracy_of(model, weights, domain, encoded, split="validation"):
    from trainables.evaluate import predict

    model.set_weights(weights)
    model.use_head(domain)
    enc = encoded(domain, split)
    preds = predict(model.model, enc, 16)
    return [int(preds[r] == enc.labels[r]) for r in range(len(enc))]


def test_a_domain_alone_is_served_exactly_by_its_own_adapter_in_every_option(group_setup):
    """A group of one whose body is the domain's adapter: EMR's and TALL's masks keep every entry
    that moved, EMR's scalar is 1 and the rescaled candidates include 1.0, so no option loses a row."""
    from trainables.serving_options import SERVING_OPTIONS, serve_group

    model, weights, init, encoded = group_setup
    own = accuracy_of(model, weights["books"], "books", encoded)
    served = serve_group(model, weights["books"], init, weights, ["books"], encoded=encoded, batch_size=16,
                         splits=("validation", "test"))
    assert list(served) == list(SERVING_OPTIONS)
    for option in ("plain", "emr", "tall"):
        assert served[option]["books"].correct["validation"] == own, option
    assert served["emr"]["books"].start == pytest.approx(1.0)
    assert served["rescaled"]["books"].accuracy() >= served["plain"]["books"].accuracy()
    assert served["plain"]["books"].correct["test"] == accuracy_of(model, weights["books"], "books", encoded, "test")


def test_options_of_a_merged_group_are_chosen_on_validation_and_cost_their_bytes(group_setup):
    from spaces.domain_masks import packed_bytes
    from spaces.spec import make_mixture_spec
    from trainables.mix_and_prune import build_mixture
    from trainables.serving_options import adapter_numel, serve_group

    model, weights, init, encoded = group_setup
    group = ["books", "kitchen", "support"]
    spec = make_mixture_spec(members=group, targets=group, require_targets=False, merge_method="ties", density=0.5,
                             lam=1.0)
    body = build_mixture(weights, spec, init)
    served = serve_group(model, body, init, weights, group, encoded=encoded, batch_size=16,
                         options=["plain", "rescaled", "tall"], factors=(0.5, 1.0), lambdas=(0.2, 0.6))
    assert list(served) == ["plain", "rescaled", "tall"]
    numel = adapter_numel(body)
    for d in group:
        plain, rescaled, tall = (served[o][d] for o in ("plain", "rescaled", "tall"))
        assert plain.correct["validation"] == accuracy_of(model, body, d, encoded)
        assert set(rescaled.scores) == {1.0, rescaled.start * 0.5, rescaled.start}
        assert rescaled.scores[rescaled.value] == max(rescaled.scores.values()) == rescaled.accuracy()
        assert rescaled.accuracy() >= plain.accuracy()  # 1.0, the plain body, is a candidate
        assert tall.value in (0.2, 0.6) and tall.scores[tall.value] == max(tall.scores.values())
        assert (plain.extra_bytes, rescaled.extra_bytes, tall.extra_bytes) == (0, 4, packed_bytes(numel))
    with pytest.raises(ValueError, match="serving options must be some of"):
        serve_group(model, body, init, weights, group, encoded=encoded, batch_size=16, options=["masks"])
