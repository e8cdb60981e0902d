"""The confirmation's numbers: which mixture the tie rule exports, intervals, McNemar, plain words.

Pure: per-example correctness in, a JSON-safe record out (``mixture.json``'s
``confirmation``), its MLflow metrics, and the summary lines. No Ray, no MLflow calls.

Record layout::

    {"split": "test", "confidence": 0.95, "when_tied": rule,
     "best_run_id", "chosen_run_id", "chosen_label", "chosen_members", "chosen_k",
     "targets": {t: {"accuracy", "ci_low", "ci_high", "n", "p_vs_own"}},
     "test_accuracy_mean",
     "baselines": {"own" | "soup" | "greedy": {"label", "members", "targets": {t: {"accuracy", "ci_low", "ci_high"}}}},
     "chosen_baseline": "soup" | "ties_of_all" | "best_single" | None,
     "validation": {"vs_runner_up": {...} | None, "vs_alone": {...} | None, "vs_own": {t: {...}},
                    "vs_baselines": {"soup" | "ties_of_all": {...}}},
     "notes": [sentences]}
"""

from __future__ import annotations

from typing import Mapping, Sequence

from search.tracking.tables import format_table
from search.workflows.baselines import TIES_OF_ALL
from search.workflows.new_domain import BEST_SINGLE
from search.tracking.layout import BEST_TAG, CHOSEN_TAG, NOTES_TAG, RULE_TAG
from trainables.example_correctness import BLACKBOX_TEST
from trainables.significance import mcnemar_exact, mean_difference, paired_bootstrap

CONFIDENCE = 0.95  # of every interval the confirmation reports


def _mean_accuracy(correct: Mapping[str, Sequence[int]], targets: Sequence[str]) -> float:
    """Accuracy averaged over targets: what the search ranked by (``accuracy_mean``)."""
    return sum(sum(correct[t]) / len(correct[t]) for t in targets) / len(targets)


def _diff(a: Mapping[str, Sequence[int]], b: Mapping[str, Sequence[int]], targets: Sequence[str], seed: int) -> dict:
    """The lead in mean accuracy over ``targets``, stratified by target."""

    d = mean_difference({t: a[t] for t in targets}, {t: b[t] for t in targets}, confidence=CONFIDENCE, seed=seed)
    return {"lead": d.lead, "low": d.low, "high": d.high, "n": d.n, "tied": d.includes_zero}


def _interval(lead: Mapping) -> str:
    return f"{lead['lead']:+.3f} (95% interval [{lead['low']:+.3f}, {lead['high']:+.3f}], n {lead['n']})"


# The searched candidates the best is compared with on validation (they have MLflow runs).
SEARCHED_RIVALS = ("runner_up", "alone")
# The one-body baselines the search scores (the soup of all, TIES of all), candidates of the export
# too: a search never exports less than a baseline it scored itself.
# For one data-only target, the best single library adapter on validation competes too (with its
# refit head; ``search.workflows.new_domain``): a user who would have picked one adapter never gets less.
ONE_BODY_BASELINES = ("soup", TIES_OF_ALL, BEST_SINGLE)
BASELINE_WORDS = {"soup": "the soup of all adapters (their uniform average)", TIES_OF_ALL: "TIES of all adapters",
                  BEST_SINGLE: "the best single library adapter on validation"}


def _chosen(tied: Sequence[str], val: Mapping, specs: Mapping, rule: str) -> str:
    """The tie rule: among the candidates tied with the best on validation, the one exported.

    ``fewer_members``: the fewest members, then the higher validation accuracy. ``higher_accuracy``:
    the searched best, unless a one-body baseline tied with it scored higher on validation."""
    targets = list(specs["best"].targets)
    if rule != "fewer_members":
        return max((n for n in tied if n == "best" or n in ONE_BODY_BASELINES),
                   key=lambda n: (_mean_accuracy(val[n], targets), n == "best"))
    return min(tied, key=lambda n: (specs[n].k, -_mean_accuracy(val[n], targets), tied.index(n)))


