"""The plan: section of the config, and the domains a plan serves."""

from __future__ import annotations

import pytest

from search.settings.config import validate_config
from search.plan.serving_plan import check_plan_domains
from spaces.errors import ConfigError, UsageError

RAW = {"name": "demo", "base_model": "roberta-base", "search": {"targets": ["books"]},
       "domains": {"books": {"path": "/data/books"}, "dvd": {"path": "/data/dvd"},
                   "extra": {"adapter": {"path": "/adapters/extra"}}}}


def test_a_plan_serves_every_domain_with_data_by_default_and_defaults_to_one_point_of_tolerance():
    cfg = validate_config(RAW)
    assert cfg.plan_domains == check_plan_domains(cfg) == ["books", "dvd"]  # extra: an adapter, no data
    assert cfg.plan.tolerance == 0.01 and cfg.plan.max_bodies is None
    # the plan starts from the measure that predicts a shared body's accuracy (BENCHMARKS.md), probed cheaply
    assert cfg.plan.compatibility == "activation_fsd" and cfg.plan.probe_size == 32


def test_a_config_with_one_domain_of_data_cannot_plan():
    cfg = validate_config({**RAW, "domains": {"books": {"path": "/data/books"},
                                              "extra": {"adapter": {"path": "/adapters/extra"}}}})
    with pytest.raises(UsageError, match=r"a plan serves at least 2 domains with data, but this config has \['books'\]"):
        check_plan_domains(cfg)


@pytest.mark.parametrize("plan, problem", [
    ({"domains": ["books", "books"]}, "plan.domains: got ['books', 'books']: a plan serves at least 2 domains"),
    ({"domains": ["books", "cd"]}, "plan.domains ['cd'] are not domains"),
    ({"max_bodies": 2, "domains": ["books", "dvd"]}, None),
    ({"tolerance": 1.5}, "plan.tolerance: got 1.5: Input should be less than or equal to 1"),
    ({"compatibility": "vibes"}, "plan.compatibility: got 'vibes'"),
    ({"probe_size": 4}, "plan.probe_size: got 4: Input should be greater than or equal to 8"),
])
def test_plan_settings_are_checked(plan, problem):
    if problem is None:
        assert validate_config({**RAW, "plan": plan}).plan.max_bodies == 2
        return
    with pytest.raises(ConfigError) as info:
        validate_config({**RAW, "plan": plan})
    assert any(problem in p for p in info.value.problems), info.value.problems


def test_the_floor_defaults_to_one_point_and_every_serving_option_under_trained_bottleneck_heads():
    cfg = validate_config(RAW)
    assert cfg.plan.max_domain_loss == 0.01
    assert cfg.plan_serving_options == ["plain", "rescaled", "emr", "tall"]
    assert validate_config({**RAW, "plan": {"max_domain_loss": None}}).plan.max_domain_loss is None
    # a refit head or a LoRA: only the plain body, by default
    assert validate_config({**RAW, "search": {"targets": ["books"], "head": "refit"}}).plan_serving_options == ["plain"]
    assert validate_config({**RAW, "adapter": {"method": "lora"}}).plan_serving_options == ["plain"]
    # named options come in the registry's order
    assert validate_config({**RAW, "plan": {"serving_options": ["tall", "plain"]}}).plan_serving_options == [
        "plain", "tall"]


@pytest.mark.parametrize("raw, problem", [
    ({"plan": {"max_domain_loss": -0.01}}, "plan.max_domain_loss: got -0.01: Input should be greater than or equal to 0"),
    ({"plan": {"max_domain_loss": 2}}, "plan.max_domain_loss: got 2: Input should be less than or equal to 1"),
    ({"plan": {"max_domain_loss": "one point"}}, "plan.max_domain_loss: got 'one point'"),
    ({"plan": {"serving_options": ["masks"]}}, "plan.serving_options.0: got 'masks'"),
    ({"plan": {"serving_options": []}}, "plan.serving_options must name at least one option"),
    ({"plan": {"serving_options": ["tall", "tall"]}}, "plan.serving_options must name at least one option, each once"),
    ({"plan": {"serving_options": ["plain", "emr"]}, "search": {"targets": ["books"], "head": "refit"}},
     "plan.serving_options: got ['emr'], which need search.head: own"),
    ({"plan": {"serving_options": ["rescaled"]}, "adapter": {"method": "lora"}},
     "plan.serving_options: got ['rescaled'], which need a bottleneck adapter"),
])
def test_the_floor_and_serving_options_are_checked_with_clear_errors(raw, problem):
    with pytest.raises(ConfigError) as info:
        validate_config({**RAW, **raw})
    assert any(problem in p for p in info.value.problems), info.value.problems


def test_the_checks_before_a_plan_accept_masks_and_rescalers_although_they_refit_heads():
    from search.plan.serving_plan import preflight_config

    cfg = validate_config({**RAW, "plan": {"serving_options": ["plain", "emr"]}})
    checked = preflight_config(cfg)
    assert checked.search.head == "refit" and checked.plan_serving_options == ["plain"]
    assert cfg.plan_serving_options == ["plain", "emr"]  # the plan itself keeps them
