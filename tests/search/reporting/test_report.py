"""``signmix report`` and ``signmix results`` on a small real experiment, built without Ray.

The experiment is written straight into a real SQLite MLflow store with ``MlflowClient``,
following the layout the searches and the study write (tags, params, metrics). The FSD
input is a real adapter store written through ``AdapterStore``: four adapters whose
weights are +1 except at chosen positions, so the FSD matrix is known by hand (below)
and Greedy Adapter Mixing has one right answer. Accuracies are a fixed formula of the
domain, the subset's FSD and k, so every expected number is recomputed here.
"""

from __future__ import annotations

import csv
import json
import itertools
import math
from pathlib import Path

import pytest
from tests_support import mlflow_runs, write_config

P = 20  # parameters per adapter
NEGATIVE = {"books": set(), "dvd": {0, 19}, "kitchen": {0, 1, 2, 3}, "toys": set(range(10, 18))}
DOMAINS = sorted(NEGATIVE)
# FSD = |symmetric difference of the negative positions| / P
FSD = {("books", "dvd"): 0.1, ("books", "kitchen"): 0.2, ("books", "toys"): 0.4,
       ("dvd", "kitchen"): 0.2, ("dvd", "toys"): 0.5, ("kitchen", "toys"): 0.6}
ROW_MEANS = {"books": 0.7 / 3, "dvd": 0.8 / 3, "kitchen": 1.0 / 3, "toys": 1.5 / 3}
BASE = {"books": 0.90, "dvd": 0.85, "kitchen": 0.80, "toys": 0.75}
SWEEP = [0.0, 0.5, 0.9, 1.0]


def pair_fsd(a: str, b: str) -> float:
    return FSD[tuple(sorted((a, b)))]


def mean_fsd(members) -> float:
    pairs = list(itertools.combinations(sorted(members), 2))
    return sum(pair_fsd(a, b) for a, b in pairs) / len(pairs) if pairs else 0.0


def subset_accuracy(target: str, members) -> float:
    wobble = 0.01 * ((sum(map(ord, "".join(sorted(members)))) + ord(target[0])) % 5)
    return round(BASE[target] - 0.3 * mean_fsd(members) - 0.02 * (len(members) - 1) + wobble, 6)


def bb_robust_accuracy(members) -> float:
    """The tpe search's black-box robust accuracy: more members, more robust (so a front forms)."""
    return 0.2 + 0.1 * len(members) - mean_fsd(members) / 10


def write_store(root: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from trainables.store import ADAPTER_FILE, HEAD_FILE, AdapterStore

    store = AdapterStore(root)
    every = {}
    for domain, negative in NEGATIVE.items():
        torch.manual_seed(len(domain))
        magnitude = torch.rand(P) + 0.1
        signs = torch.tensor([-1.0 if i in negative else 1.0 for i in range(P)])
        weights = {"layer.0.adapter.down.weight": (signs * magnitude)[:12].reshape(3, 4).contiguous(),
                   "layer.1.adapter.down.weight": (signs * magnitude)[12:].contiguous()}
        staged = store.staging_dir(domain)
        save_file(weights, str(staged / ADAPTER_FILE))
        save_file({"head.weight": torch.zeros(2, 2)}, str(staged / HEAD_FILE))
        for name in ("adapter_config.json", "head_config.json"):
            (staged / name).write_text("{}", encoding="utf-8")
        store.commit(domain, staged, {"base_model": "tiny", "adapter": {"method": "seq_bn"}, "labels": [0, 1]})
        every[domain] = weights
    # a conflict measure cached as `signmix fsd --measures` leaves it (the report reads, never computes)
    from search.workflows.conflict_measures import MEASURES_DIR
    from spaces.measures import weight_fsd

    (root / MEASURES_DIR).mkdir()
    (root / MEASURES_DIR / "cached.json").write_text(json.dumps({"weight_fsd": weight_fsd(every).to_json()}))


class Clock:
    """Run start and end times in ms, strictly increasing, so ordering is known."""

    def __init__(self) -> None:
        self.t = 1_700_000_000_000

    def __call__(self) -> int:
        self.t += 1000
        return self.t


def child(client, exp, parent, clock, *, members, targets, metrics, status="evaluated", prune=("none", 0.0),
          strategy="study", tags=None):
    members = sorted(members)
    run = client.create_run(exp, start_time=clock(), tags={
        "mlflow.parentRunId": parent, "signmix.kind": "mixture", "signmix.status": status,
        "signmix.mixture_key": "+".join(members) + f"@{prune[0]}{prune[1]}", **(tags or {})})
    from mlflow.entities import Metric, Param

    params = {"members": ",".join(members), "k": str(len(members)), "targets": ",".join(targets),
              "prune_method": prune[0], "prune_ratio": f"{prune[1]:g}", "strategy": strategy}
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()],
                     metrics=[Metric(k, float(v), clock(), 0) for k, v in metrics.items()])
    client.set_terminated(run.info.run_id, "FINISHED", end_time=clock())
    return run.info.run_id


