"""``run_plan``: the serving plan of a config, searched, confirmed on test and recorded in MLflow.

1. One Ray trial scores, example by example, each own adapter with its trained head and with a
   refit head (the bound under both protocols), the soup and TIES of all, and (for
   ``plan.compatibility: cross_heads``) each adapter under every other domain's head; with
   ``activation_fsd`` (the default) one probe pass per adapter gives the distances instead.
2. :class:`search.plan.planner.PlanSearch` finds the best plan per number of bodies; each
   group's body is a small search (:class:`search.plan.bodies.BodySearch`), once per group.
3. Each merged group of the front is served in every ``plan.serving_options`` (the plain body,
   per-domain output rescalers, EMR masks + rescalers, TALL masks; one Ray trial per group,
   :mod:`search.plan.group_serving`), chosen on validation, and each group picks one
   (:func:`search.plan.serving_choice.choose_group_option`: every domain within the floor, then
   the fewest bytes within the tolerance).
4. The chosen plan: the fewest bodies (then bytes) within ``plan.tolerance`` of the bound on
   validation with no domain more than ``plan.max_domain_loss`` below its own adapter (or the
   best of at most ``plan.max_bodies``); every plan of the front is scored on the test split,
   with stratified 95% intervals and, per domain, a paired 95% interval against its own adapter.
5. MLflow: one run tagged ``signmix.kind = plan``, the parent of its group searches, whose
   description and tags (``signmix.body_<i>``) say which domains share which body, with the table (``plan/plan_front.csv``),
   the figure (``plan/plan_front.png``) and ``plan/plan.json`` (what the bundle and a re-run need).
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

from search.runtime.cluster import check_cluster_storage, connect_ray
from search.runtime.stopwatch import Stopwatch, part_key, time_lines
from search.settings.config import Config, updated
from search.workflows.baselines import TIES_OF_ALL
from search.workflows.conflict_measures import check_measures, conflict_measures
from search.plan.bodies import BodySearch, accuracy, baseline_candidates, correctness, group_name, own_spec
from search.plan.compatibility import cross_head_distances, fsd_distances
from search.plan.figure import draw_plan_front
from search.plan.front import FrontPoint, choose_plan, front_points, mean_accuracy_interval
from search.plan.group_serving import score_serving
from search.plan.planner import PlanSearch
from search.plan.serving_choice import choose_group_option
from search.plan.serving_choice import worst_domain as worst_on_validation
from search.tracking.tables import format_table, write_csv
from search.tracking.layout import KIND_TAG, NOTE_TAG, PLAN_ARTIFACT, logged_value
from search.tracking.tracker import open_config_experiment
from search.runtime.trial_inputs import shared_initialisation
from spaces.errors import StoreError, UsageError
from trainables.significance import paired_difference
from trainables.store import load_sign_index

logger = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
TABLE_FILE = "plan_front.csv"
FIGURE_FILE = "plan_front.png"
TABLE_HEADER = ["bodies", "groups", "serving", "validation", "worst_domain", "worst_loss", "bytes", "test", "test_low",
                "test_high", "test_significantly_worse", "pareto", "chosen"]


@dataclass
class PlanOutcome:
    record: dict  # what plan.json holds
    table: list[list]  # rows of TABLE_HEADER
    run_id: str
    seconds: float


def check_plan_domains(cfg: Config) -> list[str]:
    """The plan's domains (at least 2 with data), or a usage error that says how to get them."""
    domains = cfg.plan_domains
    if len(domains) < 2:
        raise UsageError(f"a plan serves at least 2 domains with data, but this config has {domains or 'none'}; "
                         "add domains with data (domains.<name>.path) or name 2 or more in plan.domains")
    return domains


def preflight_config(cfg: Config) -> Config:
    """``cfg`` as the checks before a search see a plan: every plan domain a target, heads refit
    (the refit bound needs each domain's training split); the serving options left to their default
    (masks and rescalers need trained heads, which the checks do not read)."""
    return updated(cfg, search=updated(cfg.search, targets=check_plan_domains(cfg), head="refit", max_members=None),
                   plan=updated(cfg.plan, serving_options=None))


