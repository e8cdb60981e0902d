"""A one-body baseline that beats the searched mixtures on validation is what ``signmix export``
writes (real Ray, MLflow, adapters on the tiny BERT): the confirmation logs it as a mixture run
of the search, tagged ``signmix.baseline``, and the export reproduces its validation accuracy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests_support import mlflow_runs, write_config

from search.settings.config import load_config

pytestmark = pytest.mark.integration

DOMAINS = ("books", "electronics", "kitchen")


def _search_config(folder: Path, tiny_bert, demo_domains, store: str, *, confirm: bool) -> Path:
    # At most 2 members: the soup of all three is never a searched mixture, so its validation is
    # its own, not a searched run's.
    return write_config(folder, base_model=tiny_bert, domains={d: demo_domains[d] for d in DOMAINS},
                        targets=["books"], store=store,
                        search={"prune_ratios": [0.0], "max_fsd": None, "num_mixtures": 4, "max_members": 2,
                                "confirm": confirm})


def _artifact_folder(run) -> Path:
    from mlflow.utils.file_utils import local_file_uri_to_path

    return Path(local_file_uri_to_path(run.info.artifact_uri))


@pytest.fixture(scope="module")
def lost_search(tmp_path_factory, ray_cluster, tiny_bert, demo_domains, shared_store):
    """A search without confirmation whose kept validation correctness is then made all wrong."""
    from search.tracking.layout import MIXTURE_ARTIFACT
    from search.workflows.mixture_search import run_search
    from trainables.example_correctness import VALIDATION_CORRECTNESS_FILE, read_correctness, write_correctness

    folder = tmp_path_factory.mktemp("baseline-export")
    cfg = load_config(_search_config(folder, tiny_bert, demo_domains, shared_store, confirm=False))
    summary = run_search(cfg)
    assert summary.evaluated >= 2 and summary.confirmation is None
    searched = mlflow_runs(cfg, "tags.`signmix.status` = 'evaluated' and tags.`signmix.kind` = 'mixture'")
    assert searched and all(int(r.data.metrics["k"]) <= 2 for r in searched)
    for run in searched:
        kept = _artifact_folder(run) / MIXTURE_ARTIFACT
        correct = read_correctness(kept / VALIDATION_CORRECTNESS_FILE)
        write_correctness(kept, "validation", {t: [0] * len(rows) for t, rows in correct.items()})
    return folder, {r.info.run_id for r in searched}


@pytest.fixture(scope="module")
def exported(lost_search, tiny_bert, demo_domains, shared_store):
    """``signmix export`` (confirmation on) of the search, then ``signmix evaluate`` of the export."""
    import contextlib
    import io

    from search.cli.main import main

    folder, searched = lost_search
    cfg_path = _search_config(folder, tiny_bert, demo_domains, shared_store, confirm=True)
    out = folder / "best"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", str(cfg_path), "--out", str(out), "--no-register"]) == 0
        assert main(["evaluate", str(out), "--split", "validation"]) == 0
    return load_config(cfg_path), searched, out, printed.getvalue()


def test_a_soup_that_beats_the_searched_mixtures_on_validation_is_exported(exported):
    cfg, searched, out, _ = exported
    record = json.loads((out / "mixture.json").read_text(encoding="utf-8"))
    # The export is the uniform soup of every adapter, serving books with its own head.
    assert record["members"] == sorted(DOMAINS) and record["merge_method"] == "average"
    assert record["weights"] == [pytest.approx(1 / 3, abs=1e-6)] * 3 and record["prune_ratio"] == 0.0
    assert record["targets"] == ["books"] and record["strategy"] == "baseline"
    # Its run is a mixture run of the search, tagged as the baseline it is, not a searched one.
    run = mlflow_runs(cfg, f"attributes.run_id = '{record['mlflow_run_id']}'")[0]
    assert record["mlflow_run_id"] not in searched
    assert run.data.tags["signmix.baseline"] == "soup" and run.data.tags["signmix.status"] == "evaluated"
    assert run.data.tags["signmix.kind"] == "mixture"
    search_run = mlflow_runs(cfg, "tags.`signmix.kind` = 'search'")[0]
    assert run.data.tags["mlflow.parentRunId"] == search_run.info.run_id
    # The confirmation says a baseline was chosen, and why.
    confirmation = record["confirmation"]
    assert confirmation["chosen_baseline"] == "soup" and confirmation["chosen_run_id"] == record["mlflow_run_id"]
    assert confirmation["chosen_members"] == sorted(DOMAINS)
    assert any("a baseline the search scored itself" in n and "leads the searched best beyond the validation "
               "interval" in n for n in confirmation["notes"]), confirmation["notes"]
    lead = confirmation["validation"]["vs_baselines"]["soup"]
    assert lead["high"] < 0, "the searched best (all wrong on validation) trails the soup beyond the interval"
    (confirm_run,) = mlflow_runs(cfg, "tags.`signmix.kind` = 'confirmation'")
    assert confirm_run.data.params["chosen_baseline"] == "soup"


def test_evaluating_the_exported_baseline_reproduces_its_confirmed_validation_accuracy(exported):
    _, _, out, printed = exported
    record = json.loads((out / "mixture.json").read_text(encoding="utf-8"))
    confirmed = record["confirmation"]["validation_baselines"]["soup of all"]["accuracy/books"]
    assert record["metrics"]["accuracy/books"] == confirmed > 0.0
    assert "reproduces the logged validation accuracy exactly" in printed
    assert f"{confirmed:.4f}" in printed