def parent_run(client, exp, clock, strategy):
    run = client.create_run(exp, start_time=clock(), run_name=f"search-{strategy}",
                            tags={"signmix.kind": "search", "signmix.strategy": strategy})
    return run.info.run_id


def write_experiment(cfg) -> dict:
    """The study and two searches; returns what the assertions need."""
    from mlflow import MlflowClient

    from search.tracking.tracker import artifact_root_for

    Path(cfg.tracking_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(cfg.tracking_uri)
    exp = client.create_experiment(cfg.experiment_name, artifact_location=artifact_root_for(cfg.tracking_uri))
    clock, evaluated = Clock(), []  # evaluated: (run id, metrics, k, start order)

    def record(run_id, metrics, k):
        evaluated.append((run_id, metrics, k, len(evaluated)))

    searches = {}
    for strategy, picks in (("tpe", [["books"], ["books", "dvd"], ["books", "toys"], ["books", "dvd", "kitchen"]]),
                            ("random", [["books", "kitchen", "toys"], ["books", "kitchen"], ["books", "dvd", "toys"]])):
        parent = parent_run(client, exp, clock, strategy)
        accs = []
        for members in picks:
            metrics = {"accuracy/books": subset_accuracy("books", members), "fsd": mean_fsd(members)}
            metrics["accuracy_mean"] = metrics["accuracy/books"]
            if strategy == "tpe":  # searched with the black-box attack on
                metrics["bb_robust_accuracy_mean"] = bb_robust_accuracy(members)
            record(child(client, exp, parent, clock, members=members, targets=["books"], metrics=metrics,
                         strategy=strategy), metrics, len(members))
            accs.append(metrics["accuracy_mean"])
        child(client, exp, parent, clock, members=DOMAINS, targets=["books"], metrics={"fsd": mean_fsd(DOMAINS)},
              status="filtered", strategy=strategy)
        searches[strategy] = (parent, accs)

    study = parent_run(client, exp, clock, "study")
    for k in range(1, len(DOMAINS) + 1):
        for members in itertools.combinations(DOMAINS, k):
            metrics = {f"accuracy/{t}": subset_accuracy(t, members) for t in members}
            metrics.update(accuracy_mean=sum(metrics.values()) / k, fsd=mean_fsd(members),
                           fsd_mean_pairwise=mean_fsd(members), fsd_any_conflict=min(1.0, 2 * mean_fsd(members)),
                           sparsity=0.0)
            record(child(client, exp, study, clock, members=members, targets=members, metrics=metrics,
                         tags={"signmix.study_part": "subsets"}), metrics, k)
    for t in DOMAINS:
        for r in SWEEP:
            acc = BASE[t] - (0.02 if r == 0.9 else 0.3 if r == 1.0 else 0.0)
            metrics = {f"accuracy/{t}": acc, "accuracy_mean": acc, "fsd": 0.0, "sparsity": r}
            record(child(client, exp, study, clock, members=[t], targets=[t], prune=("magnitude", r),
                         metrics=metrics, tags={"signmix.study_part": "sweep"}), metrics, 1)
    for size, members in ((2, ["books", "dvd"]), (3, ["books", "dvd", "kitchen"])):
        for s in (0.8, 0.9):
            acc = subset_accuracy("books", members) + 0.01
            metrics = {"accuracy/books": acc, "accuracy_mean": acc, "fsd": mean_fsd(members), "sparsity": s}
            record(child(client, exp, study, clock, members=members, targets=["books"], prune=("conflict_layers", s),
                         metrics=metrics, tags={"signmix.study_part": "sparse_mixing", "signmix.sparse_size": str(size),
                                                "signmix.target": "books"}), metrics, size)
    return {"study": study, "searches": searches, "evaluated": evaluated}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    from search.settings.config import load_config

    folder = tmp_path_factory.mktemp("report")
    cfg = load_config(write_config(folder, base_model="tiny", domains={d: folder / "data" / d for d in DOMAINS},
                                   targets=["books"]))
    write_store(Path(cfg.store_path))
    return cfg, write_experiment(cfg)


@pytest.fixture(scope="module")
def report(experiment):
    from search.reporting.report import build_report

    cfg, _ = experiment
    notes: list[str] = []
    written = build_report(cfg, Path(cfg.storage_path) / "report", progress=notes.append)
    return written, notes


def read_csv(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


FIGURES = ["fsd_heatmap", "accuracy_vs_k", "fsd_vs_accuracy", "greedy_vs_bounds", "sparsity_curves",
           "search_progress", "soup_drop", "measures_vs_accuracy", "robustness_front"]


def test_robustness_front_marks_the_mixtures_no_other_beats_on_both(report, experiment):
    _, info = experiment
    rows = read_csv(Path(report[0][0]).parent / "robustness_front.csv")
    # only the tpe search was attacked: its 4 mixtures, nothing from FGSM
    assert sorted(r["members"] for r in rows) == sorted(["books", "books+dvd", "books+toys", "books+dvd+kitchen"])
    assert {r["measure"] for r in rows} == {"bb_robust_accuracy_mean"}
    points = {r["members"]: (subset_accuracy("books", r["members"].split("+")),
                             bb_robust_accuracy(r["members"].split("+"))) for r in rows}
    for r in rows:
        a, b = points[r["members"]]
        assert float(r["accuracy_mean"]) == pytest.approx(a) and float(r["robust_accuracy_mean"]) == pytest.approx(b)
        dominated = any(a2 >= a and b2 >= b and (a2, b2) != (a, b) for a2, b2 in points.values())
        assert r["on_front"] == ("0" if dominated else "1")
    assert any(r["on_front"] == "0" for r in rows) and any(r["on_front"] == "1" for r in rows)


def test_each_cached_measure_is_drawn_against_the_studys_accuracy(report):
    written, _ = report
    rows = read_csv(written[0].parent / "measures_vs_accuracy.csv")
    assert rows and {r["measure"] for r in rows} == {"weight_fsd"}
    for r in rows:  # one point per study subset of two or more and per target in it
        members = r["members"].split("+")
        assert int(r["k"]) == len(members) >= 2 and r["target"] in members
        assert float(r["value"]) == pytest.approx(mean_fsd(members), abs=1e-12)
        assert float(r["accuracy"]) == pytest.approx(subset_accuracy(r["target"], members))


def test_every_figure_and_its_csv_is_written(report):
    written, notes = report
    names = {p.name for p in written}
    for figure in FIGURES:
        assert f"{figure}.png" in names and f"{figure}.csv" in names
    assert "correlations.csv" in names
    for path in written:
        assert path.stat().st_size > 0, path
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not any(n.startswith("skipped") for n in notes), notes
    assert not list(written[0].parent.glob(".*.tmp"))  # no temporary file left behind


def test_heatmap_csv_is_the_stores_fsd_matrix(report):
    written, _ = report
    rows = {r["adapter"]: r for r in read_csv(written[0].parent / "fsd_heatmap.csv")}
    assert sorted(rows) == DOMAINS
    for a, b in itertools.combinations(DOMAINS, 2):
        assert float(rows[a][b]) == pytest.approx(pair_fsd(a, b), abs=1e-12)
        assert float(rows[b][a]) == float(rows[a][b])


def test_correlations_are_scipys_on_the_same_points(report):
    from scipy import stats

    written, _ = report
    folder = written[0].parent
    points = read_csv(folder / "fsd_vs_accuracy.csv")
    correlations = {r["target"]: r for r in read_csv(folder / "correlations.csv")}
    assert set(correlations) == {*DOMAINS, "pooled"}
    for target in [*DOMAINS, "pooled"]:
        mine = [p for p in points if target in (p["target"], "pooled")]
        assert len(mine) == (28 if target == "pooled" else 7)  # subsets of size >= 2 holding the target
        assert all(int(p["k"]) >= 2 for p in mine)
        x, y = [float(p["fsd_mean_pairwise"]) for p in mine], [float(p["accuracy"]) for p in mine]
        row = correlations[target]
        assert int(row["n"]) == len(mine)
        assert float(row["pearson_r"]) == stats.pearsonr(x, y).statistic
        assert float(row["pearson_p"]) == stats.pearsonr(x, y).pvalue
        assert float(row["spearman_rho"]) == stats.spearmanr(x, y).statistic
        assert float(row["spearman_p"]) == stats.spearmanr(x, y).pvalue
    assert float(correlations["pooled"]["pearson_r"]) < 0  # accuracy falls with FSD, by construction


@pytest.mark.parametrize("target, size, largest, expected", [
    ("toys", 2, False, ("books", "toys")),
    ("toys", 3, False, ("books", "dvd", "toys")),
    ("kitchen", 2, False, ("books", "kitchen")),
    ("books", 2, True, ("books", "toys")),
    ("books", 3, True, ("books", "kitchen", "toys")),
    ("dvd", 4, False, tuple(DOMAINS)),
    ("dvd", 1, True, ("dvd",)),
])
def test_greedy_picks_the_smallest_mean_fsd_on_a_hand_built_matrix(target, size, largest, expected):
    from search.reporting.report import greedy_members, row_means

    matrix = [[0.0 if a == b else pair_fsd(a, b) for b in DOMAINS] for a in DOMAINS]
    means = row_means(DOMAINS, matrix, DOMAINS)
    assert means == pytest.approx(ROW_MEANS)
    assert greedy_members(means, target, size, largest=largest) == expected


def test_greedy_vs_bounds_uses_the_studys_subsets(report):
    written, _ = report
    rows = read_csv(written[0].parent / "greedy_vs_bounds.csv")
    assert len(rows) == len(DOMAINS) * (len(DOMAINS) - 1)  # l = 2..N per target
    row = next(r for r in rows if r["target"] == "toys" and r["l"] == "2")
    assert row["greedy_members"] == "books+toys" and row["mirror_members"] == "kitchen+toys"
    assert float(row["greedy_accuracy"]) == subset_accuracy("toys", ["books", "toys"])
    candidates = {m: subset_accuracy("toys", m) for m in (("books", "toys"), ("dvd", "toys"), ("kitchen", "toys"))}
    assert float(row["best_accuracy"]) == max(candidates.values())
    assert float(row["worst_accuracy"]) == min(candidates.values())
    assert float(row["worst_accuracy"]) <= float(row["greedy_accuracy"]) <= float(row["best_accuracy"])


def test_soup_drop_and_search_progress_match_the_runs(report, experiment):
    written, _ = report
    _, built = experiment
    folder = written[0].parent
    soup = {r["target"]: r for r in read_csv(folder / "soup_drop.csv")}
    for t in DOMAINS:
        drop = 100 * (subset_accuracy(t, [t]) - subset_accuracy(t, DOMAINS))
        assert float(soup[t]["drop_points"]) == pytest.approx(drop)
    progress = read_csv(folder / "search_progress.csv")
    for strategy, (_, accs) in built["searches"].items():
        best = [float(r["best_so_far"]) for r in progress if r["strategy"] == strategy]
        assert best == [max(accs[:i]) for i in range(1, len(accs) + 1)]  # filtered runs not counted
    sparsity = read_csv(folder / "sparsity_curves.csv")
    assert {r["series"] for r in sparsity} == {"single adapter", "sparse mixing", "best dense mixture"}
    assert len([r for r in sparsity if r["series"] == "single adapter"]) == len(DOMAINS) * len(SWEEP)


def test_report_is_logged_to_the_study_run(report, experiment):
    from mlflow import MlflowClient

    written, _ = report
    cfg, built = experiment
    logged = {Path(a.path).name for a in MlflowClient(cfg.tracking_uri).list_artifacts(built["study"], "report")}
    assert logged == {p.name for p in written}


def test_report_without_data_writes_nothing_and_says_why(tmp_path):
    from search.settings.config import load_config
    from search.reporting.report import build_report

    cfg = load_config(write_config(tmp_path, base_model="tiny", domains={d: tmp_path / d for d in DOMAINS},
                                   targets=["books"]))
    notes: list[str] = []
    assert build_report(cfg, tmp_path / "out", progress=notes.append) == []
    assert any("no MLflow experiment" in n for n in notes)
    assert sum(n.startswith("skipped") for n in notes) == len(FIGURES)
    assert not Path(cfg.tracking_uri[len("sqlite:///"):]).exists()  # reading created no store


def test_partial_study_without_store_skips_what_is_missing_and_rebuilds_fsd_from_pairs(tmp_path):
    from mlflow import MlflowClient

    from search.settings.config import load_config
    from search.reporting.report import build_report
    from search.tracking.tracker import artifact_root_for

    cfg = load_config(write_config(tmp_path, base_model="tiny", domains={d: tmp_path / d for d in DOMAINS},
                                   targets=["books"]))
    Path(cfg.storage_path).mkdir(parents=True)
    client = MlflowClient(cfg.tracking_uri)
    exp = client.create_experiment(cfg.experiment_name, artifact_location=artifact_root_for(cfg.tracking_uri))
    clock = Clock()
    study = parent_run(client, exp, clock, "study")  # interrupted after the pairs: no soup, no sweep
    for members in [*([d] for d in DOMAINS), *itertools.combinations(DOMAINS, 2)]:
        metrics = {f"accuracy/{t}": subset_accuracy(t, members) for t in members}
        metrics["fsd_mean_pairwise"] = mean_fsd(members)
        child(client, exp, study, clock, members=members, targets=members, metrics=metrics,
              tags={"signmix.study_part": "subsets"})
    notes: list[str] = []
    written = build_report(cfg, tmp_path / "out", progress=notes.append)
    assert {p.stem for p in written} >= {"fsd_heatmap", "accuracy_vs_k", "fsd_vs_accuracy", "greedy_vs_bounds"}
    for figure in ("sparsity_curves", "search_progress", "soup_drop"):
        assert any(n.startswith(f"skipped {figure}:") for n in notes), notes
    assert any("rebuilt from the study's pairs" in n for n in notes)
    rows = {r["adapter"]: r for r in read_csv(tmp_path / "out" / "fsd_heatmap.csv")}
    assert float(rows["dvd"]["toys"]) == pair_fsd("dvd", "toys")
    assert len(client.list_artifacts(study, "report")) == len(written)


def test_top_mixtures_order_and_content(experiment):
    from search.reporting.results import format_results, top_mixtures

    cfg, built = experiment
    targets_of = {r.info.run_id: tuple(sorted(r.data.params["targets"].split(",")))
                  for r in mlflow_runs(cfg, "tags.`signmix.kind` = 'mixture'")}
    expected = sorted(built["evaluated"], key=lambda e: (-e[1]["accuracy_mean"], e[2], e[3]))
    groups: dict = {}  # a mean over targets ranks the mixtures of one target set only
    for e in expected:
        groups.setdefault(targets_of[e[0]], []).append(e)
    assert len(groups) > 1  # the study's subsets have targets of their own
    rows = top_mixtures(cfg, n=5)
    assert [r["run_id"] for r in rows] == [e[0] for g in groups.values() for e in g[:5]]
    assert [r["metrics"]["accuracy_mean"] for r in rows] == [e[1]["accuracy_mean"] for g in groups.values()
                                                             for e in g[:5]]
    books = top_mixtures(cfg, n=3, targets=["books"])
    assert [r["run_id"] for r in books] == [e[0] for e in groups[("books",)][:3]]
    first = rows[0]
    assert first["status"] == "evaluated" and first["k"] == len(first["members"])
    assert first["fsd"] == expected[0][1]["fsd"] and first["pruning"] == "dense"
    by_fsd = top_mixtures(cfg, n=100, sort="fsd")
    for targets in groups:  # FSD: lowest first, within each target set
        fsd = [r["fsd"] for r in by_fsd if tuple(sorted(r["targets"])) == targets]
        assert fsd == sorted(fsd)
    assert len(by_fsd) == len(built["evaluated"])  # every evaluated mixture (study parts too), none filtered
    table = format_results(rows)
    assert "accuracy_mean" in table and all(r["run_id"] in table for r in rows)
    headings = [line for line in table.splitlines() if line.startswith("targets ")]
    assert len(headings) == len(groups) and "ranks mixtures of these targets only" in headings[0]
    assert headings[0].startswith(f"targets {'+'.join(next(iter(groups)))} ")
    # black-box robust accuracy: only the mixtures that were attacked, most robust first
    attacked = [e for e in built["evaluated"] if "bb_robust_accuracy_mean" in e[1]]
    by_bb = top_mixtures(cfg, n=100, sort="bb_robust_accuracy_mean")
    assert [r["run_id"] for r in by_bb] == [e[0] for e in sorted(
        attacked, key=lambda e: (-e[1]["bb_robust_accuracy_mean"], e[2], e[3]))]  # all of one target set: books


def test_top_mixtures_refuses_an_unknown_metric(experiment):
    from search.reporting.results import top_mixtures
    from spaces.errors import UsageError

    cfg, _ = experiment
    with pytest.raises(UsageError, match="no evaluated mixture has the metric 'acuracy'"):
        top_mixtures(cfg, sort="acuracy")


def test_cli_results_and_report(experiment, tmp_path, capsys):
    from search.cli.main import main

    cfg, built = experiment
    config = Path(cfg.storage_path).parent / "signmix.yaml"
    assert main(["results", str(config), "--top", "3", "--sort", "accuracy/books", "--targets", "books"]) == 0
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if line[:1].isdigit()]) == 3
    assert out.splitlines()[0] == "targets books"  # one target set: no warning to give
    assert main(["report", str(config), "--out", str(tmp_path / "figs")]) == 0
    assert (tmp_path / "figs" / "fsd_heatmap.png").is_file()
    assert math.isfinite(float(read_csv(tmp_path / "figs" / "correlations.csv")[0]["pearson_r"]))
