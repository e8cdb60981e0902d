"""The search's MLflow writes, on a real SQLite tracking store: few calls, nothing half-written."""

from __future__ import annotations

import pytest

from search.tracking.layout import KEY_TAG, STATUS_TAG
from search.tracking.tracker import SearchTracker
from spaces.spec import make_mixture_spec


class Crash(Exception):
    pass


def _tracker(tmp_path) -> SearchTracker:
    return SearchTracker(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t", strategy="tpe",
                         measure="mean_pairwise")


def _counting(tracker: SearchTracker) -> list[str]:
    """Records the name of every MLflow client call the tracker makes."""
    calls: list[str] = []
    client = tracker.client

    class Counting:
        def __getattr__(self, name):
            attr = getattr(client, name)
            if not callable(attr):
                return attr

            def call(*args, **kwargs):
                calls.append(name)
                return attr(*args, **kwargs)
            return call

    tracker.client = Counting()
    return calls


def test_a_mixture_costs_four_mlflow_calls_and_a_filtered_one_three(tmp_path):
    tracker = _tracker(tmp_path)
    tracker.start(params={"strategy": "tpe"}, run_name="search")
    calls = _counting(tracker)
    spec = make_mixture_spec(members=["books", "dvd"], targets=["books"])
    tracker.start_mixture(spec, 0.25, "trial_1")
    tracker.finish_mixture(spec, "evaluated", metrics={"accuracy_mean": 0.75})
    assert calls == ["create_run", "log_batch", "log_batch", "set_terminated"]

    calls.clear()
    tracker.record_filtered(make_mixture_spec(members=["books", "kitchen"], targets=["books"]), 0.6, "max_fsd")
    assert calls == ["create_run", "log_batch", "set_terminated"]

    (run,) = [r for r in tracker.children("evaluated")]
    assert run.data.params["members"] and run.data.metrics == {"fsd": 0.25, "accuracy_mean": 0.75}
    assert run.data.tags["signmix.trial_id"] == "trial_1" and run.info.status == "FINISHED"
    (filtered,) = tracker.children("filtered")
    assert filtered.data.tags["signmix.filter_reason"] == "max_fsd" and filtered.info.status == "FINISHED"


def test_a_run_the_crash_left_without_parameters_is_replaced_on_resume(tmp_path, monkeypatch):
    tracker = _tracker(tmp_path)
    parent = tracker.start(params={"strategy": "tpe"}, run_name="search")
    spec = make_mixture_spec(members=["books", "dvd"], targets=["books"])

    def crash(*args, **kwargs):  # the driver dies after create_run, before the parameters
        raise Crash
    monkeypatch.setattr(tracker.client, "log_batch", crash)
    with pytest.raises(Crash):
        tracker.start_mixture(spec, 0.25, "trial_1")
    monkeypatch.undo()
    (bare,) = tracker.children()
    assert not bare.data.params

    resumed = _tracker(tmp_path)
    resumed.attach(parent)
    assert resumed.children() == [] and spec.key not in resumed.runs
    resumed.start_mixture(spec, 0.25, "trial_7")
    resumed.finish_mixture(spec, "evaluated", metrics={"accuracy_mean": 0.75})
    (run,) = resumed.children()
    assert run.data.tags[KEY_TAG] == spec.key and run.data.tags[STATUS_TAG] == "evaluated"
    assert run.data.params["members"] and run.data.tags["signmix.trial_id"] == "trial_7"


def test_a_resumed_mixture_keeps_its_run(tmp_path):
    tracker = _tracker(tmp_path)
    parent = tracker.start(params={"strategy": "tpe"}, run_name="search")
    spec = make_mixture_spec(members=["books", "dvd"], targets=["books"])
    tracker.start_mixture(spec, 0.25, "trial_1")  # then the driver dies

    resumed = _tracker(tmp_path)
    resumed.attach(parent)
    calls = _counting(resumed)
    resumed.start_mixture(spec, 0.25, "trial_9")
    resumed.finish_mixture(spec, "evaluated", metrics={"accuracy_mean": 0.7})
    assert calls == ["log_batch", "log_batch", "set_terminated"]
    (run,) = resumed.children()
    assert run.data.tags["signmix.trial_id"] == "trial_9" and run.data.metrics["accuracy_mean"] == 0.7