def _with_ties(cfg: Config) -> Config:
    methods = list(dict.fromkeys([*cfg.search.merge_methods, "ties"]))
    return updated(cfg, search=updated(cfg.search, merge_methods=methods))


def run_plan(cfg: Config, *, progress: Callable[[str], None] = logger.info, debug: bool = False) -> PlanOutcome:
    """Search, choose and confirm the serving plan of ``cfg``; record it in MLflow."""
    started = time.perf_counter()
    domains = check_plan_domains(cfg)
    check_cluster_storage(cfg)
    if cfg.plan.compatibility == "activation_fsd":  # a probe split a domain lacks stops here, before any run
        check_measures(probe_config(cfg), ["activation_fsd"], targets=domains)
    weights, index = load_sign_index(cfg.store_path, cfg.member_domains)
    try:  # TIES of all needs the shared initialisation, which imported adapters lack
        shared_initialisation(_with_ties(cfg), weights)
        ties = True
    except StoreError as exc:
        progress(f"plan: no TIES of all ({str(exc).splitlines()[0]})")
        ties = False
    connect_ray(cfg, debug=debug)
    client, experiment_id = open_config_experiment(cfg)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run = client.create_run(experiment_id, run_name=f"plan-{stamp}", tags={KIND_TAG: "plan"})
    run_id = run.info.run_id
    budget = cfg.plan.group_evaluations or 4 * len(domains)
    client.log_batch(run_id, params=_params(cfg, domains, budget))
    try:
        outcome = _plan(cfg, domains, weights, index, budget, ties, client, experiment_id, run_id, stamp, progress,
                        debug)
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    outcome.seconds = time.perf_counter() - started
    outcome.record["seconds"] = outcome.seconds
    _log(client, run_id, outcome, experiment_id)
    client.set_terminated(run_id, "FINISHED")
    return outcome


def _params(cfg: Config, domains, budget: int) -> list:
    from mlflow.entities import Param

    values = {"domains": ",".join(domains), "tolerance": cfg.plan.tolerance, "max_bodies": cfg.plan.max_bodies,
              "max_domain_loss": cfg.plan.max_domain_loss, "serving_options": ",".join(cfg.plan_serving_options),
              "group_evaluations_budget": budget, "mixtures_per_group": cfg.plan.mixtures_per_group,
              "transfer": cfg.plan.transfer, "parallel_groups": cfg.plan.parallel_groups,
              "compatibility": cfg.plan.compatibility, "probe_size": cfg.plan.probe_size, "head": cfg.search.head,
              "merge_methods": ",".join(cfg.search.merge_methods), "strategy": cfg.search.strategy}
    return [Param(k, str(v)) for k, v in values.items()]


def probe_config(cfg: Config) -> Config:
    """``cfg`` as the plan's probe passes read it: ``plan.probe_size`` rows of each plan domain."""
    return updated(cfg, search=updated(cfg.search, probe_size=cfg.plan.probe_size))


def plan_distances(cfg: Config, domains, val: Mapping[str, Mapping[str, float]], index, *,
                   progress: Callable[[str], None] = logger.info, debug: bool = False) -> dict[tuple[str, str], float]:
    """The pairwise distances the plan starts from (``plan.compatibility``, search/plan/compatibility.py).

    ``val``: candidate -> domain -> validation accuracy of the baselines' trial (``own/<d>`` and,
    for ``cross_heads``, ``cross/<a>``); ``index``: the store's sign index (``fsd``). The
    ``activation_fsd`` probe passes are read from the store's measures cache when an earlier plan,
    search or ``signmix fsd`` of the same adapters and probe made them."""
    measure = cfg.plan.compatibility
    if measure == "cross_heads":
        return cross_head_distances({d: val[f"own/{d}"][d] for d in domains},
                                    {(a, b): val[f"cross/{a}"][b] for a in domains for b in domains if a != b})
    if measure == "activation_fsd":
        matrix = conflict_measures(probe_config(cfg), ["activation_fsd"], targets=domains, progress=progress,
                                   debug=debug)["activation_fsd"]
        names, rows = list(matrix.names), matrix.matrix
    else:
        names, rows = list(index.names), index.matrix
    sub = [names.index(d) for d in domains]
    return fsd_distances(domains, [[float(rows[i, j]) for j in sub] for i in sub])