def validation_leads(val: Mapping, specs: Mapping, rivals: Sequence[str], *, seed: int = 0) -> dict[str, dict]:
    """The best mixture's validation lead over each rival whose validation correctness ``val``
    holds (a rival that is the best's own mixture is left out)."""
    targets = list(specs["best"].targets)
    return {n: _diff(val["best"], val[n], targets, seed) for n in rivals
            if n in val and n in specs and specs[n].key != specs["best"].key}


def tie_rule_choice(val: Mapping, specs: Mapping, runs: Mapping, *, rule: str, seed: int = 0,
                    baselines: Sequence[str] = ONE_BODY_BASELINES) -> str:
    """Which candidate the export takes, from validation correctness alone (``val``: name ->
    target -> 0/1): what :func:`decide_and_measure` chooses, known before any test split is evaluated.

    A one-body baseline of ``baselines`` (those ``val`` holds) that leads the searched best beyond
    the validation interval is exported, whatever the rule (the one that leads most, when
    several do). Otherwise the candidates whose lead is inside the interval are tied with the
    best (``best``, ``runner_up``, ``alone`` of ``runs``, and the baselines) and the rule picks one."""
    targets = list(specs["best"].targets)
    rivals = [n for n in SEARCHED_RIVALS if n in runs] + [n for n in baselines if n in ONE_BODY_BASELINES]
    leads = validation_leads(val, specs, rivals, seed=seed)
    ahead = [n for n in baselines if n in leads and leads[n]["high"] < 0]
    if ahead:
        return max(ahead, key=lambda n: _mean_accuracy(val[n], targets))
    return _chosen(["best"] + [n for n, lead in leads.items() if lead["tied"]], val, specs, rule)


def validation_baselines(correct: Mapping, targets: Sequence[str]) -> dict[str, dict[str, float]]:
    """The search summary's baselines from the confirmation's validation splits, as
    ``search.workflows.baselines.evaluate_specs`` gives them: ``single <t>`` (each target's own
    adapter), ``soup of all`` and, when confirmed, ``ties_of_all``."""
    out: dict[str, dict[str, float]] = {}
    for t in targets:
        rows = correct[f"own/{t}"]["validation"][t]
        out[f"single {t}"] = {f"accuracy/{t}": sum(rows) / len(rows), "accuracy_mean": sum(rows) / len(rows)}
    for name, label in (("soup", "soup of all"), (TIES_OF_ALL, TIES_OF_ALL)):
        if "validation" in correct.get(name, {}):
            per = {f"accuracy/{t}": sum(correct[name]["validation"][t]) / len(correct[name]["validation"][t])
                   for t in targets}
            out[label] = {**per, "accuracy_mean": sum(per.values()) / len(per)}
    return out


