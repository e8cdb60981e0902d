"""The tie rule and the confirmation's record, from per-example correctness (no Ray, no MLflow)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from search.workflows.confirmation_decision import (
    confirmation_lines,
    confirmation_metrics,
    decide_and_measure,
    tie_rule_choice,
)
from spaces.spec import make_mixture_spec


def run(run_id: str):
    return SimpleNamespace(info=SimpleNamespace(run_id=run_id))


def specs():
    return {"best": make_mixture_spec(members=["a", "b", "t"], targets=["t"]),
            "runner_up": make_mixture_spec(members=["a", "t"], targets=["t"]),
            "own/t": make_mixture_spec(members=["t"], targets=["t"]),
            "soup": make_mixture_spec(members=["a", "b", "c", "t"], targets=["t"]),
            "greedy/3": make_mixture_spec(members=["a", "c", "t"], targets=["t"]),
            "greedy/2": make_mixture_spec(members=["a", "t"], targets=["t"])}


def correctness(best_val, ru_val, n=100):
    test = [1] * 80 + [0] * (n - 80)
    own_test = [1] * 70 + [0] * (n - 70)
    return {"best": {"validation": {"t": best_val}, "test": {"t": test}},
            "runner_up": {"validation": {"t": ru_val}, "test": {"t": own_test}},
            "own/t": {"validation": {"t": ru_val}, "test": {"t": own_test}},
            "soup": {"test": {"t": [0] * n}}, "greedy/3": {"test": {"t": test}}, "greedy/2": {"test": {"t": own_test}}}


@pytest.mark.parametrize("rule, exported", [("fewer_members", "ru"), ("higher_accuracy", "best")])
def test_a_lead_inside_the_interval_is_a_tie_and_the_rule_decides(rule, exported):
    # 100 validation examples, best right on 2 more: no real lead.
    best_val = [1] * 82 + [0] * 18
    ru_val = [1] * 80 + [0] * 20
    record = decide_and_measure(correctness(best_val, ru_val), specs(),
                                {"best": run("best"), "runner_up": run("ru")}, rule=rule)
    assert record["validation"]["vs_runner_up"]["tied"] and record["chosen_run_id"] == exported
    notes = " ".join(record["notes"])
    assert "Not a clear winner" in notes and "cannot tell them apart" in notes
    assert ("instead of" in notes) == (exported == "ru")
    # The test numbers are the exported mixture's: the runner-up scored 0.70 on test.
    assert record["targets"]["t"]["accuracy"] == (0.70 if exported == "ru" else 0.80)
    greedy = record["baselines"]["greedy"]["members"]
    assert len(greedy) == (2 if exported == "ru" else 3), "greedy's pick has the exported mixture's size"


def test_a_clear_lead_exports_the_best_with_intervals_and_mcnemar():
    best_val = [1] * 95 + [0] * 5
    ru_val = [1] * 60 + [0] * 40
    record = decide_and_measure(correctness(best_val, ru_val), specs(),
                                {"best": run("best"), "runner_up": run("ru")}, rule="fewer_members")
    assert record["chosen_run_id"] == "best" and not record["validation"]["vs_runner_up"]["tied"]
    t = record["targets"]["t"]
    assert t["ci_low"] < 0.80 < t["ci_high"] and t["n"] == 100
    assert t["p_vs_own"] == pytest.approx(2 * 0.5 ** 10)  # 10 discordant examples, all for the mixture
    m = confirmation_metrics(record)
    assert m["test_accuracy/t"] == 0.80 and m["own_test_accuracy/t"] == 0.70 and m["soup_test_accuracy/t"] == 0.0
    assert {"test_ci_low/t", "test_ci_high/t", "p_vs_own/t", "greedy_test_accuracy/t", "val_lead_vs_runner_up"} <= set(m)
    lines = confirmation_lines(record)
    assert lines[1].startswith("  t: chosen 0.800 [") and "p vs own 0.00195" in lines[1]


def test_the_targets_alone_under_the_search_head_protocol_are_a_test_baseline():
    # With refit heads the target alone is its own adapter under a refit head: a mixture's win
    # over the own adapter must be told apart from the refit's win (p against the alone).
    s = {**specs(), "alone": make_mixture_spec(members=["t"], targets=["t"], head="refit")}
    c = correctness([1] * 95 + [0] * 5, [1] * 60 + [0] * 40)
    c["alone"] = {"validation": {"t": [1] * 90 + [0] * 10}, "test": {"t": [1] * 78 + [0] * 22}}
    record = decide_and_measure(c, s, {"best": run("best"), "runner_up": run("ru"), "alone": run("alone")},
                                rule="higher_accuracy")
    assert record["baselines"]["alone"]["targets"]["t"]["accuracy"] == 0.78
    assert record["targets"]["t"]["p_vs_alone"] == pytest.approx(2 * 0.5 ** 2)  # 2 discordant, both for the mixture
    m = confirmation_metrics(record)
    assert m["alone_test_accuracy/t"] == 0.78 and m["p_vs_alone/t"] == pytest.approx(0.5)
    # Without an evaluated alone there is no such baseline.
    assert "alone" not in decide_and_measure(correctness([1] * 95 + [0] * 5, [1] * 60 + [0] * 40), specs(),
                                             {"best": run("best"), "runner_up": run("ru")},
                                             rule="higher_accuracy")["baselines"]


@pytest.mark.parametrize("fields", [
    dict(members=["a", "t"]),
    dict(members=["a", "b", "t"], merge_method="task_arithmetic", lam=2.0),
    dict(members=["a", "t"], merge_method="ties", density=0.2, lam=0.5, head="refit"),
    dict(members=["a", "b", "t"], merge_method="dare_ties", drop_rate=0.9, lam=2.0, merge_seed=3),
    dict(members=["a", "b", "t"], weights=[0.2, 0.4, 0.4], merge_method="dare_linear", drop_rate=0.3),
], ids=["average", "task_arithmetic-lambda-2", "ties-refit", "dare_ties-seed", "searched-weights"])
def test_the_confirmation_rebuilds_exactly_the_mixture_the_run_evaluated(fields):
    # The confirmation evaluates the run's mixture rebuilt from its MLflow params: a
    # parameter read under the wrong name (λ is logged as "lambda") would confirm another one.
    from search.tracking.layout import spec_from_run, spec_params

    spec = make_mixture_spec(targets=["t"], **fields)
    logged = SimpleNamespace(data=SimpleNamespace(params=spec_params(spec, strategy="tpe", measure="mean_pairwise")))
    rebuilt = spec_from_run(logged)
    assert rebuilt.key == spec.key and rebuilt.label() == spec.label()


def test_with_two_targets_the_validation_lead_is_in_mean_accuracy_not_pooled_examples():
    two = lambda members: make_mixture_spec(members=members, targets=["t", "u"])  # noqa: E731
    sp = {"best": two(["a", "t", "u"]), "runner_up": two(["t", "u"]), "own/t": make_mixture_spec(members=["t"], targets=["t"]),
          "own/u": make_mixture_spec(members=["u"], targets=["u"]), "soup": two(["a", "b", "t", "u"]),
          "greedy/3": two(["a", "t", "u"]), "greedy/2": two(["t", "u"])}
    # t: 200 examples, best ahead by 0.05; u: 20 examples, runner-up ahead by 0.30.
    val = {"best": {"t": [1] * 160 + [0] * 40, "u": [1] * 10 + [0] * 10},
           "runner_up": {"t": [1] * 150 + [0] * 50, "u": [1] * 16 + [0] * 4}}
    test = {"t": [1] * 200, "u": [1] * 20}
    correct = {name: {"validation": val.get(name, val["runner_up"]), "test": test} for name in sp}
    correct["soup"]["validation"] = {"t": [0] * 200, "u": [0] * 20}  # a baseline that competes for nothing here
    record = decide_and_measure(correct, sp, {"best": run("best"), "runner_up": run("ru")}, rule="higher_accuracy")
    assert record["validation"]["vs_runner_up"]["lead"] == pytest.approx((0.05 - 0.30) / 2)


def test_a_validation_set_too_small_to_separate_mixtures_is_warned_with_the_numbers():
    from search.proposals.validation_size import small_validation_warnings

    (warning,) = small_validation_warnings({"books": 100, "dvd": 2000}, 0.05)
    assert warning.startswith("target books: 100 validation examples give a 95% interval of about ±0.098")
    assert "about 385 examples would be needed" in warning  # 1.96² · 0.25 / 0.05² = 384.1
    assert small_validation_warnings({"books": 385}, 0.05) == []


# One-body baselines compete for the export ----------------------------------------------------

def _with_ties_of_all(ties_val, *, n=100):
    """The search's candidates plus TIES of all (every adapter) with ``ties_val`` on validation and
    0.90 on test; the searched best scores 0.82 on validation."""
    s = {**specs(), "ties_of_all": make_mixture_spec(members=["a", "b", "c", "t"], targets=["t"], merge_method="ties",
                                                     density=0.2, lam=1.0)}
    c = correctness([1] * 82 + [0] * 18, [1] * 80 + [0] * 20, n=n)
    c["ties_of_all"] = {"validation": {"t": ties_val}, "test": {"t": [1] * 90 + [0] * 10}}
    c["soup"]["validation"] = {"t": [1] * 50 + [0] * 50}
    return c, s


@pytest.mark.parametrize("rule", ["fewer_members", "higher_accuracy"])
def test_ties_of_all_beating_the_searched_best_beyond_the_interval_is_exported(rule):
    # TIES of all is right on every row the best is right on, and on 15 more: a lead the data supports.
    c, s = _with_ties_of_all([1] * 97 + [0] * 3)
    runs = {"best": run("best"), "runner_up": run("ru")}
    assert tie_rule_choice({n: v["validation"] for n, v in c.items() if "validation" in v}, s, runs,
                           rule=rule) == "ties_of_all"
    record = decide_and_measure(c, s, {**runs, "ties_of_all": run("ties-run")}, rule=rule)
    assert record["chosen_baseline"] == "ties_of_all" and record["chosen_run_id"] == "ties-run"
    assert record["chosen_members"] == ["a", "b", "c", "t"]
    assert record["targets"]["t"]["accuracy"] == 0.90  # confirmed on test like any chosen mixture
    lead = record["validation"]["vs_baselines"]["ties_of_all"]
    assert lead["high"] < 0 and lead["lead"] == pytest.approx(-0.15)
    assert record["notes"][0].startswith("Exported TIES of all adapters (")
    assert "not one of the searched mixtures" in record["notes"][0]
    assert "beyond the validation interval" in record["notes"][0]
    assert confirmation_metrics(record)["val_lead_vs_ties_of_all"] == pytest.approx(-0.15)
    assert any("Exported TIES of all adapters" in line for line in confirmation_lines(record))


def test_a_baseline_tied_with_the_searched_best_is_exported_only_as_the_rule_says():
    # TIES of all right on 1 more row than the best: inside the interval, a tie.
    c, s = _with_ties_of_all([1] * 83 + [0] * 17)
    val = {n: v["validation"] for n, v in c.items() if "validation" in v}
    runs = {"best": run("best"), "runner_up": run("ru")}
    # fewer members first: the runner-up (2) before the best (3) and TIES of all (4)
    assert tie_rule_choice(val, s, runs, rule="fewer_members") == "runner_up"
    # the higher accuracy among the tied: TIES of all, which scored higher than the searched best
    assert tie_rule_choice(val, s, runs, rule="higher_accuracy") == "ties_of_all"
    # a run the user named for export: no baseline competes
    assert tie_rule_choice(val, s, runs, rule="higher_accuracy", baselines=()) == "best"


def test_a_baseline_the_searched_best_beats_is_never_exported():
    c, s = _with_ties_of_all([1] * 60 + [0] * 40)
    record = decide_and_measure(c, s, {"best": run("best"), "runner_up": run("ru")}, rule="higher_accuracy")
    assert record["chosen_run_id"] == "best" and record["chosen_baseline"] is None
    assert record["validation"]["vs_baselines"]["ties_of_all"]["low"] > 0
    assert not any("Exported" in note for note in record["notes"])


# A data-only target: the best single library adapter competes too ------------------------------

def _data_only(single_val, *, n=100):
    """A data-only target ``t`` (never a member): the searched best mixes three library adapters and
    scores 0.82 on validation; the best single adapter ``b`` alone scores ``single_val``, 0.85 on test."""
    refit = {"targets": ["t"], "require_targets": False, "head": "refit"}
    s = {"best": make_mixture_spec(members=["a", "b", "c"], **refit),
         "runner_up": make_mixture_spec(members=["a", "b"], **refit),
         "own/t": make_mixture_spec(members=["t"], targets=["t"], require_targets=False),
         "soup": make_mixture_spec(members=["a", "b", "c", "d"], **refit),
         "best_single": make_mixture_spec(members=["b"], **refit)}
    c = correctness([1] * 82 + [0] * 18, [1] * 60 + [0] * 40, n=n)
    c = {k: v for k, v in c.items() if k in s}
    c["soup"]["validation"] = {"t": [1] * 50 + [0] * 50}
    c["best_single"] = {"validation": {"t": single_val}, "test": {"t": [1] * 85 + [0] * 15}}
    return c, s


def test_the_best_single_adapter_tied_with_a_three_member_mixture_is_exported_under_fewer_members():
    # right on one row fewer than the searched best: inside the interval, a tie
    c, s = _data_only([1] * 81 + [0] * 19)
    runs = {"best": run("best"), "runner_up": run("ru")}
    val = {n: v["validation"] for n, v in c.items() if "validation" in v}
    assert tie_rule_choice(val, s, runs, rule="fewer_members") == "best_single"  # 1 member against 3
    assert tie_rule_choice(val, s, runs, rule="higher_accuracy") == "best"  # the best scored higher
    record = decide_and_measure(c, s, {**runs, "best_single": run("single-run")}, rule="fewer_members")
    assert record["chosen_baseline"] == "best_single" and record["chosen_run_id"] == "single-run"
    assert record["chosen_members"] == ["b"] and record["chosen_k"] == 1
    assert record["targets"]["t"]["accuracy"] == 0.85  # confirmed on test
    assert record["notes"][0].startswith("Exported the best single library adapter on validation (")
    assert "search.when_tied is fewer_members" in record["notes"][0]
    assert confirmation_metrics(record)["val_lead_vs_best_single"] == pytest.approx(0.01)


def test_the_best_single_adapter_beating_the_searched_best_beyond_the_interval_is_exported_whatever_the_rule():
    c, s = _data_only([1] * 97 + [0] * 3)
    val = {n: v["validation"] for n, v in c.items() if "validation" in v}
    for rule in ("fewer_members", "higher_accuracy"):
        assert tie_rule_choice(val, s, {"best": run("best"), "runner_up": run("ru")}, rule=rule) == "best_single"


def test_a_best_single_adapter_the_searched_best_beats_is_not_exported():
    c, s = _data_only([1] * 55 + [0] * 45)
    record = decide_and_measure(c, s, {"best": run("best"), "runner_up": run("ru")}, rule="fewer_members")
    assert record["chosen_run_id"] == "best" and record["chosen_baseline"] is None