def _plan(cfg, domains, weights, index, budget, ties, client, experiment_id, run_id, stamp, progress,
          debug) -> PlanOutcome:
    head = cfg.search.head
    clock = Stopwatch()
    progress(f"plan: {len(domains)} domains; the bound (own adapters, trained and refit heads), soup and TIES of all"
             + (", cross heads" if cfg.plan.compatibility == "cross_heads" else "") + " in one trial")
    with clock.part("baselines"):
        base = correctness(cfg, baseline_candidates(cfg, domains, cross_heads=cfg.plan.compatibility == "cross_heads",
                                                    ties=ties), weights, name=f"{cfg.name}-plan-baselines-{stamp}",
                           progress=progress, count_rows=lambda rows: clock.add_rows("baselines", rows))
    val = {name: {d: accuracy(v) for d, v in c.get("validation", {}).items()} for name, c in base.items()}
    singles = {d: val[f"{head}/{d}"][d] for d in domains}  # a group of one: its own adapter, same protocol
    with clock.part(f"distances ({cfg.plan.compatibility})"):
        distances = plan_distances(cfg, domains, val, index, progress=progress, debug=debug)
    bodies = BodySearch(cfg, plan_run_id=run_id, client=client, experiment_id=experiment_id, progress=progress,
                        debug=debug)
    with clock.part("group searches"):
        search = PlanSearch(domains=domains, distances=distances, singles=singles, score_group=bodies,
                            budget=budget, max_domain_loss=cfg.plan.max_domain_loss, batch=cfg.plan.parallel_groups,
                            score_groups=bodies.score_groups).run(progress)
    validation_rows = {d: len(base[f"{head}/{d}"]["validation"][d]) for d in domains}
    # a group search scores each mixture on every member's whole validation split
    clock.add_rows("group searches", sum(n * sum(validation_rows[d] for d in g) for g, n in bodies.evaluated.items()))
    merged = sorted({g for p in search.best.values() for g in p if len(g) > 1})
    options = cfg.plan_serving_options
    init = shared_initialisation(_with_ties(cfg), weights) if ties else None
    if options != ["plain"] and init is None:
        progress("plan: the serving options other than the plain body need the adapters' shared initialisation, "
                 "which this store lacks: plain bodies only")
        options = ["plain"]
    with clock.part("serving options"):
        served = (score_serving(cfg, {g: bodies.bodies[g].spec for g in merged}, weights, init, options=options,
                                name=f"{cfg.name}-plan-serving-{stamp}", progress=progress)
                  if merged and options != ["plain"] else {})
    numel = sum(int(t.numel()) for t in weights[domains[0]].values())
    serving = {g: _group_serving(cfg, g, served.get(g), search.groups[g], singles, numel) for g in merged}
    for g in merged:
        s = serving[g]
        progress(f"plan: {group_name(g)} served {s['option']} ({s['why']})")

    def val_by_domain(partition) -> dict[str, float]:
        out = {}
        for g in partition:
            out.update({g[0]: singles[g[0]]} if len(g) == 1 else serving[g]["validation_by_domain"])
        return out

    def mean(acc: Mapping[str, float]) -> float:
        return sum(acc[d] for d in domains) / len(domains)

    best = search.best
    values = {p: mean(val_by_domain(p)) for p in best.values()}
    worst = {p: worst_on_validation(val_by_domain(p), singles) for p in best.values()}
    sizes = {p: sum(4 * numel + (serving[g]["extra_bytes"] if len(g) > 1 else 0) for g in p) for p in best.values()}
    kinds = {p: [serving[g]["option"] if len(g) > 1 else "own" for g in p] for p in best.values()}
    points = front_points(best, values, worst, sizes, kinds)
    for point in points:
        progress(f"plan: G={point.bodies} {point.accuracy:.4f} on validation, worst domain {point.worst_domain} "
                 f"{-100 * point.worst_loss:+.1f} points, {point.bytes:,} bytes ({', '.join(point.serving)})")
    bound_val = search.value(tuple((d,) for d in domains))
    chosen, why = choose_plan(points, bound=bound_val, tolerance=cfg.plan.tolerance, max_bodies=cfg.plan.max_bodies,
                              max_domain_loss=cfg.plan.max_domain_loss)
    progress(f"plan: chosen {why}; confirming the front on the test split")
    plain_groups = {g for p in points for g in p.partition if len(g) > 1 and g not in served}
    test_cands = {f"group/{group_name(g)}": (bodies.bodies[g].spec, ["test"]) for g in sorted(plain_groups)}
    with clock.part("the front on test"):
        tested = (correctness(cfg, test_cands, weights, name=f"{cfg.name}-plan-test-{stamp}", progress=progress,
                              count_rows=lambda rows: clock.add_rows("the front on test", rows))
                  if test_cands else {})
    clock.add_rows("the front on test", 0)  # the front may have nothing left to score

    def test_correct(partition) -> dict[str, list[int]]:
        out = {}
        for g in partition:
            if len(g) == 1:
                out[g[0]] = base[f"{head}/{g[0]}"]["test"][g[0]]
            elif g in served:
                out.update({d: served[g][serving[g]["option"]][d].correct["test"] for d in g})
            else:
                out.update({d: tested[f"group/{group_name(g)}"]["test"][d] for d in g})
        return out

    seed = cfg.search.seed
    rows, table = [], []
    for p in points:
        correct = test_correct(p.partition)
        iv = mean_accuracy_interval(correct, seed=seed)
        against = {d: paired_difference(correct[d], base[f"{head}/{d}"]["test"][d], seed=seed) for d in domains}
        worse = [d for d in domains if against[d].high < 0]
        rows.append({"bodies": p.bodies, "validation": p.accuracy, "test": iv.accuracy, "test_low": iv.low,
                     "test_high": iv.high, "pareto": p.pareto, "chosen": p.bodies == chosen.bodies,
                     "groups": [list(g) for g in p.partition], "serving": list(p.serving),
                     "worst_domain": p.worst_domain, "worst_loss": p.worst_loss, "bytes": p.bytes,
                     "test_by_domain": {d: accuracy(v) for d, v in correct.items()},
                     "validation_by_domain": val_by_domain(p.partition),
                     "test_vs_own": {d: {"lead": a.lead, "low": a.low, "high": a.high} for d, a in against.items()},
                     "test_significantly_worse": worse})
        table.append([p.bodies, " | ".join(group_name(g) for g in p.partition), " | ".join(p.serving), p.accuracy,
                      p.worst_domain, p.worst_loss, p.bytes, iv.accuracy, iv.low, iv.high, ",".join(worse), p.pareto,
                      p.bodies == chosen.bodies])
    references = _references(base, domains, ties, seed)
    chosen_record = _chosen(chosen, bodies, rows, head, serving)
    chosen_record["worst_domain"] = worst_domain(chosen_record, references, head)
    record = {
        "plan_run_id": run_id, "experiment": cfg.experiment_name, "domains": domains, "head": head,
        "tolerance": cfg.plan.tolerance, "max_bodies": cfg.plan.max_bodies, "why": why,
        "max_domain_loss": cfg.plan.max_domain_loss, "serving_options": options, "adapter_bytes": 4 * numel,
        "serving": {group_name(g): s for g, s in serving.items()},
        "group_evaluations": search.evaluations, "group_evaluations_budget": budget,
        "group_searches_reused": len(bodies.reused),
        "operators": bodies.operators.table() if bodies.operators else None,
        "compatibility": cfg.plan.compatibility, "distances": {f"{a},{b}": v for (a, b), v in distances.items()},
        "chosen": chosen_record,
        "front": rows, "references": references,
        "steps": [{"move": s.move, "groups": [list(g) for g in s.partition], "validation": s.accuracy,
                   "new_groups": s.new_groups, "improved": s.improved} for s in search.steps],
        "group_runs": {group_name(g): {"run_id": b.run_id, "search_run_id": b.search_run_id,
                                        "spec": b.spec.to_dict(), "validation": b.accuracy,
                                        "reused": g in bodies.reused}
                       for g, b in sorted(bodies.bodies.items())},
        "config": cfg.model_dump(),
        "time_by_part": clock.record(),
    }
    return PlanOutcome(record=record, table=table, run_id=run_id, seconds=0.0)


