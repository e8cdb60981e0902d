"""Does mixing change robustness? Clean, FGSM and black-box accuracy on real data (issue 21).

The 12 real review adapters of ``make plan-real`` (MiniLM-L6, ``seq_bn`` reduction 16, 400
training examples, 2 epochs, one shared initialisation), copied from ``--adapters`` into
``--work`` (the original is never written). For each target (default books and dvd), with
the target's own head, on its **test** split:

* ``own``: the target's adapter alone;
* ``soup of all``: the uniform average of the 12 adapters;
* ``TIES of Amazon``: TIES of the 4 Amazon adapters, density and λ chosen on the target's
  validation split among (0.1, 0.2) x (1.0, 2.0) (selection on validation, numbers on test).

Columns: accuracy and FGSM robust accuracy (step 0.01) on the whole test split, and black-box
robust accuracy (``trainables/blackbox_attack.py``, the product's attack with its defaults but
``--examples`` attacked rows) with the ``embedding`` and the ``wordnet`` synonym sources, each
with a 95% bootstrap interval; the attack's success rate, queries and words changed, and its
cost per attacked example and per mixture on this machine's threads (``--threads``, default 2).
Also the cost of one trial's clean evaluation of the target's validation split, to put the
attack's cost at the defaults (50 validation rows per target) beside it.

Run: ``make blackbox-real`` (under ``flock /tmp/signmix-measure.lock`` on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plan_real  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TIES_GRID = [(0.1, 1.0), (0.1, 2.0), (0.2, 1.0), (0.2, 2.0)]
DEFAULT_EXAMPLES = 50  # BlackboxAttack().examples


def prepare(args) -> tuple:
    """(config, shared weights with the initialisation, experiment) over a copy of the store."""
    import yaml

    from search.settings.config import load_config
    from trainables.initialisation import initial_adapter_weights
    from trainables.mixture_trial import INIT_KEY
    from trainables.store import load_sign_index

    work = Path(args.work).resolve()
    store = work / "adapters"
    if not store.exists():
        shutil.copytree(args.adapters, store)
    domains = plan_real.collections()["reviews12"]
    raw = plan_real.config(work, domains, name="blackbox-real",
                           args=argparse.Namespace(max_train=400, max_eval=None, head="own", per_group=4,
                                                   group_evaluations=None))
    path = work / "blackbox-real.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    cfg = load_config(path)
    experiment = cfg.experiment(targets=args.targets)
    weights, _ = load_sign_index(cfg.store_path, cfg.domains)
    shared = dict(weights)
    shared[INIT_KEY] = initial_adapter_weights(experiment, cfg.store_path)
    return cfg, shared, experiment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / ".bench" / "blackbox-real"))
    parser.add_argument("--adapters", default=str(ROOT / ".bench" / "plan-real" / "adapters"))
    parser.add_argument("--targets", nargs="+", default=["books", "dvd"])
    parser.add_argument("--examples", type=int, default=100, help="attacked test rows per target and mixture")
    parser.add_argument("--sources", nargs="+", default=["embedding", "wordnet"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from spaces.spec import make_mixture_spec
    from trainables.blackbox_attack import attack_metrics, attack_split
    from trainables.data import load_domain
    from trainables.evaluate import encoded_split, mixture_model, predict
    from trainables.mixture_trial import load_mixture
    from trainables.model import cached_tokenizer
    from trainables.robustness import fgsm_predict
    from trainables.settings import BlackboxAttack
    from trainables.significance import paired_bootstrap
    from trainables.synonyms import EmbeddingSynonyms, wordnet_synonyms

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    cfg, shared, experiment = prepare(args)
    model = mixture_model(experiment, str(Path(cfg.store_path).resolve()))
    tokenizer = cached_tokenizer(experiment.base_model)
    max_length = experiment.training.max_length
    batch = cfg.search.eval_batch_size
    sources = {}
    for name in args.sources:
        sources[name] = (EmbeddingSynonyms.from_model(model.model, tokenizer) if name == "embedding"
                         else wordnet_synonyms(BlackboxAttack(synonyms="wordnet").wordnet_folder))
    amazon = list(plan_real.AMAZON)
    records = []
    for target in args.targets:
        model.add_head(target)
        label_names = model.label_names[target]
        test = encoded_split(experiment, target, "test", label_names)
        validation = encoded_split(experiment, target, "validation", label_names)
        texts = load_domain(target, experiment.domains[target], splits=("test",), seed=experiment.training.seed,
                            max_eval_examples=experiment.training.max_eval_examples,
                            label_names=label_names).splits["test"]
        if list(texts["label"]) != test.labels:
            raise SystemExit(f"{target}: the raw test split and the encoded one disagree")

        def validation_accuracy(spec) -> tuple[float, float]:
            load_mixture(model, spec, shared, experiment)
            model.use_head(target)
            t0 = time.perf_counter()
            preds = predict(model.model, validation, batch)
            seconds = time.perf_counter() - t0
            return sum(preds[r] == validation.labels[r] for r in preds) / len(preds), seconds

        ties = {(d, lam): make_mixture_spec(members=amazon, targets=[target], merge_method="ties", density=d, lam=lam)
                for d, lam in TIES_GRID}
        scored = {k: validation_accuracy(s)[0] for k, s in ties.items()}
        best = max(ties, key=lambda k: (scored[k], -k[0], -k[1]))
        own = make_mixture_spec(members=[target], targets=[target])
        _, clean_eval_seconds = validation_accuracy(own)
        mixtures = {"own": own, "soup of all": make_mixture_spec(members=sorted(cfg.domains), targets=[target]),
                    f"TIES of Amazon (d {best[0]}, λ {best[1]})": ties[best]}
        for label, spec in mixtures.items():
            load_mixture(model, spec, shared, experiment)
            model.use_head(target)
            preds = predict(model.model, test, batch)
            robust = fgsm_predict(model.model, test, batch, 0.01)
            correct = {"accuracy": [int(preds[r] == test.labels[r]) for r in range(len(test))],
                       "fgsm": [int(robust[r] == test.labels[r]) for r in range(len(test))]}
            rec = {"target": target, "mixture": label, "spec": spec.to_dict(), "n_test": len(test),
                   "clean_eval_seconds_validation": clean_eval_seconds, "n_validation": len(validation),
                   "validation_ties": {f"{d},{lam}": a for (d, lam), a in scored.items()}}
            bb_correct = {}
            for source, synonyms in sources.items():
                settings = BlackboxAttack(synonyms=source, examples=args.examples)
                t0 = time.perf_counter()
                outcomes = attack_split(model.model, tokenizer, texts["text"], texts["label"], synonyms, settings,
                                        max_length=max_length, batch_size=batch)
                seconds = time.perf_counter() - t0
                bb_correct[source] = [int(o.correct_after) for o in outcomes]
                m = attack_metrics(outcomes, target)
                rec[source] = {"seconds": seconds, "seconds_per_example": seconds / len(outcomes),
                               "attacked": len(outcomes), **{k.split("/")[0]: v for k, v in m.items()},
                               "examples": [o.as_dict() for o in outcomes if o.words_changed][:3]}
                print(f"{target} {label} {source}: {m} in {seconds:.0f}s", flush=True)
            for name, interval in {**paired_bootstrap(correct), **paired_bootstrap(bb_correct)}.items():
                rec[f"{name}_interval"] = [interval.accuracy, interval.low, interval.high, interval.n]
            records.append(rec)
            # after every mixture: a run cut short still leaves its table
            (work / "blackbox_real.json").write_text(json.dumps(records, indent=1, default=str), encoding="utf-8")
            lines = table(records, args, time.perf_counter() - started)
            (work / "blackbox_real.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


def table(records, args, wall: float) -> list[str]:
    def cell(iv) -> str:
        return f"{iv[0]:.3f} [{iv[1]:.3f}, {iv[2]:.3f}]"

    head = "| target | mixture | accuracy (test) | FGSM 0.01 | " + " | ".join(
        f"black-box, {s} (n) | success / queries / words, {s}" for s in args.sources) + " |"
    lines = [head, "|" + "---|" * (4 + 2 * len(args.sources))]
    for r in records:
        row = f"| {r['target']} | {r['mixture']} | {cell(r['accuracy_interval'])} | {cell(r['fgsm_interval'])} |"
        for s in args.sources:
            q = r[s]
            row += (f" {cell(r[f'{s}_interval'])} ({q['attacked']}) | {q['bb_attack_success']:.2f} / "
                    f"{q['bb_queries']:.0f} / {q['bb_words_changed']:.1f} |")
        lines.append(row)
    lines += ["", "cost per attacked example (s): " + ", ".join(
        f"{s} {sum(r[s]['seconds'] for r in records) / sum(r[s]['attacked'] for r in records):.2f}"
        for s in args.sources),
              "clean evaluation of one target's validation split (s): " + ", ".join(
        f"{r['target']} {r['clean_eval_seconds_validation']:.1f} ({r['n_validation']} rows)"
        for r in records if r["mixture"] == "own"),
              f"threads {args.threads}; wall {wall / 60:.1f} min"]
    own = [r for r in records if r["mixture"] == "own"]
    if own:
        clean = sum(r["clean_eval_seconds_validation"] for r in own) / len(own)
        for s in args.sources:
            per = sum(r[s]["seconds"] for r in records) / sum(r[s]["attacked"] for r in records)
            lines.append(f"at the defaults ({DEFAULT_EXAMPLES} attacked validation rows per target), {s}: "
                         f"{DEFAULT_EXAMPLES * per:.0f} s per target and mixture, {DEFAULT_EXAMPLES * per / clean:.1f}x "
                         f"the clean evaluation of the target's validation split ({clean:.1f} s)")
    return lines


if __name__ == "__main__":
    main()