class _Trial:
    """What the tracking callback reads of a Ray Tune trial (a real one needs its experiment's storage)."""

    def __init__(self, trial_id: str, config: dict) -> None:
        self.trial_id, self.config, self.error_file = trial_id, config, None
        self.error_msg, self.checkpoint, self.last_result = "ActorDiedError: the worker died", None, None


def test_a_trial_failed_before_it_started_is_recorded_only_when_it_will_not_run_again(tmp_path):
    import torch

    from search.proposals.searcher import RETRIES_BEFORE_START, SignConflictSearcher
    from search.proposals.strategies import Exhaustive
    from search.workflows.search_callbacks import MixtureTracking
    from spaces.fsd import SignIndex
    from spaces.space import MixtureSpace

    index = SignIndex(names=("a", "t"), signs=torch.zeros(2, 4, dtype=torch.int8),
                      matrix=torch.tensor([[0.0, 0.1], [0.1, 0.0]], dtype=torch.float64))
    space = MixtureSpace(domains=("a", "t"), targets=("t",), max_fsd=None)
    tracker = _tracker(tmp_path)
    tracker.start(params={"strategy": "exhaustive"}, run_name="search")
    searcher = SignConflictSearcher(strategy=Exhaustive(space=space), space=space, index=index, tracker=tracker,
                                    budget=10)
    tracking = MixtureTracking(tracker=tracker, searcher=searcher)

    for attempt in range(RETRIES_BEFORE_START + 1):  # Ray Tune's order: the searcher, then the callbacks
        trial = _Trial(f"trial_{attempt}", searcher.suggest(f"trial_{attempt}"))
        searcher.on_trial_complete(trial.trial_id, None, error=True)
        tracking.on_trial_error(0, [], trial)
        if attempt < RETRIES_BEFORE_START:
            assert tracker.children() == []  # it runs again: nothing to record yet
    (run,) = tracker.children()
    assert run.data.tags[STATUS_TAG] == "failed" and run.info.status == "FAILED"
    assert "ActorDiedError" in run.data.tags["signmix.error"] and run.data.params["members"] == "t"  # smallest first


def test_close_dangling_ends_only_the_runs_still_running(tmp_path):
    tracker = _tracker(tmp_path)
    tracker.start(params={"strategy": "tpe"}, run_name="search")
    done, dangling = (make_mixture_spec(members=m, targets=["books"]) for m in (["books"], ["books", "dvd"]))
    tracker.start_mixture(done, 0.1, "trial_1")
    tracker.finish_mixture(done, "evaluated", metrics={"accuracy_mean": 0.7})
    tracker.start_mixture(dangling, 0.2, "trial_2")  # then the driver died
    calls = _counting(tracker)
    assert tracker.close_dangling() == 1
    assert calls == ["search_runs", "log_batch", "set_terminated"]
    runs = {r.data.tags[KEY_TAG]: r for r in tracker.children()}
    assert runs[dangling.key].data.tags[STATUS_TAG] == "failed" and runs[dangling.key].info.status == "KILLED"
    assert runs[done.key].data.tags[STATUS_TAG] == "evaluated" and runs[done.key].info.status == "FINISHED"