def _references(base: Mapping, domains, ties: bool, seed: int) -> dict[str, dict]:
    """The bound under both head protocols and the soup and TIES of all, on validation and test."""
    out = {}
    named = {"own adapters, trained heads (bound)": ("own", "line"), "own adapters, refit heads (bound)": ("refit", "line"),
             "soup of all": ("soup", "point")}
    if ties:
        named["TIES of all"] = (TIES_OF_ALL, "point")
    for label, (key, kind) in named.items():
        if key in ("own", "refit"):
            test = {d: base[f"{key}/{d}"]["test"][d] for d in domains}
            val = {d: accuracy(base[f"{key}/{d}"]["validation"][d]) for d in domains}
        else:
            test = base[key]["test"]
            val = {d: accuracy(v) for d, v in base[key]["validation"].items()}
        iv = mean_accuracy_interval(test, seed=seed)
        out[label] = {"kind": kind, "validation": sum(val.values()) / len(val), "test": iv.accuracy,
                      "test_low": iv.low, "test_high": iv.high,
                      "test_by_domain": {d: accuracy(v) for d, v in test.items()}}
    return out


def _group_serving(cfg: Config, group, served, plain: Mapping[str, float], singles: Mapping[str, float],
                   numel: int) -> dict:
    """How a merged group serves its domains: the option it picks and each domain's value and accuracies.

    ``served``: option -> domain -> :class:`trainables.serving_options.DomainServing` (None: only the
    plain body, whose validation accuracies ``plain`` its search gave)."""
    if served is None:
        return {"option": "plain", "why": "the plain body (no other serving option)", "extra_bytes": 0,
                "validation_by_domain": {d: float(plain[d]) for d in group},
                "domains": {d: {"value": 1.0} for d in group}, "options": {}}
    by_option = {o: {d: s.accuracy("validation") for d, s in per.items()} for o, per in served.items()}
    extra = {o: sum(s.extra_bytes for s in per.values()) for o, per in served.items()}
    option, why = choose_group_option(by_option, singles, extra, max_domain_loss=cfg.plan.max_domain_loss,
                                      tolerance=cfg.plan.tolerance, order=list(served))
    options = {}
    for o, acc in by_option.items():
        name, loss = worst_on_validation(acc, singles)
        options[o] = {"validation": sum(acc.values()) / len(acc), "worst_domain": name, "worst_loss": loss,
                      "extra_bytes": extra[o],
                      "test": sum(s.accuracy("test") for s in served[o].values()) / len(acc)
                      if all("test" in s.correct for s in served[o].values()) else None}
    return {"option": option, "why": why, "extra_bytes": extra[option], "validation_by_domain": by_option[option],
            "domains": {d: {"value": s.value, "start": s.start} for d, s in served[option].items()},
            "options": options}


