"""The README's examples are real: its config validates and its command lines parse."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_config_example_validates(tmp_path):
    from search.settings.config import load_config

    (example,) = [b for b in blocks("yaml") if "domains:" in b]
    path = tmp_path / "experiment.yaml"
    path.write_text(example, encoding="utf-8")
    cfg = load_config(path)
    assert cfg.search.strategy == "tpe" and set(cfg.domains) == {"books", "kitchen", "sst2"}
    assert cfg.domains["sst2"].hub == "glue"
    # documented defaults
    assert cfg.tracking_uri == f"sqlite:///{tmp_path / 'signmix_runs' / 'mlflow.db'}"
    assert cfg.experiment_name == "amazon-reviews"


COMMANDS = [line.split("#")[0].strip() for b in blocks("bash") for line in b.splitlines()
            if line.strip().startswith("signmix ")]


@pytest.mark.parametrize("line", COMMANDS)
def test_readme_command_lines_parse(line):
    from search.cli.main import build_parser

    args = build_parser().parse_args(shlex.split(line)[1:])
    assert callable(args.func)


def test_readme_documents_every_command():
    from search.cli.main import build_parser

    documented = {shlex.split(c)[1] for c in COMMANDS}
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert documented == set(sub.choices)


def test_ci_runs_the_readme_test_command():
    root = Path(__file__).resolve().parents[1]
    assert "make test" in README
    assert re.search(r"^make test$", (root / ".ci" / "run").read_text(), flags=re.M)


def choices_table() -> str:
    """The README's table of choices, as the registries define them."""
    from search.settings.config import REGISTERED_CHOICES

    rows = [f"| `{field}` | {' · '.join(f'`{name}`' for name in names)} |"
            for field, names in REGISTERED_CHOICES.items()]
    return "\n".join(["| setting | choices |", "|---|---|", *rows])


def test_readme_table_of_choices_is_the_registries():
    """Adding a strategy, measure, pruning method, ... to its registry means adding it here too."""
    assert choices_table() in README, "update the README's table of choices to:\n" + choices_table()