def test_close_dangling_ends_a_run_whose_outcome_was_recorded_as_that_outcome(tmp_path):
    """The driver died between a mixture's outcome (its metrics and status) and its run's end
    (found by the kill-and-resume test): the evaluation counts, so the run ends FINISHED."""
    tracker = _tracker(tmp_path)
    tracker.start(params={"strategy": "tpe"}, run_name="search")
    spec = make_mixture_spec(members=["books", "dvd"], targets=["books"])
    client = tracker.client

    class DiesBeforeTheEnd:
        def __getattr__(self, name):
            if name == "set_terminated":
                raise KeyboardInterrupt("the driver was killed")
            return getattr(client, name)

    tracker.client = DiesBeforeTheEnd()
    with pytest.raises(KeyboardInterrupt):
        tracker.finish_mixture(spec, "evaluated", metrics={"accuracy_mean": 0.7}, fsd=0.2, trial_id="trial_1")
    resumed = _tracker(tmp_path)
    resumed.attach(tracker.parent_id)
    assert resumed.reload()[spec.key][0] == "evaluated"
    assert resumed.close_dangling() == 0
    (run,) = resumed.children()
    assert run.data.tags[STATUS_TAG] == "evaluated" and run.info.status == "FINISHED"
    assert run.data.metrics["accuracy_mean"] == 0.7


def test_the_confirmation_reads_a_search_best_first_a_page_at_a_time_and_stops_when_it_has_its_runs(tmp_path):
    from search.workflows.confirmation import exportable_runs, ranked_runs

    tracker = _tracker(tmp_path)
    parent = tracker.start(params={"strategy": "tpe"}, run_name="search")
    evaluated = [(["books", "dvd"], ["books"], 0.9), (["books", "kitchen"], ["books"], 0.8),
                 (["dvd"], ["dvd"], 0.85),  # another target's run: never compared
                 (["books", "dvd", "kitchen"], ["books"], 0.75), (["books"], ["books"], 0.7),
                 (["books", "electronics"], ["books"], 0.6), (["books", "music"], ["books"], 0.5)]
    for members, targets, accuracy in evaluated:
        spec = make_mixture_spec(members=members, targets=targets, require_targets=False)
        tracker.start_mixture(spec, 0.1, "trial")
        tracker.finish_mixture(spec, "evaluated", metrics={"accuracy_mean": accuracy, "k": len(members)})
    ranked = list(ranked_runs(tracker.client, tracker.experiment_id, parent, page=2))
    assert [r.data.metrics["accuracy_mean"] for r in ranked] == [0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5]

    read: list = []

    def counted():
        for run in ranked_runs(tracker.client, tracker.experiment_id, parent, page=2):
            read.append(run)
            yield run
    runs = exportable_runs(ranked[0], counted())
    assert {name: r.data.params["members"] for name, r in runs.items()} == {
        "best": "books,dvd", "runner_up": "books,kitchen", "alone": "books"}
    assert len(read) == 5  # the runs after the targets alone were never read


def _searcher_and_tracking(tmp_path, domains=("a", "b", "t"), per_trial=1):
    import torch

    from search.proposals.searcher import SignConflictSearcher
    from search.proposals.strategies import Exhaustive
    from search.workflows.search_callbacks import MixtureTracking
    from spaces.fsd import SignIndex
    from spaces.space import MixtureSpace

    n = len(domains)
    index = SignIndex(names=domains, signs=torch.zeros(n, 4, dtype=torch.int8),
                      matrix=torch.full((n, n), 0.1, dtype=torch.float64).fill_diagonal_(0.0))
    space = MixtureSpace(domains=domains, targets=("t",), max_fsd=None)
    tracker = _tracker(tmp_path)
    tracker.start(params={"strategy": "exhaustive"}, run_name="search")
    searcher = SignConflictSearcher(strategy=Exhaustive(space=space), space=space, index=index, tracker=tracker,
                                    budget=10, mixtures_per_trial=per_trial)
    return searcher, MixtureTracking(tracker=tracker, searcher=searcher), tracker


