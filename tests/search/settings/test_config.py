"""``load_config``: one YAML file validated into frozen models, every problem reported at once."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pydantic
import pytest

from search.settings.config import REGISTERED_CHOICES, Config, load_config, updated, validate_config
from spaces.errors import ConfigError, UsageError

MINIMAL = """\
name: demo
base_model: roberta-base
domains:
  books: {path: data/books}
  dvd: {path: data/dvd}
search:
  targets: [books]
"""


def write(tmp_path: Path, text: str, name: str = "signmix.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    err = info.value
    assert f"({len(err.problems)} problem(s))" in str(err)
    for problem in err.problems:  # every problem is in the message the user sees
        assert problem in str(err)
    return err.problems


def only_problem(tmp_path: Path, text: str) -> str:
    problems = problems_of(tmp_path, text)
    assert len(problems) == 1, problems
    return problems[0]


# A valid file ---------------------------------------------------------------------------

def test_minimal_config_loads_with_defaults(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert isinstance(cfg, Config)
    assert cfg.name == "demo"
    assert cfg.base_model == "roberta-base"
    assert sorted(cfg.domains) == ["books", "dvd"]
    assert cfg.search.targets == ["books"]
    assert cfg.search.strategy == "tpe"
    assert cfg.search.max_fsd == "auto"
    assert cfg.search.prune_ratios == [0.0]
    assert cfg.adapter.method == "seq_bn"


def test_the_search_gates_on_activation_fsd_by_default_and_weight_fsd_is_one_setting_away(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.search.conflict_measure == "activation_fsd" and cfg.search.max_fsd == "auto"
    assert cfg.search.gate_measures == ("activation_fsd",) and not cfg.search.gate_on_weight_signs
    paper = load_config(write(tmp_path, MINIMAL + "  conflict_measure: weight_fsd\n"))
    assert paper.search.gate_on_weight_signs


def test_a_fixed_max_fsd_must_name_the_measure_it_applies_to(tmp_path):
    # the number was a weight-FSD threshold when weight FSD was the default: never applied silently elsewhere
    problem = only_problem(tmp_path, MINIMAL + "  max_fsd: 0.4\n")
    assert "max_fsd 0.4 is a fixed threshold on a conflict measure" in problem
    assert "conflict_measure: weight_fsd" in problem
    named = load_config(write(tmp_path, MINIMAL + "  max_fsd: 0.4\n  conflict_measure: weight_fsd\n"))
    assert named.search.max_fsd == 0.4 and named.search.gate_on_weight_signs


def test_defaults_for_storage_tracking_and_experiment(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    runs = (tmp_path / "signmix_runs").resolve()
    assert cfg.storage_path == str(runs)
    assert cfg.store_path == os.path.join(str(runs), "adapters")
    assert cfg.tracking_uri == "sqlite:///" + str(runs / "mlflow.db")
    assert cfg.experiment_name == "demo"
    assert cfg.registered_model_name == "demo"


def test_explicit_mlflow_settings_win(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL + textwrap.dedent("""\
        mlflow: {tracking_uri: "http://127.0.0.1:5000", experiment: sentiment, registered_model: mix}
        """)))
    assert cfg.tracking_uri == "http://127.0.0.1:5000"
    assert cfg.experiment_name == "sentiment"
    assert cfg.registered_model_name == "mix"


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the cwd must not matter
    config_dir = tmp_path / "configs" / "exp"
    path = write(config_dir, MINIMAL + textwrap.dedent("""\
        store: ../adapters
        ray: {storage_path: runs}
        """))
    cfg = load_config(path)
    assert cfg.domains["books"].path == str((config_dir / "data" / "books").resolve())
    assert cfg.domains["dvd"].path == str((config_dir / "data" / "dvd").resolve())
    assert cfg.store == str((tmp_path / "configs" / "adapters").resolve())
    assert cfg.store_path == cfg.store
    assert cfg.storage_path == str((config_dir / "runs").resolve())
    assert cfg.tracking_uri == "sqlite:///" + str((config_dir / "runs" / "mlflow.db").resolve())


def test_absolute_paths_and_uris_are_kept(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    cfg = load_config(write(tmp_path / "cfg", MINIMAL.replace("data/books", str(elsewhere)) + textwrap.dedent("""\
        store: s3://bucket/adapters
        ray: {storage_path: "s3://bucket/runs"}
        """)))
    assert cfg.domains["books"].path == str(elsewhere)
    assert cfg.store == "s3://bucket/adapters"
    assert cfg.storage_path == "s3://bucket/runs"


@pytest.mark.parametrize("base_model", ["roberta-base", "FacebookAI/roberta-large", "bert-base-uncased"])
def test_hub_id_base_model_is_kept_as_is(tmp_path, base_model):
    cfg = load_config(write(tmp_path, MINIMAL.replace("roberta-base", base_model)))
    assert cfg.base_model == base_model


def test_local_base_model_folder_is_resolved(tmp_path):
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    cfg = load_config(write(tmp_path, MINIMAL.replace("roberta-base", "./models/tiny")))
    assert cfg.base_model == str((tmp_path / "models" / "tiny").resolve())


def test_hub_domain_loads(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL.replace("{path: data/dvd}", "{hub: glue, subset: sst2}")))
    assert (cfg.domains["dvd"].hub, cfg.domains["dvd"].subset, cfg.domains["dvd"].path) == ("glue", "sst2", None)


def test_config_is_frozen(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    with pytest.raises(pydantic.ValidationError):
        cfg.name = "other"
    with pytest.raises(pydantic.ValidationError):
        cfg.search.strategy = "random"
    with pytest.raises(pydantic.ValidationError):
        cfg.domains["books"].path = "/tmp"
    assert cfg.name == "demo" and cfg.search.strategy == "tpe"


def test_model_dump_is_plain_data_that_validates_again(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    dumped = cfg.model_dump()
    assert isinstance(dumped["search"], dict)
    assert validate_config(dumped, base_dir=tmp_path) == cfg


def test_a_derived_config_is_a_typed_copy_validated_again(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL))
    search = updated(cfg.search, targets=["dvd"], num_mixtures=3)
    derived = updated(cfg, domains={"dvd": cfg.domains["dvd"]}, search=search)
    assert derived.search.targets == ["dvd"] and derived.search.num_mixtures == 3
    assert derived.domains["dvd"] is cfg.domains["dvd"]  # typed sections are passed as they are
    assert derived.adapter == cfg.adapter and cfg.search.targets == ["books"]  # the original is untouched
    with pytest.raises(pydantic.ValidationError, match="not domains"):  # the config's own validators run
        updated(cfg, domains={"dvd": cfg.domains["dvd"]})  # books, a target, is no longer a domain
    with pytest.raises(pydantic.ValidationError, match="at least one"):  # and the section's
        updated(cfg.search, prune_ratios=[])
    with pytest.raises(ValueError, match=r"no field\(s\) \['num_mixture'\]"):
        updated(cfg.search, num_mixture=3)


# Invalid files ---------------------------------------------------------------------------

def test_every_problem_is_listed_at_once(tmp_path):
    problems = problems_of(tmp_path, """\
        name: "bad name!"
        base_model: roberta-base
        trainig: {epochs: 2}
        adapter: {method: prefix}
        training: {epochs: 0, learning_rate: -1}
        domains:
          books: {path: data/books}
        search: {targets: [books], strategy: bayes, prune_ratios: [1.5], max_fsd: 2}
        """)
    expected = [
        ("name:", "'bad name!'"),
        ("trainig:", "did you mean 'training'"),
        ("adapter.method:", "'prefix'"),
        ("training.epochs:", "got 0"),
        ("training.learning_rate:", "got -1"),
        ("search.strategy:", "'bayes'"),
        ("search.prune_ratios.0:", "got 1.5"),
        ("search.max_fsd:", "got 2"),
    ]
    for field, value in expected:
        assert any(p.startswith(field) and value in p for p in problems), (field, value, problems)
    assert len(problems) == len(expected)


@pytest.mark.parametrize("snippet, field, hint", [
    ("trainig: {epochs: 2}\n", "trainig", "did you mean 'training'?"),
    ("serch: {targets: [books]}\n", "serch", "did you mean 'search'?"),
    ("adapter: {method: lora, rnk: 4}\n", "adapter.rnk", "did you mean 'rank'?"),
], ids=["top-level", "top-level-2", "nested-adapter"])
def test_unknown_key_gets_did_you_mean(tmp_path, snippet, field, hint):
    problems = problems_of(tmp_path, MINIMAL + snippet)
    assert any(p.startswith(f"{field}: unknown key") and hint in p for p in problems), problems


def test_nested_unknown_search_key_gets_did_you_mean(tmp_path):
    problem = only_problem(tmp_path, MINIMAL.replace("targets: [books]", "targets: [books]\n  strategyy: tpe"))
    assert problem == "search.strategyy: unknown key; did you mean 'strategy'?"


def test_unknown_domain_key_gets_did_you_mean(tmp_path):
    problem = only_problem(tmp_path, MINIMAL.replace("{path: data/books}", "{path: data/books, lable_column: y}"))
    assert problem.startswith("domains.books.lable_column: unknown key")
    assert "'label_column'" in problem


def test_target_that_is_not_a_domain(tmp_path):
    problem = only_problem(tmp_path, MINIMAL.replace("targets: [books]", "targets: [books, kitchen]"))
    assert "['kitchen']" in problem and "not domains" in problem
    assert "'books', 'dvd'" in problem


def test_max_members_smaller_than_the_targets(tmp_path):
    problem = only_problem(tmp_path, MINIMAL.replace("targets: [books]", "targets: [books, dvd]\n  max_members: 1"))
    assert "max_members=1" in problem and "2 targets" in problem


def test_max_members_below_targets_is_fine_when_targets_are_not_required(tmp_path):
    cfg = load_config(write(tmp_path, MINIMAL.replace(
        "targets: [books]", "targets: [books, dvd]\n  max_members: 1\n  require_targets: false")))
    assert cfg.search.max_members == 1


@pytest.mark.parametrize("replace, field, value", [
    (("{path: data/dvd}", "{hub: glue, path: data/dvd}"), "domains.dvd", "exactly one of"),
    (("{path: data/dvd}", "{text_column: t}"), "domains.dvd", "exactly one of"),
    (("targets: [books]", "targets: []"), "search.targets", "at least one target"),
    (("targets: [books]", "targets: [books, books]"), "search.targets", "['books', 'books']"),
    (("targets: [books]", "targets: [books]\n  prune_ratios: []"), "search.prune_ratios", "at least one"),
    (("targets: [books]", "targets: [books]\n  max_fsd: sometimes"), "search.max_fsd", "'sometimes'"),
    (("targets: [books]", "targets: [books]\n  fsd_measure: median"), "search.fsd_measure", "'median'"),
    (("name: demo", "name: ''"), "name", "''"),
    (("base_model: roberta-base\n", ""), "base_model", "missing"),
])
def test_single_problem_names_field_and_value(tmp_path, replace, field, value):
    problem = only_problem(tmp_path, MINIMAL.replace(*replace))
    assert problem.startswith(f"{field}:") and value in problem, problem


@pytest.mark.parametrize("text, kind", [
    ("- a\n- b\n", "list"),
    ("just a string\n", "str"),
    ("", "NoneType"),
    ("42\n", "int"),
])
def test_file_that_is_not_a_mapping(tmp_path, text, kind):
    problem = only_problem(tmp_path, text)
    assert "YAML mapping" in problem and kind in problem


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "no such file" in str(info.value)
    assert info.value.exit_code == 2 and isinstance(info.value, UsageError)


def test_invalid_yaml_syntax(tmp_path):
    problem = only_problem(tmp_path, "name: demo\nsearch: {targets: [books\n")
    assert problem.startswith("not valid YAML")


@pytest.mark.parametrize("field", sorted(REGISTERED_CHOICES))
def test_a_name_outside_a_registry_is_refused_with_every_registered_name(field):
    """Each enumeration of the config (strategy, FSD measure, pruning, adapter method, ...)
    accepts exactly its registry's names, and the message lists them."""
    section, key = field.split(".")
    raw = {"name": "demo", "base_model": "roberta-base", "domains": {"books": {"path": "/data/books"}},
           "search": {"targets": ["books"], "fgsm_step": 0.01, "blackbox_attack": {}}}
    list_field = key in ("prune_methods", "objectives", "merge_methods", "serving_options")
    for name in REGISTERED_CHOICES[field]:  # every registered name is accepted
        validate_config({**raw, section: {**raw.get(section, {}), key: [name] if list_field else name}})
    with pytest.raises(ConfigError) as info:
        validate_config({**raw, section: {**raw.get(section, {}), key: ["bogus"] if list_field else "bogus"}})
    (problem,) = info.value.problems
    assert problem.startswith(f"{field}") and "'bogus'" in problem
    for name in REGISTERED_CHOICES[field]:
        assert repr(name) in problem