def _chosen(point: FrontPoint, bodies: BodySearch, rows, head: str, serving: Mapping) -> dict:
    row = next(r for r in rows if r["bodies"] == point.bodies)
    groups = []
    for g in point.partition:
        if len(g) == 1:
            groups.append({"domains": list(g), "kind": "own", "spec": own_spec(g[0], head).to_dict()})
        else:
            b = bodies.bodies[g]
            groups.append({"domains": list(g), "kind": "merged", "run_id": b.run_id, "spec": b.spec.to_dict(),
                           "serving": serving[g]["option"], "serving_values": serving[g]["domains"]})
    return {"bodies": point.bodies, "groups": groups, "validation": row["validation"], "test": row["test"],
            "test_low": row["test_low"], "test_high": row["test_high"],
            "worst_validation_domain": row["worst_domain"], "worst_validation_loss": row["worst_loss"],
            "bytes": row["bytes"],
            "test_significantly_worse": row["test_significantly_worse"], "test_vs_own": row["test_vs_own"],
            "validation_by_domain": row["validation_by_domain"], "test_by_domain": row["test_by_domain"]}


def worst_domain(chosen: dict, references: Mapping[str, dict], head: str) -> dict:
    """The domain the chosen plan costs most on test against its own adapter (under the plan's head
    protocol): ``{"domain", "loss", "own", "plan"}``; a negative loss is a gain for every domain."""
    own = references["own adapters, refit heads (bound)" if head == "refit" else
                     "own adapters, trained heads (bound)"]["test_by_domain"]
    losses = {d: own[d] - acc for d, acc in chosen["test_by_domain"].items()}
    domain = max(sorted(losses), key=lambda d: losses[d])
    return {"domain": domain, "loss": losses[domain], "own": own[domain], "plan": chosen["test_by_domain"][domain]}