def test_a_chunk_of_an_evaluation_is_logged_as_progress_and_the_whole_one_once_with_its_status(tmp_path):
    searcher, tracking, tracker = _searcher_and_tracking(tmp_path)
    trial = _Trial("trial_1", searcher.suggest("trial_1"))
    tracking.on_trial_start(0, [], trial)
    calls = _counting(tracker)
    chunk, whole = {"accuracy_mean": 0.5, "evaluated_fraction": 0.5}, {"accuracy_mean": 0.6, "evaluated_fraction": 1.0}
    for result in (chunk, whole):
        tracking.on_trial_result(0, [], trial, result)
    assert calls == ["log_batch"], "the chunk only"
    trial.last_result = whole
    searcher.on_trial_complete("trial_1", whole)
    tracking.on_trial_complete(0, [], trial)
    assert calls == ["log_batch", "log_batch", "set_terminated"]
    (run,) = tracker.children()
    assert run.data.tags[STATUS_TAG] == "evaluated" and run.data.metrics["accuracy_mean"] == 0.6


def test_a_batch_trial_records_each_mixture_as_it_reports_with_its_checkpoint(tmp_path):
    """Ray Tune's order: searcher.on_trial_result, callbacks.on_trial_result, then (a result with a
    checkpoint) callbacks.on_checkpoint with the trial's last result; a mixture that raised in the
    batch is failed with its error; the batch's end fails what never reported."""
    from ray import tune

    searcher, tracking, tracker = _searcher_and_tracking(tmp_path, per_trial=4)
    trial = _Trial("trial_1", searcher.suggest("trial_1"))
    specs = [spec for _, spec in searcher.mixtures_of("trial_1")]
    assert len(trial.config["batch"]) == len(specs) == 4
    tracking.on_trial_start(0, [], trial)
    assert tracker.children() == [], "a batch's mixture gets its run once evaluated"
    calls = _counting(tracker)

    def report(result, checkpoint_dir=None):
        result = {**result, **({"should_checkpoint": True} if checkpoint_dir else {})}
        searcher.on_trial_result("trial_1", result)
        tracking.on_trial_result(0, [], trial, result)
        trial.last_result = result
        if checkpoint_dir:
            tracking.on_checkpoint(0, [], trial, tune.Checkpoint.from_directory(str(checkpoint_dir)))

    saved = tmp_path / "ckpt"
    saved.mkdir()
    (saved / "adapter.safetensors").write_bytes(b"weights")
    report({"accuracy_mean": 0.7, "batch_index": 0}, saved)
    report({"accuracy_mean": float("nan"), "batch_index": 1, "mixture_error": "Traceback\nValueError: bad spec"})
    report({"accuracy_mean": 0.8, "batch_index": 2})  # a trial without checkpoints (benchmarks)
    assert calls[-3:] == ["create_run", "log_batch", "set_terminated"], "three calls a mixture"
    report({"accuracy_mean": 0.7, "batch_index": 0}, saved)  # Ray Tune re-ran the batch: ignored
    searcher.on_trial_complete("trial_1", trial.last_result)
    tracking.on_trial_complete(0, [], trial)

    runs = {r.data.tags[KEY_TAG]: r for r in tracker.children()}
    status = [runs[s.key].data.tags[STATUS_TAG] for s in specs]
    assert status == ["evaluated", "failed", "evaluated", "failed"]
    assert [runs[s.key].info.status for s in specs] == ["FINISHED", "FAILED", "FINISHED", "FAILED"]
    assert "ValueError: bad spec" in runs[specs[1].key].data.tags["signmix.error"]
    assert "without evaluating it" in runs[specs[3].key].data.tags["signmix.error"]
    artifacts = [f.path for f in tracker.client.list_artifacts(runs[specs[0].key].info.run_id, "mixture")]
    assert artifacts == ["mixture/adapter.safetensors"]
    assert tracker.client.list_artifacts(runs[specs[2].key].info.run_id) == []
    assert (searcher.counts.evaluated, searcher.counts.failed) == (2, 2)
    assert runs[specs[2].key].data.params["members"] == ",".join(specs[2].members)
    assert runs[specs[2].key].data.tags["signmix.trial_id"] == "trial_1"
    assert runs[specs[2].key].data.metrics["fsd"] == pytest.approx(0.1)