def test_the_study_targets_by_default_every_domain_with_data_not_an_adapter_alone(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "support").mkdir()
    cfg = load_config(write(tmp_path, MINIMAL.replace("  dvd: {path: data/dvd}\n", "  dvd: {path: data/dvd}\n"
                                                      "  support: {adapter: {path: support}}\n")))
    assert cfg.study_targets == ["books", "dvd"]
    pinned = cfg.model_copy(update={"study": cfg.study.model_copy(update={"targets": ["dvd"]})})
    assert pinned.study_targets == ["dvd"]


# Serving by default --------------------------------------------------------------------------

SERVING = """\
name: demo
base_model: roberta-base
domains:
  books: {path: data/books}
  dvd: {path: data/dvd}
  support: {path: data/support}
"""


@pytest.mark.parametrize("search", ["", "search: {num_mixtures: 4}\n", "search: {targets: null}\n"],
                         ids=["no-search-section", "no-targets", "null-targets"])
def test_a_config_without_targets_serves_every_domain_with_data(tmp_path, search):
    (tmp_path / "extra").mkdir()
    cfg = load_config(write(tmp_path, SERVING + "  extra: {adapter: {path: extra}}\n" + search))
    # every domain with data is a target, so every mixture holds them all: one body serves them
    assert cfg.search.targets == ["books", "dvd", "support"]
    assert cfg.model_dump()["search"]["targets"] == ["books", "dvd", "support"]  # what trials receive


