"""The ``signmix`` command as a user runs it: exit codes, messages, and the README flow."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from tests_support import SHARED_DATA, run_signmix, write_config


def signmix(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """The command in a process of its own, forked from one that imported its libraries once."""
    return run_signmix(*args, cwd=cwd, timeout=timeout)


def test_help_lists_every_command():
    # `python -m search.cli.main` itself, from a cold start (tests/test_wheel.py runs the installed script)
    out = subprocess.run([sys.executable, "-m", "search.cli.main", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0
    for command in ("train", "fsd", "search", "export", "evaluate", "demo", "server"):
        assert command in out.stdout


@pytest.mark.parametrize("args, code, message", [
    (["train", "missing.yaml"], 2, "no such file"),
    (["evaluate", "/nonexistent/export"], 2, "is not a signmix export"),
    (["search"], 2, "the following arguments are required: config"),
    (["frobnicate"], 2, "invalid choice"),
])
def test_usage_errors_exit_2_with_a_message_and_no_traceback(args, code, message):
    out = signmix(*args)
    assert out.returncode == code
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_invalid_config_lists_every_problem_and_exits_2(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("name: x\nbase_model: m\ntrainig: {}\nadapter: {method: seq_bnn}\n"
                   "domains: {a: {path: a}}\nsearch: {targets: [b], prune_ratios: [1.5]}\n")
    out = signmix("search", str(cfg))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    for problem in ("trainig: unknown key; did you mean 'training'?", "adapter.method: got 'seq_bnn'",
                    "search.prune_ratios.0: got 1.5", "search.targets: got ['b']"):
        assert problem in out.stderr


def test_search_before_training_says_to_train_first(tmp_path, demo_domains, tiny_bert):
    cfg = write_config(tmp_path, base_model=tiny_bert, domains={"books": demo_domains["books"]}, targets=["books"])
    out = signmix("search", str(cfg))
    assert out.returncode == 2 and "run `signmix train CONFIG` first" in out.stderr
    assert "Traceback" not in out.stderr


def test_export_into_a_non_empty_folder_is_refused_before_anything_is_written(tmp_path, demo_domains, tiny_bert):
    cfg = write_config(tmp_path, base_model=tiny_bert, domains={"books": demo_domains["books"]}, targets=["books"])
    target = tmp_path / "taken"
    target.mkdir()
    (target / "mine.txt").write_text("keep")
    out = signmix("export", str(cfg), "--out", str(target))
    assert out.returncode == 2 and "exists and is not empty" in out.stderr
    assert [p.name for p in target.iterdir()] == ["mine.txt"]


@pytest.mark.integration
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="needs ../shared/data/amazon_multidomain")
def test_readme_flow_on_real_reviews_with_minilm(tmp_path, minilm_path):
    """train, fsd, search, export and evaluate through the CLI on two real Amazon domains
    with the pretrained MiniLM-L6 encoder: the export reproduces the logged accuracy."""
    cfg = write_config(
        tmp_path, base_model=minilm_path, domains={d: SHARED_DATA / d for d in ("books", "kitchen")},
        targets=["books"],
        training={"epochs": 2, "learning_rate": 3e-3, "batch_size": 16, "max_length": 64, "seed": 0,
                  "max_train_examples": 240, "max_eval_examples": 80},
        search={"strategy": "exhaustive", "targets": ["books"], "num_mixtures": 8, "prune_ratios": [0.0, 0.5],
                "max_fsd": None, "max_concurrent": 2})
    steps = [("train", str(cfg)), ("fsd", str(cfg), "--per-layer"), ("search", str(cfg)),
             ("export", str(cfg), "--out", str(tmp_path / "best"))]
    for step in steps:
        out = signmix(*step)
        assert out.returncode == 0, f"{step[0]} failed:\n{out.stderr[-3000:]}"
    assert (tmp_path / "runs" / "fsd_matrix.csv").read_text().startswith("adapter,books,kitchen\nbooks,0.000000,")
    per_layer = (tmp_path / "runs" / "fsd_matrix_per_layer.csv").read_text().splitlines()
    assert per_layer[0] == "pair," + ",".join(f"layer.{i}" for i in range(6)) and per_layer[1].startswith("books-kitchen,")
    record = json.loads((tmp_path / "best" / "mixture.json").read_text())
    assert record["base_model"] == minilm_path and "books" in record["members"]
    out = signmix("evaluate", str(tmp_path / "best"), "--split", "validation")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "reproduces the logged validation accuracy exactly" in out.stdout
    assert f"{record['metrics']['accuracy/books']:.4f}" in out.stdout
    # A trained MiniLM adapter on real reviews is far better than chance.
    assert record["metrics"]["accuracy/books"] > 0.6


@pytest.mark.integration
def test_demo_command_runs_end_to_end_and_again(tmp_path, tiny_bert):
    out = signmix("demo", "--out", str(tmp_path / "demo"), "--base-model", tiny_bert, "--num-mixtures", "4")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "soup of all" in out.stdout and "single books" in out.stdout
    assert "filtered by the pre-filter" in out.stdout
    # part 1: the serving plan over the five domains, what it saves, and its bundle
    assert out.stdout.index("part 1, serving") < out.stdout.index("part 2, in-domain")
    assert "own adapters, refit heads (bound)" in out.stdout and "chosen: " in out.stdout
    assert re.search(r"what it saves: 5 domains served by \d adapter bod(y|ies) instead of 5 adapters", out.stdout)
    # the plan names its worst domain, on validation (the floor's side) and on test
    assert re.search(r"worst domain on validation: \w+ [+-]\d+\.\d points against its own adapter", out.stdout)
    assert re.search(r"the worst domain on test: \w+ [+-]\d+\.\d points against its own adapter", out.stdout)
    routing = json.loads((tmp_path / "demo" / "bundle" / "routing.json").read_text())
    assert sorted(routing["domains"]) == ["books", "electronics", "kitchen", "movies", "support"]
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path / 'demo' / 'mlflow.db'}" in out.stdout
    record = json.loads((tmp_path / "demo" / "best" / "mixture.json").read_text())
    assert "books" in record["members"]
    # Test accuracies with 95% intervals, confirmed once on the test split, printed and exported.
    assert "test accuracy [95% CI]" in out.stdout and "McNemar p vs own" in out.stdout
    assert re.search(r"chosen: .*books\s+0\.\d{3} \[0\.\d{3}, [01]\.\d{3}\]", out.stdout), out.stdout
    # The gate on the default conflict measure (activation FSD, a probe pass per adapter) says what it decided.
    assert re.search(r"conflict gate \((filter|no_signal|too_few)\): activation_fsd: ", out.stdout), out.stdout
    books = record["confirmation"]["targets"]["books"]
    assert books["ci_low"] <= books["accuracy"] <= books["ci_high"]
    again = signmix("demo", "--out", str(tmp_path / "demo"), "--base-model", tiny_bert, "--num-mixtures", "4")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("already in the store with these settings, skipped") == 5
    assert not list((tmp_path / "demo").glob(".best-new*")) and not list((tmp_path / "demo").glob(".bundle-new*"))
