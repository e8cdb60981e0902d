"""A plan's body searches learn from one another (``plan.transfer``), on real parts: tiny BERT
adapters, real Ray trials and Optuna studies, a real MLflow store."""

from __future__ import annotations

import pytest

from tests_support import mlflow_runs, write_config

pytestmark = pytest.mark.integration

SEARCH = {"strategy": "tpe", "merge_methods": ["ties", "task_arithmetic"], "densities": [0.5],
          "lambdas": [1.0, 1.5, 2.0], "prune_ratios": [0.0]}


def key(choice: dict) -> tuple:
    return tuple(sorted(choice.items()))


def choices_of(cfg, search_run_id: str) -> list[tuple[dict, float]]:
    """Each evaluated mixture of a search: its operator choice (as recorded: canonical) and accuracy."""
    from search.tracking.layout import spec_from_run
    from spaces.space import space_from_config

    merge = space_from_config(cfg.search, cfg.plan_domains, targets=cfg.plan_domains).merge
    runs = mlflow_runs(cfg, f"tags.`mlflow.parentRunId` = '{search_run_id}' and tags.`signmix.status` = 'evaluated'")
    return [(merge.choice_of(spec_from_run(r)), r.data.metrics["accuracy_mean"]) for r in runs]


@pytest.mark.parametrize("transfer", [True, False])
def test_a_second_groups_search_first_evaluates_the_first_groups_best_choice_and_one_it_did_not_try(
        tmp_path, shared_store, tiny_bert, demo_domains, transfer):
    from search.settings.config import load_config
    from search.plan.bodies import BodySearch
    from search.tracking.tracker import open_experiment

    cfg = load_config(write_config(tmp_path, base_model=tiny_bert, domains=dict(demo_domains), targets=["books"],
                                   store=shared_store, search=SEARCH,
                                   plan={"mixtures_per_group": 2, "transfer": transfer}))
    client, experiment_id = open_experiment(cfg.tracking_uri, cfg.experiment_name)
    plan_run = client.create_run(experiment_id).info.run_id
    lines: list[str] = []
    bodies = BodySearch(cfg, plan_run_id=plan_run, client=client, experiment_id=experiment_id,
                        progress=lines.append)
    first, second = ("books", "electronics"), ("kitchen", "movies")
    scored = bodies(first)
    tried = choices_of(cfg, bodies.bodies[first].search_run_id)
    assert len(tried) == 2 and set(scored) == set(first)
    top = max(acc for _, acc in tried)
    best = [c for c, acc in tried if acc == top]  # a tie (the tiny model sits at chance): any of them
    bodies(second)
    then = [c for c, _ in choices_of(cfg, bodies.bodies[second].search_run_id)]
    if transfer:  # what served the first group best, and a choice the first group did not try
        assert any(c in then for c in best)
        assert any(c not in [t for t, _ in tried] for c in then)
        assert any("first ties" in line or "first task_arithmetic" in line for line in lines)
        assert sum(len(v) for v in bodies.operators.regrets.values()) == 4
    else:  # every group starts afresh: the same seeded start, the same two choices
        assert bodies.operators is None and not any("; first " in line for line in lines)
        assert sorted(map(key, then)) == sorted(key(c) for c, _ in tried)
