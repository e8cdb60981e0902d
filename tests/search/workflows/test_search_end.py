"""The end of a serving search (real Ray, Optuna, MLflow, adapters on the tiny BERT): the
searched mixtures keep their per-example validation correctness, the confirmation reads it
instead of evaluating them again, runs what is left as parallel trials with progress lines,
has no "targets alone" in serving, and hands the summary its baselines."""

from __future__ import annotations

import time

import pytest
import yaml

from search.settings.config import load_config
from tests_support import mlflow_runs

pytestmark = pytest.mark.integration

DOMAINS = ("books", "electronics", "kitchen")


@pytest.fixture(scope="module")
def serving(tmp_path_factory, ray_cluster, tiny_bert, demo_domains, shared_store):
    """A serving search with the product's defaults: no targets, the default operators."""
    from tests_support import write_config
    from search.workflows.mixture_search import run_search

    folder = tmp_path_factory.mktemp("serving-end")
    path = write_config(folder, base_model=tiny_bert, domains={d: demo_domains[d] for d in DOMAINS}, targets=None,
                        store=shared_store, search={"strategy": "tpe", "prune_ratios": [0.0], "max_fsd": None,
                                                    "num_mixtures": 5, "confirm": True,
                                                    "max_concurrent": 2})  # the confirmation's trials at once
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    del raw["search"]["merge_methods"]  # the product's default operators, not the tests' average
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    cfg = load_config(path)
    lines: list[str] = []
    times: list[float] = []

    def progress(line: str) -> None:
        lines.append(line)
        times.append(time.monotonic())

    return cfg, run_search(cfg, progress=progress), lines, times


def evaluated_runs(cfg):
    return mlflow_runs(cfg, "tags.`signmix.kind` = 'mixture' and tags.`signmix.status` = 'evaluated'")


def test_a_serving_search_keeps_each_mixtures_validation_correctness_in_mlflow(serving, tmp_path):
    from mlflow import MlflowClient

    from trainables.example_correctness import VALIDATION_CORRECTNESS_FILE, read_correctness

    cfg, summary, _, _ = serving
    assert cfg.search.targets == list(DOMAINS) and summary.evaluated == 5
    client = MlflowClient(cfg.tracking_uri)
    for run in evaluated_runs(cfg):
        assert run.data.params["targets"] == ",".join(DOMAINS)
        # task arithmetic at λ 1 is the average: it is never a mixture of its own
        assert (run.data.params.get("merge_method"), run.data.params.get("lambda")) != ("task_arithmetic", "1.0")
        path = client.download_artifacts(run.info.run_id, f"mixture/{VALIDATION_CORRECTNESS_FILE}", str(tmp_path))
        correct = read_correctness(path)
        for t in DOMAINS:
            assert len(correct[t]) == 30
            assert sum(correct[t]) / 30 == pytest.approx(run.data.metrics[f"accuracy/{t}"])


def test_the_confirmation_reads_the_searched_validation_and_runs_the_rest_in_parallel(serving):
    cfg, summary, lines, times = serving
    record = summary.confirmation
    assert record is not None
    # Serving: every mixture holds exactly the targets, so there is no "targets alone".
    assert record["validation"]["vs_alone"] is None and "alone" not in record["baselines"]
    assert record["validation"]["vs_runner_up"] is not None
    # The tie rule read the best's and the runner-up's validation from their runs; nothing searched
    # was evaluated again on validation (the soup of all is the search's warm start: read too).
    (start,) = [i for i, line in enumerate(lines) if line.startswith("confirming on the test split")]
    read = int(lines[start].split("(")[1].split(" validation splits read")[0])
    assert read >= 3, lines[start]  # best, runner-up, soup (and TIES of all when the search tried it)
    assert not any("evaluated on validation for the tie rule" in line for line in lines)
    done = [i for i, line in enumerate(lines) if line.startswith("confirmation: ") and " done, " in line]
    assert len(done) >= 4 and lines[done[-1]].startswith(f"confirmation: {len(done)}/{len(done)} done")
    seconds = []
    for i in done:
        label, rest = lines[i].split(" done, ", 1)[1].rsplit(" (", 1)
        splits, took = rest.split(") in ")
        seconds.append(float(took.removesuffix(" s")))
        # on validation: only what no search run holds (own adapters, TIES of all when not searched)
        assert "validation" not in splits or "+" not in label or " ties " in label, lines[i]
    # One Ray trial per mixture, several at once on the 2-CPU cluster: a trial that finished
    # later had started before an earlier one finished (each line comes as its trial ends).
    spans = sorted((times[i] - took, times[i]) for i, took in zip(done, seconds))
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:])), spans


def test_the_summary_baselines_are_the_confirmations_and_equal_a_fresh_evaluation(serving):
    from search.workflows.baselines import baseline_specs, evaluate_specs, search_summary_lines

    cfg, summary, _, _ = serving
    confirmed = summary.confirmation["validation_baselines"]
    assert set(confirmed) == {*(f"single {t}" for t in DOMAINS), "soup of all", "ties_of_all"}
    fresh = evaluate_specs(cfg, baseline_specs(cfg))
    for name, metrics in fresh.items():
        assert confirmed[name]["accuracy_mean"] == pytest.approx(metrics["accuracy_mean"]), name
    assert search_summary_lines(cfg, summary.best_run_id, confirmed) == \
        search_summary_lines(cfg, summary.best_run_id, fresh)