def test_a_batch_whose_worker_died_fails_only_the_mixtures_it_had_not_evaluated(tmp_path):
    searcher, tracking, tracker = _searcher_and_tracking(tmp_path, per_trial=3)
    trial = _Trial("trial_1", searcher.suggest("trial_1"))
    specs = [spec for _, spec in searcher.mixtures_of("trial_1")]
    tracking.on_trial_start(0, [], trial)
    result = {"accuracy_mean": 0.7, "batch_index": 0}
    searcher.on_trial_result("trial_1", result)
    tracking.on_trial_result(0, [], trial, result)
    searcher.on_trial_complete("trial_1", None, error=True)
    tracking.on_trial_error(0, [], trial)
    runs = {r.data.tags[KEY_TAG]: r.data.tags for r in tracker.children()}
    assert [runs[s.key][STATUS_TAG] for s in specs] == ["evaluated", "failed", "failed"]
    assert "ActorDiedError" in runs[specs[2].key]["signmix.error"]


def test_a_batch_mixture_whose_checkpoint_never_came_is_recorded_from_its_result(tmp_path):
    searcher, tracking, tracker = _searcher_and_tracking(tmp_path, per_trial=2)
    trial = _Trial("trial_1", searcher.suggest("trial_1"))
    specs = [spec for _, spec in searcher.mixtures_of("trial_1")]
    tracking.on_trial_start(0, [], trial)
    for i in range(2):
        result = {"accuracy_mean": 0.6 + i / 10, "batch_index": i, "should_checkpoint": True}
        searcher.on_trial_result("trial_1", result)
        tracking.on_trial_result(0, [], trial, result)
        trial.last_result = result
    assert tracker.children() == [], "waiting for the checkpoints"
    searcher.on_trial_complete("trial_1", trial.last_result)
    tracking.on_trial_complete(0, [], trial)  # the checkpoints' save failed: no on_checkpoint
    runs = {r.data.tags[KEY_TAG]: r for r in tracker.children()}
    assert [runs[s.key].data.tags[STATUS_TAG] for s in specs] == ["evaluated", "evaluated"]
    assert [runs[s.key].data.metrics["accuracy_mean"] for s in specs] == [0.6, 0.7]
    assert tracking.awaiting == {}


def test_a_batch_mixture_whose_recording_was_cut_short_is_never_taken_for_evaluated(tmp_path):
    """MLflow's log_batch writes parameters, metrics and tags one after the other; the driver
    died after the parameters (found by the batched kill-and-resume test, whose resume then
    read an "evaluated" run without metrics). The status comes last, so the run stays
    "running": the resumed search does not count it, and its end fails it."""
    tracker = _tracker(tmp_path)
    tracker.start(params={"strategy": "tpe"}, run_name="search")
    spec = make_mixture_spec(members=["books", "dvd"], targets=["books"])
    client = tracker.client

    class DiesWithinTheBatch:
        def __getattr__(self, name):
            if name == "log_batch":
                def cut_short(run_id, metrics=(), params=(), tags=()):
                    client.log_batch(run_id, params=params)
                    raise KeyboardInterrupt("the driver was killed")
                return cut_short
            return getattr(client, name)

    tracker.client = DiesWithinTheBatch()
    with pytest.raises(KeyboardInterrupt):
        tracker.finish_mixture(spec, "evaluated", metrics={"accuracy_mean": 0.7}, fsd=0.2, trial_id="trial_1")
    resumed = _tracker(tmp_path)
    resumed.attach(tracker.parent_id)
    assert resumed.reload()[spec.key][0] == "running"
    assert resumed.close_dangling() == 1
    (run,) = resumed.children()
    assert run.data.tags[STATUS_TAG] == "failed" and run.info.status == "KILLED"