def decide_and_measure(correct: Mapping, specs: Mapping, runs: Mapping, *, rule: str, seed: int = 0,
                       baselines: Sequence[str] = ONE_BODY_BASELINES) -> dict:
    """Apply the tie rule on validation (:func:`tie_rule_choice`), then measure the chosen mixture
    and the baselines on test.

    Args:
        correct: candidate name -> split -> target -> per-example 0/1 (the confirmation trial's).
        specs: candidate name -> its MixtureSpec (``best``, ``runner_up``, ``alone``, ``own/<t>``,
            ``soup``, ``ties_of_all``, ``greedy/<k>``).
        runs: the MLflow runs of the exportable candidates (``best``, and ``runner_up``/``alone`` if
            any), and of the chosen baseline when the rule chose one (the caller logs it).
        rule: ``fewer_members`` or ``higher_accuracy`` (``search.when_tied``).
        seed: the bootstrap's seed.
        baselines: the one-body baselines that compete for the export when ``correct`` holds
            their validation split (none: an export of a run the user named).
    """

    best = specs["best"]
    targets = list(best.targets)
    val = {name: splits["validation"] for name, splits in correct.items() if "validation" in splits}
    chosen = tie_rule_choice(val, specs, runs, rule=rule, seed=seed, baselines=baselines)
    chosen_spec = specs[chosen]
    validation: dict = {"vs_runner_up": None, "vs_alone": None, "vs_own": {}, "vs_baselines": {}}
    notes: list[str] = []
    leads = validation_leads(val, specs, [*SEARCHED_RIVALS, *(n for n in baselines if n in ONE_BODY_BASELINES)],
                             seed=seed)
    for name, lead in leads.items():
        if name in SEARCHED_RIVALS and name in runs:
            validation[f"vs_{name}"] = {**lead, "label": specs[name].label(), "run_id": runs[name].info.run_id}
        elif name in baselines:
            validation["vs_baselines"][name] = {**lead, "label": specs[name].label()}
    for t in targets:
        validation["vs_own"][t] = _diff(correct["best"]["validation"], correct[f"own/{t}"]["validation"], [t], seed)
    if chosen in ONE_BODY_BASELINES:
        notes.append(baseline_choice_note(chosen, best, chosen_spec, validation["vs_baselines"][chosen], rule))

    ru = validation["vs_runner_up"]
    if ru is not None and ru["tied"]:
        notes.append(f"Not a clear winner: the best mixture {best.label()} leads the runner-up {ru['label']} by "
                     f"{_interval(ru)} on validation; the interval holds 0, so the data cannot tell them apart.")
    elif ru is not None:
        notes.append(f"The best mixture {best.label()} leads the runner-up {ru['label']} by {_interval(ru)} "
                     f"on validation: a lead the data supports.")
    alone = validation["vs_alone"]
    if alone is not None and alone["tied"]:
        notes.append(f"The best mixture's validation lead over the targets alone ({alone['label']}) is "
                     f"{_interval(alone)}: inside the interval, mixing is no better than not mixing here.")
    for t, lead in validation["vs_own"].items():
        if lead["tied"]:
            notes.append(f"On {t}, the best mixture's validation lead over {t}'s own adapter is {_interval(lead)}: "
                         f"inside the interval, no better than {t} alone on this data.")
    if chosen in SEARCHED_RIVALS:
        notes.append(f"Exported {chosen_spec.label()} ({chosen_spec.k} member(s)) instead of {best.label()} "
                     f"({best.k}): tied on validation, and search.when_tied is {rule}.")

    greedy = f"greedy/{chosen_spec.k}"
    names = {"chosen": chosen, "own": None, "soup": "soup", "greedy": greedy if greedy in correct else None}
    per_target, baselines = {}, {b: {"label": None, "members": [], "targets": {}}
                                 for b in ("own", "soup", "greedy", "alone")}
    for t in targets:
        columns = {"chosen": correct[chosen]["test"][t], "own": correct[f"own/{t}"]["test"][t],
                   "soup": correct["soup"]["test"][t]}
        if names["greedy"]:
            columns["greedy"] = correct[greedy]["test"][t]
        # The targets alone with the search's head protocol (with refit heads: the target's own
        # adapter under a refit head), so that a win of mixing is not read as a win of the refit.
        if "alone" in specs and "test" in correct.get("alone", {}):
            columns["alone"] = correct["alone"]["test"][t]
        iv = paired_bootstrap(columns, confidence=CONFIDENCE, seed=seed)
        mc = mcnemar_exact(columns["chosen"], columns["own"])
        per_target[t] = {"accuracy": iv["chosen"].accuracy, "ci_low": iv["chosen"].low, "ci_high": iv["chosen"].high,
                         "n": iv["chosen"].n, "p_vs_own": mc.p_value}
        if "alone" in columns:
            per_target[t]["p_vs_alone"] = mcnemar_exact(columns["chosen"], columns["alone"]).p_value
        for b in ("own", "soup", "greedy", "alone"):
            if b in iv:
                baselines[b]["targets"][t] = {"accuracy": iv[b].accuracy, "ci_low": iv[b].low, "ci_high": iv[b].high}
    baselines["own"].update(label="each target's own adapter", members=targets)
    if baselines["alone"]["targets"]:
        baselines["alone"].update(label=specs["alone"].label(), members=list(specs["alone"].members))
    else:
        baselines.pop("alone")
    baselines["soup"].update(label=specs["soup"].label(), members=list(specs["soup"].members))
    if names["greedy"]:
        baselines["greedy"].update(label=specs[greedy].label(), members=list(specs[greedy].members))
    else:
        baselines.pop("greedy")
    return {
        "split": "test", "confidence": CONFIDENCE, "when_tied": rule,
        "best_run_id": runs["best"].info.run_id, "chosen_run_id": runs[chosen].info.run_id,
        "chosen_baseline": chosen if chosen in ONE_BODY_BASELINES else None,
        "chosen_label": chosen_spec.label(), "chosen_members": list(chosen_spec.members), "chosen_k": chosen_spec.k,
        "targets": per_target,
        "test_accuracy_mean": sum(v["accuracy"] for v in per_target.values()) / len(per_target),
        "baselines": baselines, "validation": validation, "notes": notes,
    }