BODY_TAG = "signmix.body_{}"  # the plan run's tag per chosen body: its domains joined by "+", and its kind


def plan_description(rec: dict, experiment_id: str) -> str:
    """The plan run's description (markdown, shown on its page): the chosen bodies and their domains,
    linked to their group searches; the test accuracy; the worst domain's loss."""
    chosen, worst = rec["chosen"], rec["chosen"]["worst_domain"]
    rows = []
    for i, g in enumerate(chosen["groups"], 1):
        name = group_name(g["domains"])
        if g["kind"] == "merged":
            search = rec["group_runs"][name]["search_run_id"]
            where = f"[plan-group {name}](#/experiments/{experiment_id}/runs/{search})"
            kind = f"merged ({g['spec'].get('merge_method', 'average')})"
        else:
            where, kind = "-", "own adapter"
        rows.append(f"| {i} | {', '.join(g['domains'])} | {kind} | {where} |")
    return "\n".join([
        f"**Serving plan** for {len(rec['domains'])} domains ({rec['head']} heads): **{chosen['bodies']} "
        f"bodies** chosen, {rec['why']}.", "",
        "| body | domains | body is | searched in |", "|---|---|---|---|", *rows, "",
        f"Test accuracy {chosen['test']:.4f} [{chosen['test_low']:.4f}, {chosen['test_high']:.4f}] (mean over "
        f"domains, 95% interval); validation {chosen['validation']:.4f}.", "",
        f"Worst domain against its own adapter: **{worst['domain']}** "
        + (f"loses {worst['loss']:.4f}" if worst["loss"] > 0 else f"gains {-worst['loss']:.4f}")
        + f" on test ({worst['plan']:.4f} against {worst['own']:.4f}).", "",
        "Every number of bodies G: metrics `test_accuracy/G<G>`; the table, figure and `plan.json` are the "
        "artifacts under `plan/`; `signmix export CONFIG --plan --out bundle/` ships the chosen plan."])


