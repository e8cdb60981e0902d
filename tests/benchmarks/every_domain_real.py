"""Every domain served as well as its own adapter? Fixed plans of the 16 real domains, with masks and rescalers (issue 29).

Reads the 16 MiniLM-L6 ``seq_bn`` adapters (12 reviews + CR, MPQA, SUBJ, TREC) that
``tests/benchmarks/plan_real.py`` trains into ``.bench/plan-real/adapters`` and, without a plan
search (a 16-domain plan is about 50 minutes on 2 cores), evaluates fixed partitions, each
group one TIES body (density 0.2; λ 1 for all 16, the G = 1 body the plan chose in BENCHMARKS
"Serving plans", λ 1.5 for every smaller group, the choice with the lowest mean regret in that
plan's transfer record and the 12-review plan's choice):

- G = 1: all 16; G = 2: the 12 reviews + CR + MPQA | SUBJ + TREC (the plan's G = 2, run B);
- G = 3: the 12 reviews | CR + MPQA | SUBJ + TREC; the 12 reviews alone at G = 1 (its group is G = 3's);

each served in every option of :mod:`trainables.serving_options` (plain; per-domain output
rescalers; EMR masks + rescalers; TALL masks), the rescalers and lambdas chosen on each
domain's validation split, and the plan's per-group choice (:func:`search.plan.serving_choice.choose_group_option`,
floor 1 point, tolerance 1 point). Reported on TEST: mean accuracy with its stratified 95%
interval, the worst domain's loss against its own adapter, the domains significantly worse
than their own adapter (paired bootstrap, 95% interval below 0), bytes against the 16 adapters.

One process, one model (no Ray): each distinct group is scored once (the SUBJ + TREC group
serves G = 2 and 3, the 12 reviews G = 3 and the reviews' G = 1), the small groups first;
results are kept per group and option in ``--out`` (a re-run goes on where a stopped one ended), and
``--report-only`` tables what finished. Run once, alone:
``make every-domain-real``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
REVIEWS = ("baby", "books", "camera_photo", "dvd", "electronics", "health_personal_care", "imdb", "kitchen",
           "magazines", "sports_outdoors", "toys_games", "video")
TASKS = ("cr", "mpqa", "subj", "trec")
GROUPS = {  # name -> (domains, TIES lambda), in the order they are scored: the small groups first, so that
    # G = 3 and the reviews' G = 1 are complete soonest, then G = 2, then G = 1
    "subj+trec": (("subj", "trec"), 1.5),
    "cr+mpqa": (("cr", "mpqa"), 1.5),
    "reviews12": (REVIEWS, 1.5),
    "reviews12+cr+mpqa": (REVIEWS + ("cr", "mpqa"), 1.5),
    "all16": (REVIEWS + TASKS, 1.0),
}
PLANS = {  # what the table reports: name -> its groups
    "G=1, all 16": ["all16"],
    "G=2, reviews+CR+MPQA | SUBJ+TREC": ["reviews12+cr+mpqa", "subj+trec"],
    "G=3, reviews | CR+MPQA | SUBJ+TREC": ["reviews12", "cr+mpqa", "subj+trec"],
    "12 reviews, G=1": ["reviews12"],
}
DENSITY = 0.2
GOAL = ("at most 3 bodies (masks allowed), no domain significantly worse than its own adapter on test, "
        "the worst domain at most 1 point below it, the mean at or above the 16 own adapters' (trained heads)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / ".bench" / "plan-real" / "reviews12+tasks4.yaml"),
                        help="plan_real.py's config of the 16 domains (its store holds the adapters)")
    parser.add_argument("--out", default=str(ROOT / ".bench" / "every-domain"))
    parser.add_argument("--factors", default="0.75,1,1.5", help="multiples of EMR's formula a rescaler tries")
    parser.add_argument("--lambdas", default="0.2,0.4,0.6", help="TALL lambdas tried")
    parser.add_argument("--max-domain-loss", type=float, default=0.01)
    parser.add_argument("--report-only", action="store_true",
                        help="write the table of what --out holds (a run stopped early), scoring nothing")
    args = parser.parse_args()
    factors = tuple(float(x) for x in args.factors.split(","))
    lambdas = tuple(float(x) for x in args.lambdas.split(","))
    if args.report_only:
        from search.settings.config import load_config
        from trainables.serving_options import adapter_numel
        from trainables.store import AdapterStore

        results = json.loads((Path(args.out) / "results.json").read_text())
        numel = results.get("adapter_numel") or adapter_numel(
            AdapterStore(load_config(args.config).store_path).load_weights(REVIEWS[0]))
        lines = report(results, numel, args.max_domain_loss, factors, lambdas,
                       results.get("own_seconds", 0.0) + sum(v.get("seconds", 0.0) for v in results.values()
                                                             if isinstance(v, dict)))
        (Path(args.out) / "every_domain_real.md").write_text("\n".join(lines), encoding="utf-8")
        print("\n".join(lines), flush=True)
        return

    import torch

    from search.runtime.trial_inputs import shared_initialisation
    from search.settings.config import load_config
    from spaces.spec import make_mixture_spec
    from trainables.evaluate import MixtureModel, encoded_split, predict
    from trainables.mix_and_prune import build_mixture
    from trainables.serving_options import SERVING_OPTIONS, adapter_numel, serve_group
    from trainables.store import AdapterStore, load_sign_index

    started = time.perf_counter()

    def say(line: str) -> None:
        print(f"[{(time.perf_counter() - started) / 60:5.1f} min] {line}", flush=True)

    torch.set_num_threads(2)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_config(args.config)
    domains = sorted(REVIEWS + TASKS)
    weights, _ = load_sign_index(cfg.store_path, domains)
    init = shared_initialisation(cfg, weights)
    experiment = cfg.experiment(targets=domains)
    model = MixtureModel(base_model=cfg.base_model, store=AdapterStore(cfg.store_path), heads=domains, dtype="float32",
                         device="cpu")
    batch = cfg.search.eval_batch_size

    def encoded(domain: str, split: str):
        return encoded_split(experiment, domain, split, model.label_names[domain])

    kept = out / "results.json"
    results = json.loads(kept.read_text()) if kept.is_file() else {}
    if "own" not in results:
        say("own adapters (trained heads) on validation and test")
        own = {}
        for d in domains:
            model.set_weights(weights[d])
            model.use_head(d)
            own[d] = {}
            for split in ("validation", "test"):
                enc = encoded(d, split)
                preds = predict(model.model, enc, batch)
                own[d][split] = [int(preds[r] == enc.labels[r]) for r in range(len(enc))]
        results["own"] = own
        results["own_seconds"] = time.perf_counter() - started
    results["adapter_numel"] = adapter_numel(weights[domains[0]])
    kept.write_text(json.dumps(results))
    for name, (group, lam) in GROUPS.items():
        done = results.setdefault(name, {})
        if all(o in done for o in SERVING_OPTIONS):
            say(f"{name}: kept from an earlier run")
            continue
        group = sorted(group)
        spec = make_mixture_spec(members=group, targets=group, require_targets=False, head="own",
                                 merge_method="ties", density=DENSITY, lam=lam)
        body = build_mixture(weights, spec, init)
        say(f"{name}: {len(group)} domains, TIES density {DENSITY} λ {lam}; scoring {', '.join(SERVING_OPTIONS)}")
        for option in SERVING_OPTIONS:  # kept one option at a time: a stopped run loses at most one
            if option in done:
                continue
            t0 = time.perf_counter()
            served = serve_group(model, body, init, weights, group, encoded=encoded, batch_size=batch,
                                 options=[option], splits=("validation", "test"), factors=factors, lambdas=lambdas,
                                 progress=lambda line: say(f"  {line}"))
            done[option] = {d: s.to_dict() for d, s in served[option].items()}
            done["seconds"] = done.get("seconds", 0.0) + time.perf_counter() - t0
            kept.write_text(json.dumps(results))
        say(f"{name}: done in {done['seconds'] / 60:.1f} min")
    lines = report(results, results["adapter_numel"], args.max_domain_loss, factors, lambdas, time.perf_counter() - started)
    (out / "every_domain_real.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines), flush=True)


def report(results: dict, numel: int, floor: float, factors, lambdas, seconds: float) -> list[str]:
    from search.plan.front import mean_accuracy_interval
    from search.plan.serving_choice import choose_group_option
    from trainables.serving_options import SERVING_OPTIONS
    from trainables.significance import paired_difference

    own = results["own"]
    domains = sorted(own)
    results = {k: v for k, v in results.items()
               if k == "own" or (k in GROUPS and all(o in v for o in SERVING_OPTIONS))}

    def acc(rows):
        return sum(rows) / len(rows)

    own_val = {d: acc(own[d]["validation"]) for d in domains}
    adapter_bytes = 4 * numel
    lines = [f"# Every domain (issue 29): 16 real domains, test split, {seconds / 60:.0f} min", "",
             f"Goal: {GOAL}.", f"Rescalers tried: 1 and EMR's formula x {list(factors)}; TALL lambdas {list(lambdas)}; "
             f"the plan's per-group choice: floor {100 * floor:.0f} point(s), tolerance 1 point.", "",
             "| plan | serving | mean test [95% interval] | worst domain: test loss | significantly worse | "
             "bytes vs 16 adapters | goal |", "|---|---|---|---|---|---|---|"]
    iv = mean_accuracy_interval({d: own[d]["test"] for d in domains})
    own_mean = iv.accuracy
    lines.append(f"| 16 own adapters (trained heads) | | {iv.accuracy:.3f} [{iv.low:.3f}, {iv.high:.3f}] | | | "
                 f"{16 * adapter_bytes:,} (1.00) | |")
    for plan, groups in PLANS.items():
        plan = plan.replace("|", "\\|")
        if not all(g in results for g in groups):
            lines.append(f"| {plan} | not measured (did not finish) | | | | | |")
            continue
        plan_domains = sorted(d for g in groups for d in results[g]["plain"])
        choices = {}
        for g in groups:
            by_option = {o: {d: acc(s["correct"]["validation"]) for d, s in results[g][o].items()}
                         for o in SERVING_OPTIONS}
            extra = {o: sum(s["extra_bytes"] for s in results[g][o].values()) for o in SERVING_OPTIONS}
            choices[g] = choose_group_option(by_option, own_val, extra, max_domain_loss=floor, tolerance=0.01,
                                             order=SERVING_OPTIONS)[0]
        for option in [*SERVING_OPTIONS, "chosen per group"]:
            per_group = {g: (choices[g] if option == "chosen per group" else option) for g in groups}
            correct = {d: results[g][per_group[g]][d]["correct"]["test"] for g in groups for d in results[g]["plain"]}
            iv = mean_accuracy_interval(correct)
            losses = {d: acc(own[d]["test"]) - acc(correct[d]) for d in plan_domains}
            worst = max(plan_domains, key=lambda d: losses[d])
            worse = [d for d in plan_domains if paired_difference(correct[d], own[d]["test"]).high < 0]
            nbytes = sum(adapter_bytes + sum(results[g][per_group[g]][d]["extra_bytes"] for d in results[g]["plain"])
                         for g in groups)
            goal = (len(groups) <= 3 and not worse and losses[worst] <= 0.01 + 1e-12 and iv.accuracy >= own_mean)
            label = option if option != "chosen per group" else \
                "chosen per group (" + ", ".join(per_group[g] for g in groups) + ")"
            lines.append(f"| {plan} | {label} | {iv.accuracy:.3f} [{iv.low:.3f}, {iv.high:.3f}] | {worst} "
                         f"{-100 * losses[worst]:+.1f} | {len(worse)}{' (' + ', '.join(worse) + ')' if worse else ''} | "
                         f"{nbytes:,} ({nbytes / (16 * adapter_bytes):.2f}) | {'met' if goal else 'no'} |")
    lines += ["", "Per group that finished (each group's domains only): mean test accuracy, worst domain's test loss "
              "against its own adapter, domains significantly worse (paired bootstrap), each option's values:", "",
              "| group | serving | mean test | worst domain | significantly worse | chosen values |", "|---|---|---|---|---|---|"]
    for g in GROUPS:
        if g not in results:
            continue
        for option in SERVING_OPTIONS:
            per = results[g][option]
            group = sorted(per)
            mean = sum(acc(per[d]["correct"]["test"]) for d in group) / len(group)
            losses = {d: acc(own[d]["test"]) - acc(per[d]["correct"]["test"]) for d in group}
            worst = max(group, key=lambda d: losses[d])
            worse = [d for d in group if paired_difference(per[d]["correct"]["test"], own[d]["test"]).high < 0]
            values = ", ".join(f"{d} {per[d]['value']:.3g}" for d in group) if option != "plain" else ""
            lines.append(f"| {g} | {option} | {mean:.3f} (own {sum(acc(own[d]['test']) for d in group) / len(group):.3f}) "
                         f"| {worst} {-100 * losses[worst]:+.1f} | {len(worse)}{' (' + ', '.join(worse) + ')' if worse else ''} "
                         f"| {values} |")
    lines += ["", "Per domain, test accuracy of the own adapter and of each serving (the G = 2 plan):", ""]
    g2 = PLANS["G=2, reviews+CR+MPQA | SUBJ+TREC"]
    if all(g in results for g in g2):
        lines += ["| domain | own | " + " | ".join(SERVING_OPTIONS) + " |", "|---" * (2 + len(SERVING_OPTIONS)) + "|"]
        for g in g2:
            for d in sorted(results[g]["plain"]):
                cells = [f"{acc(results[g][o][d]['correct']['test']):.3f}" for o in SERVING_OPTIONS]
                lines.append(f"| {d} | {acc(own[d]['test']):.3f} | " + " | ".join(cells) + " |")
    return lines


if __name__ == "__main__":
    main()