def baseline_choice_note(name: str, best, baseline, lead: Mapping, rule: str) -> str:
    """The summary's sentence when a one-body baseline is exported instead of the searched mixtures
    (``lead``: the searched best's validation lead over it, negative when the baseline leads)."""
    behind = {"lead": -lead["lead"], "low": -lead["high"], "high": -lead["low"], "n": lead["n"]}
    why = ("it leads the searched best beyond the validation interval" if lead["high"] < 0 else
           f"it is tied with the searched best on validation and scored higher, and search.when_tied is {rule}")
    return (f"Exported {BASELINE_WORDS[name]} ({baseline.label()}), a baseline the search scored itself, not one of "
            f"the searched mixtures: its validation lead over the searched best {best.label()} is {_interval(behind)}; "
            f"{why}.")


def confirmation_metrics(record: Mapping) -> dict[str, float]:
    """The confirmation run's MLflow metrics.

    The chosen mixture: ``test_accuracy/<t>``, ``test_ci_low/<t>``, ``test_ci_high/<t>``,
    ``p_vs_own/<t>``, ``test_n/<t>``, ``test_accuracy_mean``. Each baseline with its prefix
    (``own_``, ``soup_``, ``greedy_``, ``alone_``: the targets alone with the search's head
    protocol, when the search evaluated them): ``<prefix>test_accuracy/<t>``, ``<prefix>test_ci_low/<t>``,
    ``<prefix>test_ci_high/<t>``. With the black-box attack on, ``<prefix>bb_test_robust_accuracy/<t>``,
    ``<prefix>bb_test_ci_low/<t>``, ``<prefix>bb_test_ci_high/<t>`` (no prefix: the chosen mixture) and the
    attacked rows ``bb_test_n/<t>``. Validation leads: ``val_lead_vs_runner_up`` (+ ``_low``,
    ``_high``), ``val_lead_vs_own/<t>`` (+ ``val_lead_vs_own_low/<t>``, ``..._high/<t>``), and over
    each one-body baseline that competed for the export: ``val_lead_vs_soup``, ``val_lead_vs_ties_of_all``
    (+ ``_low``, ``_high``; negative: the baseline leads).
    """
    m: dict[str, float] = {"test_accuracy_mean": record["test_accuracy_mean"]}
    for t, v in record["targets"].items():
        m.update({f"test_accuracy/{t}": v["accuracy"], f"test_ci_low/{t}": v["ci_low"],
                  f"test_ci_high/{t}": v["ci_high"], f"p_vs_own/{t}": v["p_vs_own"], f"test_n/{t}": v["n"]})
        if "p_vs_alone" in v:
            m[f"p_vs_alone/{t}"] = v["p_vs_alone"]
    for b, base in record["baselines"].items():
        for t, v in base["targets"].items():
            m.update({f"{b}_test_accuracy/{t}": v["accuracy"], f"{b}_test_ci_low/{t}": v["ci_low"],
                      f"{b}_test_ci_high/{t}": v["ci_high"]})
    for b, per_target in record.get("blackbox", {}).items():
        prefix = "" if b == "chosen" else f"{b}_"
        for t, v in per_target.items():
            m.update({f"{prefix}bb_test_robust_accuracy/{t}": v["accuracy"], f"{prefix}bb_test_ci_low/{t}": v["ci_low"],
                      f"{prefix}bb_test_ci_high/{t}": v["ci_high"], "bb_test_n/" + t: v["n"]})
    ru = record["validation"]["vs_runner_up"]
    if ru is not None:
        m.update({"val_lead_vs_runner_up": ru["lead"], "val_lead_vs_runner_up_low": ru["low"],
                  "val_lead_vs_runner_up_high": ru["high"]})
    for t, v in record["validation"]["vs_own"].items():
        m.update({f"val_lead_vs_own/{t}": v["lead"], f"val_lead_vs_own_low/{t}": v["low"],
                  f"val_lead_vs_own_high/{t}": v["high"]})
    for b, v in record["validation"].get("vs_baselines", {}).items():
        m.update({f"val_lead_vs_{b}": v["lead"], f"val_lead_vs_{b}_low": v["low"], f"val_lead_vs_{b}_high": v["high"]})
    return m