def _log(client, run_id: str, outcome: PlanOutcome, experiment_id: str) -> None:
    """Metrics per number of bodies, tags per chosen body, the description, and the table, figure
    and plan.json as artifacts under ``plan/``."""
    from mlflow.entities import Metric, RunTag

    rec, ts = outcome.record, int(time.time() * 1000)
    chosen = rec["chosen"]
    metrics = {"group_evaluations": rec["group_evaluations"], "plan_seconds": outcome.seconds,
               "chosen_bodies": chosen["bodies"], "chosen_test_accuracy": chosen["test"],
               "chosen_test_ci_low": chosen["test_low"], "chosen_test_ci_high": chosen["test_high"],
               "chosen_validation_accuracy": chosen["validation"],
               "worst_domain_test_loss": chosen["worst_domain"]["loss"]}
    metrics.update({f"seconds_{part_key(name)}": p["seconds"] for name, p in rec.get("time_by_part", {}).items()})
    for r in rec["front"]:
        g = r["bodies"]
        metrics.update({f"validation_accuracy/G{g}": r["validation"], f"test_accuracy/G{g}": r["test"],
                        f"worst_domain_loss/G{g}": r["worst_loss"],
                        f"test_significantly_worse/G{g}": len(r["test_significantly_worse"]),
                        f"test_ci_low/G{g}": r["test_low"], f"test_ci_high/G{g}": r["test_high"]})
    for label, ref in rec["references"].items():
        key = label.split(" (")[0].replace(" ", "_").replace(",", "")
        metrics[f"{key}_test_accuracy"] = ref["test"]
    tags = {BODY_TAG.format(i): f"{group_name(g['domains'])} ({g['kind']})" for i, g in enumerate(chosen["groups"], 1)}
    tags.update({"signmix.worst_domain": chosen["worst_domain"]["domain"], NOTE_TAG: plan_description(rec, experiment_id)})
    client.log_batch(run_id, metrics=[Metric(k, logged_value(k, v), ts, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()])
    with tempfile.TemporaryDirectory(prefix="signmix-plan-") as tmp:
        folder = Path(tmp) / PLAN_ARTIFACT
        folder.mkdir()
        write_csv(folder / TABLE_FILE, TABLE_HEADER, outcome.table)
        draw_plan_front(folder / FIGURE_FILE, rec["front"], rec["references"], chosen=rec["chosen"]["bodies"],
                        title=f"serving plans for {len(rec['domains'])} domains ({rec['head']} heads)")
        (folder / PLAN_FILE).write_text(json.dumps(rec, indent=2), encoding="utf-8")
        client.log_artifacts(run_id, str(folder), PLAN_ARTIFACT)


def plan_lines(outcome: PlanOutcome) -> list[str]:
    """The plan's summary for the command line: the front against the references, and the choice."""
    rec = outcome.record
    rows = [[r["bodies"], " | ".join("+".join(g) for g in r["groups"]), " | ".join(r["serving"]), r["validation"],
             f"{r['worst_domain']} {-100 * r['worst_loss']:+.1f}", f"{r['bytes']:,}", r["test"],
             f"[{r['test_low']:.4f}, {r['test_high']:.4f}]", ",".join(r["test_significantly_worse"]) or "none",
             "*" if r["chosen"] else ""] for r in rec["front"]]
    rows += [[label, "", "", ref["validation"], "", "", ref["test"], f"[{ref['test_low']:.4f}, {ref['test_high']:.4f}]",
              "", ""] for label, ref in rec["references"].items()]
    n, g = len(rec["domains"]), rec["chosen"]["bodies"]
    chosen = rec["chosen"]
    worse = chosen["test_significantly_worse"]
    lines = [format_table(rows, ["bodies", "groups", "serving", "validation", "worst domain (points)", "bytes", "test",
                                 "test 95% interval", "worse than own (test)", "chosen"]), "",
             f"chosen: {rec['why']}",
             f"served: {g} adapter bodies + {n} heads instead of {n} adapters ({n - g} fewer bodies, "
             f"{chosen['bytes']:,} bytes against {n * rec['adapter_bytes']:,}); test accuracy {chosen['test']:.4f} "
             f"[{chosen['test_low']:.4f}, {chosen['test_high']:.4f}]",
             f"worst domain on validation: {chosen['worst_validation_domain']} "
             f"{-100 * chosen['worst_validation_loss']:+.1f} points against "
             f"its own adapter; on test, significantly worse than its own adapter (paired 95% interval below 0): "
             + (", ".join(f"{d} {100 * chosen['test_vs_own'][d]['lead']:+.1f} [{100 * chosen['test_vs_own'][d]['low']:+.1f}, "
                          f"{100 * chosen['test_vs_own'][d]['high']:+.1f}]" for d in worse) or "none"),
             f"{rec['group_evaluations']} group evaluations (budget {rec['group_evaluations_budget']}; "
             f"{rec['group_searches_reused']} reused from earlier plans) in "
             f"{outcome.seconds:.0f}s; MLflow run {outcome.run_id}; export it with "
             f"`signmix export CONFIG --plan --out bundle/`",
             "where the time went:", *time_lines(rec.get("time_by_part", {}), outcome.seconds)]
    return lines
