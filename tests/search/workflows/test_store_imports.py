"""Bring your own adapters (issue 11) through the product: `adapters` folders (with and without
a head) and PEFT LoRA named in the config go through `signmix train` and a search; LoRA stores
are compared on ΔW. Real adapters, PEFT, Ray and MLflow; tiny random BERT."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from tests_support import mlflow_runs, run_signmix, write_config

README = Path(__file__).resolve().parents[3] / "README.md"


def _plain_adapters_folder(base: str, folder: Path, config, *, num_labels: int | None, seed: int) -> Path:
    """An adapter saved by plain `adapters` code (not signmix), under the user's own name."""
    from adapters import AutoAdapterModel

    model = AutoAdapterModel.from_pretrained(base)
    torch.manual_seed(seed)
    model.add_adapter("users_adapter", config=config)
    if num_labels:
        model.add_classification_head("users_adapter", num_labels=num_labels)
    folder.mkdir(parents=True)
    model.save_adapter(str(folder), "users_adapter", with_head=bool(num_labels), use_safetensors=True)
    return folder


def _peft_folder(base: str, folder: Path, *, seed: int) -> Path:
    """A PEFT LoRA (r 4, alpha 8 on query/value) trained a few steps and saved by PEFT."""
    from peft import LoraConfig, get_peft_model
    from transformers import BertModel

    torch.manual_seed(seed)
    model = get_peft_model(BertModel.from_pretrained(base), LoraConfig(r=4, lora_alpha=8,
                                                                       target_modules=["query", "value"]))
    ids = torch.randint(1000, 29000, (4, 12), generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    for _ in range(5):
        loss = (model(input_ids=ids).last_hidden_state - 1.0).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(str(folder))
    return folder


def _with_adapters(path: Path, adapters: dict[str, dict], no_data: tuple[str, ...] = ()) -> Path:
    raw = yaml.safe_load(path.read_text())
    for domain, source in adapters.items():
        raw["domains"][domain] = {**({} if domain in no_data else raw["domains"].get(domain, {})), "adapter": source}
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.integration
def test_adapters_folders_with_and_without_head_train_and_search(tmp_path, ray_cluster, tiny_bert, demo_domains):
    from adapters import SeqBnConfig
    from safetensors.torch import load_file

    from search.settings.config import load_config
    from search.workflows.mixture_search import run_search
    from search.workflows.adapter_training import run_training
    from trainables.store import AdapterStore

    with_head = _plain_adapters_folder(tiny_bert, tmp_path / "users" / "books", SeqBnConfig(reduction_factor=4),
                                       num_labels=2, seed=1)
    no_head = _plain_adapters_folder(tiny_bert, tmp_path / "users" / "movies", SeqBnConfig(reduction_factor=4),
                                     num_labels=None, seed=2)
    # the product's conflict measure (activation FSD: a probe pass over the imported adapters)
    path = write_config(tmp_path, base_model=tiny_bert, targets=["books", "movies"],
                        domains={d: demo_domains[d] for d in ("books", "movies", "kitchen")},
                        search={"prune_ratios": [0.0], "num_mixtures": 4}, default_conflict_measure=True)
    cfg = load_config(_with_adapters(path, {"books": {"path": "./users/books"}, "movies": {"path": str(no_head)}}))

    summary = run_training(cfg)
    assert summary.imported == ["books"] and summary.trained == ["kitchen"], summary
    assert summary.heads_trained == ["movies"], summary  # imported: only its head was trained
    store = AdapterStore(cfg.store_path)
    books, movies = store.meta("books"), store.meta("movies")
    assert books["source"]["kind"] == "adapters" and books["source"]["location"] == str(with_head)
    assert books["source"]["files"]["adapter.safetensors"] and not books["head_trained"]
    assert movies["head_trained"] and movies["num_labels"] == 2
    # the head was trained with the adapter frozen: the stored adapter is the user's, unchanged
    theirs = load_file(str(no_head / "adapter.safetensors"))
    ours = store.load_weights("movies")
    assert len(theirs) == len(ours)
    for key, tensor in ours.items():
        torch.testing.assert_close(tensor, theirs[key.replace(".signmix.", ".users_adapter.")], rtol=0, atol=0)
    run = [r for r in mlflow_runs(cfg, "tags.`signmix.domain` = 'movies'")][0]
    assert run.data.params["head_trained"] == "True"
    assert run.data.params["adapter_imported_from"] == f"adapters:{no_head}"

    again = run_training(cfg)  # fingerprinted by the source files' hashes: nothing to do
    assert sorted(again.skipped) == ["books", "kitchen", "movies"] and not again.trained and not again.imported
    assert not again.heads_trained

    lines: list[str] = []
    s = run_search(cfg, progress=lines.append)
    assert s.evaluated >= 2 and not s.failed
    assert any(line.startswith("measures: probe passes of 3 adapters") for line in lines), lines
    (search_run,) = mlflow_runs(cfg, "tags.`signmix.kind` = 'search'")
    assert search_run.data.tags["signmix.gate_measure"] == "activation_fsd"
    # the user's adapters were initialised independently (seeds 1 and 2): said with the numbers
    assert any("did not start from one initialisation" in line and "books/movies" in line for line in lines), lines


@pytest.mark.integration
def test_peft_lora_imports_and_is_merged_on_delta_w_in_a_search(tmp_path, ray_cluster, tiny_bert, demo_domains):
    from search.settings.config import load_config
    from search.workflows.mixture_search import run_search
    from search.workflows.adapter_training import run_training
    from trainables.store import AdapterStore

    """The README's worked example ("Bring your own adapters"), on the tiny BERT and the demo data."""
    _peft_folder(tiny_bert, tmp_path / "lora" / "movies", seed=1)
    _peft_folder(tiny_bert, tmp_path / "lora" / "extra", seed=2)
    for domain in ("books", "movies"):
        shutil.copytree(demo_domains[domain], tmp_path / "data" / domain)
    (example,) = re.findall(r"## Bring your own adapters\n.*?```yml\n(.*?)```", README.read_text(), flags=re.S)
    raw = yaml.safe_load(example)
    assert raw["domains"]["extra"] == {"adapter": {"peft": "./lora/extra"}}
    small = yaml.safe_load(write_config(tmp_path, base_model=tiny_bert, domains={}, targets=[]).read_text())
    raw.update(base_model=tiny_bert, training=small["training"], ray=small["ray"], store=small["store"],
               search={**raw["search"], "prune_ratios": [0.0], "max_fsd": None, "confirm": False})
    (tmp_path / "byo.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "byo.yaml")

    summary = run_training(cfg)
    assert summary.imported == ["extra"] and summary.trained == ["books"], summary
    assert summary.heads_trained == ["movies"], summary  # the PEFT LoRA imported, its head trained
    from search.cli.commands import training_outcome

    assert training_outcome(summary).startswith("trained 1 adapter(s) ['books'], imported 1 with a head trained on "
                                                "their data ['movies'], imported 1 as they are ['extra'], skipped 0 []")
    store = AdapterStore(cfg.store_path)
    assert store.meta("extra")["has_head"] is False and store.meta("movies")["source"]["kind"] == "peft"

    s = run_search(cfg)
    assert s.evaluated == 4 and not s.failed
    runs = mlflow_runs(cfg, "tags.`signmix.status` = 'evaluated'")
    errors = {r.data.params["members"]: r.data.metrics["lora_svd_error"] for r in runs}
    assert errors["books"] < 1e-4  # one rank-4 member: ΔW is factorised back exactly
    assert errors["books,extra,movies"] > 1e-3  # three rank-4 updates do not fit in rank 4

    # the best mixture in both worlds: PEFT's output equals signmix's (the adapters export) on the same inputs
    import adapters
    from peft import PeftModel
    from transformers import BertModel

    from search.workflows.export import export_mixture

    best = max(runs, key=lambda r: (r.data.params["members"].count(","), r.data.metrics["accuracy_mean"]))
    ours, record = export_mixture(cfg, tmp_path / "best", run_id=best.info.run_id, register=False)
    peft_out, peft_record = export_mixture(cfg, tmp_path / "best-peft", run_id=best.info.run_id, register=False,
                                           format="peft")
    assert peft_record["format"] == "peft" and set(peft_record["sources"]) == set(record["members"]) - {"books"}
    assert peft_record["sources"]["movies"]["kind"] == "peft"
    ids = torch.randint(1000, 29000, (3, 10), generator=torch.Generator().manual_seed(5))
    signmix_model = BertModel.from_pretrained(tiny_bert)
    adapters.init(signmix_model)
    signmix_model.load_adapter(str(ours), set_active=True, with_head=False, use_safetensors=True)
    peft_model = PeftModel.from_pretrained(BertModel.from_pretrained(tiny_bert), str(peft_out))
    base = BertModel.from_pretrained(tiny_bert).eval()
    with torch.no_grad():
        expected = signmix_model.eval()(input_ids=ids).last_hidden_state
        got = peft_model.eval()(input_ids=ids).last_hidden_state
        plain = base(input_ids=ids).last_hidden_state
    assert (expected - plain).abs().max() > 1e-3  # the mixture changes the output ...
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)  # ... and PEFT reproduces it
    # `signmix evaluate` reads the PEFT export too, and scores it as the adapters export
    from search.workflows.export import evaluate_export

    ours_metrics = evaluate_export(ours, "validation")["metrics"]
    peft_metrics = evaluate_export(peft_out, "validation")["metrics"]
    assert peft_metrics == pytest.approx(ours_metrics, abs=1e-6)
    assert ours_metrics["accuracy_mean"] == pytest.approx(best.data.metrics["accuracy_mean"], abs=1e-9)


def test_lora_store_sign_index_is_on_delta_w(tmp_path):
    """B -> -B, A -> -A changes no update: FSD 0 on ΔW (it would be 1 on the factors)."""
    from spaces.fsd import SignIndex
    from trainables.imports.store_form import ImportedAdapter
    from trainables.store import AdapterStore, load_sign_index

    gen = torch.Generator().manual_seed(0)
    module = "bert.encoder.layer.0.attention.self.query.loras.signmix"
    factors = {f"{module}.lora_A": torch.randn(4, 8, generator=gen), f"{module}.lora_B": torch.randn(8, 4, generator=gen)}
    config = {"name": "signmix", "config_id": "x", "model_name": "tiny", "model_type": "bert", "model_class": "x",
              "version": "x", "config": {"architecture": "lora", "r": 4, "alpha": 8.0, "selfattn_lora": True,
                                         "attn_matrices": ["q"]}}
    store = AdapterStore(tmp_path / "store")
    for name, sign in (("a", 1.0), ("b", -1.0)):
        adapter = ImportedAdapter(label=name, source={"kind": "peft", "location": name, "files": {"x": name}},
                                  adapter_config=config, weights={k: sign * t for k, t in factors.items()},
                                  head_config={"config": {"num_labels": 2}},
                                  head_weights={"heads.signmix.1.weight": torch.ones(2, 8)})
        adapter.commit(store, extra_meta={"base_model": "tiny", "num_labels": 2, "label_names": ["n", "p"]})
    weights, index = load_sign_index(store.root, ["a", "b"])
    assert float(index.matrix[0, 1]) == 0.0
    assert float(SignIndex.from_weights(weights).matrix[0, 1]) == 1.0


def _peft_classifier_folder(base: str, folder: Path) -> Path:
    """A PEFT LoRA saved from a sequence classifier: its classifier is in modules_to_save."""
    from peft import LoraConfig, get_peft_model
    from transformers import BertForSequenceClassification

    model = get_peft_model(BertForSequenceClassification.from_pretrained(base, num_labels=2),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], task_type="SEQ_CLS"))
    model.save_pretrained(str(folder))
    return folder


def test_every_adapter_with_a_problem_is_named_in_one_run(tmp_path, tiny_bert, demo_domains):

    domains = ("books", "kitchen", "movies")
    for d in domains:
        _peft_classifier_folder(tiny_bert, tmp_path / "lora" / d)
    path = write_config(tmp_path, base_model=tiny_bert, targets=["books"],
                        domains={d: demo_domains[d] for d in domains}, adapter={"method": "lora", "rank": 4, "alpha": 8})
    _with_adapters(path, {d: {"peft": f"./lora/{d}"} for d in domains})
    run = run_signmix("train", str(path), cwd=Path(__file__).resolve().parents[3], timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-3000:]
    assert "3 adapters cannot be imported" in run.stderr
    for d in domains:  # each one named, with its own problem and fix
        assert re.search(rf"adapter '{d}': modules_to_save = .*drop_modules_to_save: true", run.stderr), run.stderr
    assert not (tmp_path / "adapters").exists()  # nothing written