def blackbox_measure(correct: Mapping, chosen: str, targets: Sequence[str], *, seed: int) -> dict:
    """Black-box robust accuracy on the attacked test rows (``search.blackbox_attack``): the chosen
    mixture and each baseline attacked on test (own, soup, greedy, alone), per target, with 95%
    paired bootstrap intervals (every candidate is attacked on the same rows).
    Returns candidate -> target -> {accuracy, ci_low, ci_high, n}."""
    out: dict[str, dict] = {}
    for t in targets:
        named = [(chosen, "chosen"), (f"own/{t}", "own"), ("soup", "soup"), ("alone", "alone")]
        named += [(n, "greedy") for n in correct if n.startswith("greedy/")]
        columns = {label: correct[name][BLACKBOX_TEST][t] for name, label in named
                   if (label == "chosen" or name != chosen) and t in correct.get(name, {}).get(BLACKBOX_TEST, {})}
        for label, iv in paired_bootstrap(columns, confidence=CONFIDENCE, seed=seed).items():
            out.setdefault(label, {})[t] = {"accuracy": iv.accuracy, "ci_low": iv.low, "ci_high": iv.high, "n": iv.n}
    return out


def confirmation_lines(record: Mapping) -> list[str]:
    """The summary's lines: test accuracy with its interval per target, beside the baselines; then the notes."""
    lines = [f"confirmed on the test split (95% paired bootstrap intervals; McNemar vs the target's own adapter): "
             f"{record['chosen_label']}"]
    for t, v in record["targets"].items():
        parts = [f"  {t}: chosen {v['accuracy']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"]
        for b, base in record["baselines"].items():
            if t in base["targets"]:
                bv = base["targets"][t]
                parts.append(f"{b} {bv['accuracy']:.3f} [{bv['ci_low']:.3f}, {bv['ci_high']:.3f}]")
        parts.append(f"p vs own {v['p_vs_own']:.3g} (n {v['n']})")
        lines.append(", ".join(parts))
        if t in record.get("blackbox", {}).get("chosen", {}):
            lines.append(f"  {t} under the black-box attack: " + ", ".join(
                f"{b} {bv[t]['accuracy']:.3f} [{bv[t]['ci_low']:.3f}, {bv[t]['ci_high']:.3f}]"
                for b, bv in record["blackbox"].items() if t in bv) + f" (n {record['blackbox']['chosen'][t]['n']})")
    lines.extend(record["notes"])
    return lines


