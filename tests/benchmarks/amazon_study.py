"""The paper's experiments on the four Amazon review domains of ``../shared/data``.

Trains one ``seq_bn`` adapter per domain on the pretrained MiniLM-L6 encoder, runs
``signmix study`` (every subset, the sparsity sweep, Alg. 4 sparse mixing) and
``signmix report``, then prints the numbers the paper asks about: the correlation between
FSD and accuracy, greedy mixing against the study's bounds, and dense against 80% and
90% sparse mixtures. Run: ``make study-amazon`` (about 10 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data" / "amazon_multidomain"


def write_config(work: Path) -> Path:
    from search.cli.demo import demo_base_model

    config = {
        "name": "amazon-study", "base_model": demo_base_model(),
        "adapter": {"method": "seq_bn", "reduction_factor": 16},
        "training": {"epochs": 2, "learning_rate": 2e-3, "batch_size": 16, "max_length": 128, "seed": 0,
                     "max_train_examples": 400, "max_eval_examples": 200},
        "domains": {d: {"path": str(SHARED / d)} for d in ("books", "dvd", "electronics", "kitchen")},
        "search": {"targets": ["books"], "max_concurrent": 2, "eval_batch_size": 64},
        "study": {"sweep_ratios": [0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0], "sparse_sizes": [2, 3],
                  "sparsities": [0.8, 0.9], "sparse_layers": 2},
        "resources": {"cpu": 1},
        "ray": {"storage_path": str(work / "runs"), "num_cpus": 2},
        "store": str(work / "adapters"),
    }
    path = work / "amazon-study.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def show(path: Path) -> None:
    print(f"\n{path.name}")
    with path.open(encoding="utf-8") as fh:
        for row in csv.reader(fh):
            print("  " + "  ".join(f"{c:>12}" for c in row))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=str(ROOT / ".bench" / "amazon-study"))
    args = parser.parse_args(argv)
    if not SHARED.is_dir():
        print(f"needs {SHARED}", file=sys.stderr)
        return 2
    from search.cli.main import main as signmix

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    config = str(write_config(work))
    for command in (["train", config], ["study", config], ["report", config, "--out", str(work / "report")]):
        code = signmix(command)
        if code:
            return code
    for name in ("correlations.csv", "greedy_vs_bounds.csv", "sparsity_curves.csv", "soup_drop.csv"):
        if (work / "report" / name).is_file():
            show(work / "report" / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