def test_the_default_operators_are_those_that_served_best_and_in_domain_is_one_setting_away(tmp_path):
    cfg = load_config(write(tmp_path, SERVING))
    # TIES first: the greedy warm start walks the first operator (the paper's average: one setting away)
    assert cfg.search.merge_methods == ["ties", "average", "task_arithmetic", "dare_ties"]
    assert cfg.search.lambdas == [1.0, 1.5, 2.0] and cfg.search.densities == [0.1, 0.2]
    in_domain = load_config(write(tmp_path, SERVING + "search: {targets: [books]}\n"))
    assert in_domain.search.targets == ["books"]
    chosen = load_config(write(tmp_path, SERVING + "search: {merge_methods: [ties], lambdas: [2]}\n"))
    assert chosen.search.merge_methods == ["ties"] and chosen.search.lambdas == [2.0]


@pytest.mark.parametrize("adapter, lora_merge, expected", [
    ("", "", ["average"]),  # imported bottleneck adapters: no shared initialisation to merge deltas from
    ("adapter: {method: lora}\n", "", ["ties", "average", "task_arithmetic", "dare_ties"]),  # ΔW starts at 0
    ("adapter: {method: lora}\n", "  lora_merge: factors\n", ["average"]),
], ids=["seq_bn", "lora-delta-svd", "lora-factors"])
def test_imported_adapters_default_to_the_operators_they_can_use(tmp_path, adapter, lora_merge, expected):
    (tmp_path / "mine").mkdir()
    text = SERVING.replace("base_model: roberta-base\n", "base_model: roberta-base\n" + adapter)
    cfg = load_config(write(tmp_path, text + "  mine: {adapter: {path: mine}}\nsearch:\n  num_mixtures: 2\n"
                            + lora_merge))
    assert cfg.search.merge_methods == expected
    pinned = load_config(write(tmp_path, text + "  mine: {adapter: {path: mine}}\nsearch: {merge_methods: [ties]}\n"))
    assert pinned.search.merge_methods == ["ties"]  # what the file says is kept