def record_from_run(run) -> dict:
    """The essentials of a confirmation record, read back from its MLflow run (``signmix results``, export)."""

    m, tags, p = run.data.metrics, run.data.tags, run.data.params
    targets = sorted(k.split("/", 1)[1] for k in m if k.startswith("test_accuracy/"))
    record = {"split": "test", "confidence": float(p.get("confidence", CONFIDENCE)), "when_tied": tags.get(RULE_TAG),
              "best_run_id": tags.get(BEST_TAG), "chosen_run_id": tags.get(CHOSEN_TAG),
              "chosen_label": p.get("chosen_members", "").replace(",", "+"),
              "chosen_members": p.get("chosen_members", "").split(","),
              "targets": {t: {"accuracy": m[f"test_accuracy/{t}"], "ci_low": m[f"test_ci_low/{t}"],
                              "ci_high": m[f"test_ci_high/{t}"], "p_vs_own": m[f"p_vs_own/{t}"],
                              "n": int(m.get(f"test_n/{t}", 0)),
                              **({"p_vs_alone": m[f"p_vs_alone/{t}"]} if f"p_vs_alone/{t}" in m else {})}
                          for t in targets},
              "test_accuracy_mean": m.get("test_accuracy_mean"), "baselines": {},
              "chosen_baseline": p.get("chosen_baseline") or None,
              "notes": [n for n in tags.get(NOTES_TAG, "").split(" | ") if n], "mlflow_run_id": run.info.run_id}
    for b in ("own", "soup", "greedy", "alone"):
        per = {t: {"accuracy": m[f"{b}_test_accuracy/{t}"], "ci_low": m[f"{b}_test_ci_low/{t}"],
                   "ci_high": m[f"{b}_test_ci_high/{t}"]} for t in targets if f"{b}_test_accuracy/{t}" in m}
        if per:
            record["baselines"][b] = {"members": p.get(f"{b}_members", "").split(",") if f"{b}_members" in p else [],
                                      "targets": per}
    for b in ("chosen", "own", "soup", "greedy", "alone"):
        prefix = "" if b == "chosen" else f"{b}_"
        per = {t: {"accuracy": m[f"{prefix}bb_test_robust_accuracy/{t}"], "ci_low": m[f"{prefix}bb_test_ci_low/{t}"],
                   "ci_high": m[f"{prefix}bb_test_ci_high/{t}"], "n": int(m.get(f"bb_test_n/{t}", 0))}
               for t in targets if f"{prefix}bb_test_robust_accuracy/{t}" in m}
        if per:
            record.setdefault("blackbox", {})[b] = per
    return record


def trust_lines(summary) -> list[str]:
    """What a search summary adds about trust: small validation sets, the FSD gate, ties, the test split."""
    lines = [f"warning: {w}" for w in summary.validation_warnings]
    if getattr(summary, "singles", ""):
        lines.append(summary.singles)
    if summary.fsd_gate:
        lines.append(f"{summary.fsd_gate_label} ({summary.fsd_gate_decision}): {summary.fsd_gate}")
    if summary.confirmation is not None:
        lines.extend(confirmation_lines(summary.confirmation))
    return lines


def confirmation_table(record: Mapping) -> str:
    """A table of test accuracies with 95% intervals: the chosen mixture and each baseline, per target."""

    rows = []
    for t, v in record["targets"].items():
        rows.append([f"chosen: {record['chosen_label']}", t, f"{v['accuracy']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]",
                     f"{v['p_vs_own']:.3g}"])
        for b, base in record["baselines"].items():
            if t in base["targets"]:
                bv = base["targets"][t]
                name = f"{b}: {'+'.join(base['members'])}" if b != "own" else f"own: {t}"
                rows.append([name, t, f"{bv['accuracy']:.3f} [{bv['ci_low']:.3f}, {bv['ci_high']:.3f}]", "-"])
    return format_table(rows, ["mixture", "target", "test accuracy [95% CI]", "McNemar p vs own"])