def _history(tracker, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in tracker.client.get_metric_history(run_id, key)]


def test_a_whole_evaluation_is_logged_at_step_0_beside_its_fsd_and_a_chunked_one_ends_at_its_last_chunk(tmp_path):
    """MLflow's chart view compares runs by step: one evaluation, one step, the same for every run."""
    searcher, tracking, tracker = _searcher_and_tracking(tmp_path)
    whole = {"accuracy_mean": 0.6, "evaluated_fraction": 1.0, "training_iteration": 1}
    trial = _Trial("trial_1", searcher.suggest("trial_1"))
    tracking.on_trial_start(0, [], trial)
    tracking.on_trial_result(0, [], trial, whole)
    trial.last_result = whole
    searcher.on_trial_complete("trial_1", whole)
    tracking.on_trial_complete(0, [], trial)
    chunked = _Trial("trial_2", searcher.suggest("trial_2"))
    tracking.on_trial_start(0, [], chunked)
    for result in ({"accuracy_mean": 0.5, "evaluated_fraction": 0.5, "training_iteration": 1},
                   {"accuracy_mean": 0.7, "evaluated_fraction": 1.0, "training_iteration": 2}):
        tracking.on_trial_result(0, [], chunked, result)
        chunked.last_result = result
    searcher.on_trial_complete("trial_2", chunked.last_result)
    tracking.on_trial_complete(0, [], chunked)
    first, second = (tracker.runs[searcher.specs[t].key] for t in ("trial_1", "trial_2"))
    assert _history(tracker, first, "accuracy_mean") == [(0, 0.6)] and _history(tracker, first, "fsd")[0][0] == 0
    assert _history(tracker, second, "accuracy_mean") == [(1, 0.5), (2, 0.7)]
    assert tracker.client.get_run(second).data.metrics["accuracy_mean"] == 0.7  # the latest: the whole evaluation


def test_means_of_ratios_are_logged_without_summation_noise_and_a_domains_accuracy_as_computed(tmp_path):
    searcher, tracking, tracker = _searcher_and_tracking(tmp_path)
    noisy = (0.58 + 0.99) / 2  # 0.7849999999999999
    assert noisy != 0.785
    result = {"accuracy_mean": noisy, "accuracy/t": 1 / 3, "eval_seconds": 1 / 3, "evaluated_fraction": 1.0}
    trial = _Trial("trial_1", searcher.suggest("trial_1"))
    tracking.on_trial_start(0, [], trial)
    trial.last_result = result
    searcher.on_trial_complete("trial_1", result)
    tracking.on_trial_complete(0, [], trial)
    (run,) = tracker.children()
    assert run.data.metrics["accuracy_mean"] == 0.785
    assert run.data.metrics["accuracy/t"] == 1 / 3 and run.data.metrics["eval_seconds"] == 1 / 3


def test_an_experiment_opens_on_its_runs_and_says_what_it_holds_without_overwriting_the_users_words(tmp_path):
    from mlflow import MlflowClient

    from search.tracking.layout import EXPERIMENT_KIND_TAG, NOTE_TAG
    from search.tracking.tracker import open_experiment

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, created = open_experiment(uri, "new", description="signmix experiment new: books, dvd")
    tags = MlflowClient(uri).get_experiment(created).tags
    assert tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    assert tags[NOTE_TAG] == "signmix experiment new: books, dvd"
    # an experiment made elsewhere, first written to by signmix: the kind; the user's description stays
    mine = MlflowClient(uri).create_experiment("theirs", tags={NOTE_TAG: "my notes"})
    open_experiment(uri, "theirs", description="signmix's words")
    tags = MlflowClient(uri).get_experiment(mine).tags
    assert tags[EXPERIMENT_KIND_TAG] == "custom_model_development" and tags[NOTE_TAG] == "my notes"
