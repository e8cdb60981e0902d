"""Importing adapters users already have (trainables/imports): real adapters and PEFT, no mocks.

Each import is compared with the same adapter loaded by its own library on the same inputs,
and every check has a failing case whose message is asserted.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from spaces.errors import StoreError, UsageError
from trainables.imports import (
    check_same_architecture,
    import_adapter,
    read_hub_adapter,
    shared_initialisation_check,
)
from trainables.store import ADAPTER_NAME, AdapterStore

TARGETS = r".*\.(query|value|intermediate\.dense|layer\.\d+\.output\.dense)"  # not attention.output.dense


def _bert(path: Path, tokenizer_from: str, **overrides) -> str:
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    settings = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=128)
    BertModel(BertConfig(**{**settings, **overrides})).save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_from).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def base(tmp_path_factory, minilm_path) -> str:
    """A 2-layer, 32-wide random BERT folder (its own copy: names are compared by the checks)."""
    return _bert(tmp_path_factory.mktemp("import-base") / "tiny-bert", minilm_path)


@pytest.fixture(scope="session")
def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1000, 29000, (4, 12), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _adapters_model(base: str):
    from adapters import AutoAdapterModel

    model = AutoAdapterModel.from_pretrained(base)
    model.eval()
    return model


def _plain_adapter(base: str, folder: Path, config, *, head: bool, safetensors: bool = True, seed: int = 1):
    """Save an adapter the way a user of plain `adapters` would, under their own name."""
    model = _adapters_model(base)
    torch.manual_seed(seed)
    model.add_adapter("my_books_adapter", config=config)
    if head:
        model.add_classification_head("my_books_adapter", num_labels=3)
    with torch.no_grad():  # as if trained: every weight non-zero and of a visible size
        for name, p in model.named_parameters():
            if ".my_books_adapter." in name:
                p.normal_(0.0, 0.2)
    model.set_active_adapters("my_books_adapter")
    model.save_adapter(str(folder), "my_books_adapter", with_head=head, use_safetensors=safetensors)
    return model


def _encode(model, inputs, *, logits: bool):
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if logits else out.last_hidden_state


@pytest.fixture(scope="session")
def lora_folder(tmp_path_factory, base, inputs):
    """A LoRA with a head saved by plain `adapters` (safetensors), and its logits."""
    from adapters import LoRAConfig

    folder = tmp_path_factory.mktemp("plain") / "books"
    model = _plain_adapter(base, folder, LoRAConfig(r=4, alpha=8, intermediate_lora=True), head=True)
    return folder, _encode(model, inputs, logits=True)


def test_adapters_folder_with_head_imports_with_equal_logits(tmp_path, base, inputs, lora_folder):
    folder, expected = lora_folder
    imported = import_adapter("books", {"path": str(folder)}, base_model=base)
    assert imported.has_head and imported.source["kind"] == "adapters"
    assert imported.source["saved_name"] == "my_books_adapter"
    assert set(imported.source["files"]) == {"adapter_config.json", "adapter.safetensors", "head_config.json",
                                             "model_head.safetensors"}
    assert all(f".{ADAPTER_NAME}." in k for k in imported.weights)
    assert all(k.startswith(f"heads.{ADAPTER_NAME}.") for k in imported.head_weights)

    model = _adapters_model(base)  # the store's form, loaded by plain `adapters`
    model.load_adapter(str(imported.write(tmp_path / "out")), set_active=True, use_safetensors=True)
    torch.testing.assert_close(_encode(model, inputs, logits=True), expected, atol=1e-5, rtol=0)

    store = AdapterStore(tmp_path / "store")
    imported.commit(store, extra_meta={"label_names": ["a", "b", "c"]})
    assert store.domains() == ["books"]
    assert store.meta("books")["source"]["kind"] == "adapters"
    assert store.meta("books")["fingerprint"] == imported.fingerprint()
    assert set(store.load_weights("books")) == set(imported.weights)


def test_adapters_folder_without_head_imports_with_equal_hidden_states(tmp_path, base, inputs):
    import adapters
    from adapters import SeqBnConfig
    from transformers import BertModel

    folder = tmp_path / "nohead"
    _plain_adapter(base, folder, SeqBnConfig(reduction_factor=4), head=False)
    imported = import_adapter("dvd", {"path": str(folder)}, base_model=base)
    assert not imported.has_head
    assert imported.meta()["adapter"] == {"method": "seq_bn", "reduction_factor": 4}  # mixable with signmix's own
    with pytest.raises(StoreError, match="has no head"):
        imported.commit(AdapterStore(tmp_path / "store"))
    assert not (tmp_path / "store" / "dvd").exists()

    def hidden(path: Path, name: str):
        model = BertModel.from_pretrained(base)
        adapters.init(model)
        model.load_adapter(str(path), set_active=True, use_safetensors=True)
        assert model.active_adapters is not None and name in str(model.active_adapters)
        return _encode(model.eval(), inputs, logits=False)

    expected = hidden(folder, "my_books_adapter")
    torch.testing.assert_close(hidden(imported.write(tmp_path / "out"), ADAPTER_NAME), expected, atol=1e-5, rtol=0)
    plain = _encode(BertModel.from_pretrained(base).eval(), inputs, logits=False)
    assert (plain - expected).abs().max() > 1e-3  # the adapter changes the output: the equality means something


def test_hub_id_goes_through_adapters_resolution_and_a_local_folder_resolves(base, inputs, lora_folder):
    folder, expected = lora_folder
    imported = read_hub_adapter(str(folder), label="books", base_model=base)
    assert imported.source["kind"] == "hub" and imported.source["id"] == str(folder)
    model = _adapters_model(base)
    model.load_adapter(str(folder), load_as=ADAPTER_NAME, set_active=True, use_safetensors=True)
    for key, value in imported.weights.items():
        torch.testing.assert_close(value, model.state_dict()[key])


def test_unreachable_hub_id_is_one_message(base):
    with pytest.raises(StoreError, match=r"hub id 'nobody/no-such-adapter' cannot be resolved.*adapter: \{path"):
        import_adapter("books", {"hub": "nobody/no-such-adapter"}, base_model=base)


# --- pickles --------------------------------------------------------------------------------


class _WritesAFile:
    """A pickle payload: loading it runs open(path, 'w').write(...)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('pwned')",))


def test_pickle_only_adapter_is_refused_unless_allowed_and_then_loads(tmp_path, base, inputs):
    from adapters import LoRAConfig

    folder = tmp_path / "pickled"
    model = _plain_adapter(base, folder, LoRAConfig(r=2, alpha=4), head=True, safetensors=False)
    assert (folder / "pytorch_adapter.bin").is_file() and not (folder / "adapter.safetensors").exists()
    with pytest.raises(StoreError, match=r"only in the pickle file .*pytorch_adapter\.bin.*allow_pickle: true"):
        import_adapter("books", {"path": str(folder)}, base_model=base)
    imported = import_adapter("books", {"path": str(folder), "allow_pickle": True}, base_model=base)
    loaded = _adapters_model(base)
    loaded.load_adapter(str(imported.write(tmp_path / "out")), set_active=True, use_safetensors=True)
    torch.testing.assert_close(_encode(loaded, inputs, logits=True), _encode(model, inputs, logits=True),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("source_kind, weights_name", [("path", "pytorch_adapter.bin"), ("peft", "adapter_model.bin")])
def test_malicious_pickle_never_runs(tmp_path, base, lora_folder, source_kind, weights_name):
    marker = tmp_path / "pwned.txt"
    # The payload works: plain unpickling writes the marker (so this test can fail).
    pickle.loads(pickle.dumps(_WritesAFile(marker)))
    assert marker.is_file()
    marker.unlink()

    folder = tmp_path / "evil"
    folder.mkdir()
    if source_kind == "path":
        shutil.copy(lora_folder[0] / "adapter_config.json", folder)
    else:
        (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    with (folder / weights_name).open("wb") as fh:
        pickle.dump(_WritesAFile(marker), fh)
    with pytest.raises(StoreError, match="opening a pickle can run any code"):
        import_adapter("books", {source_kind: str(folder)}, base_model=base)
    assert not marker.exists()
    # Even when pickles are allowed, only plain tensors load (weights_only): still no file.
    with pytest.raises(StoreError, match="not plain tensors"):
        import_adapter("books", {source_kind: str(folder), "allow_pickle": True}, base_model=base)
    assert not marker.exists()


class _CallsSystem:
    """A pickle payload: loading it runs os.system('touch MARKER') (pickled as posix.system)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_a_harmful_pickle_allowed_by_the_user_is_refused_saying_what_it_would_call(tmp_path, base, protocol):
    marker = tmp_path / "pwned.txt"
    folder = tmp_path / "evil"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    with (folder / "adapter_model.bin").open("wb") as fh:
        pickle.dump(_CallsSystem(marker), fh, protocol=protocol)
    with pytest.raises(StoreError) as refused:
        import_adapter("books", {"peft": str(folder), "allow_pickle": True}, base_model=base)
    message = str(refused.value)
    assert "is a pickle that would call posix.system on load: not plain tensors, refused" in message
    # torch's advice to turn the safe reader off is never passed on, nor a wrong diagnosis.
    assert "weights_only" not in message and "copy the adapter again" not in message
    assert not marker.exists()


# --- missing and corrupt files ----------------------------------------------------------------


def _copy(folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(folder, tmp_path / "copy"))


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "adapter_config.json").unlink(), r"adapter_config\.json is missing in"),
    (lambda f: (f / "adapter.safetensors").unlink(),
     r"no weights in .* \(neither adapter\.safetensors nor pytorch_adapter\.bin\)"),
    (lambda f: (f / "adapter.safetensors").write_bytes((f / "adapter.safetensors").read_bytes()[:300]),
     r"adapter\.safetensors cannot be read \(.*\); the file is truncated, corrupt"),
    (lambda f: (f / "model_head.safetensors").write_bytes(b"\x00" * 5),
     r"model_head\.safetensors cannot be read .* truncated"),
    (lambda f: (f / "adapter_config.json").write_text("{not json"), r"adapter_config\.json is not valid JSON"),
    (lambda f: shutil.rmtree(f), r"does not exist; give the folder"),
])
def test_missing_or_corrupt_files_are_named(tmp_path, base, lora_folder, damage, message):
    folder = _copy(lora_folder[0], tmp_path)
    damage(folder)
    with pytest.raises(StoreError, match=message) as info:
        import_adapter("books", {"path": str(folder)}, base_model=base)
    assert "'books'" in str(info.value)


# --- base model -------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    ({"hidden_size": 48, "intermediate_size": 96},
     r"adapter 'books' was trained for another base model: its hidden_size is 32, base_model .* has hidden_size 48"),
    ({"num_hidden_layers": 3},
     r"its weights cover layers \[0, 1\] \(2 layers\), base_model .* has num_hidden_layers 3"),
])
def test_base_model_mismatch_is_named(tmp_path, minilm_path, lora_folder, overrides, message):
    other = _bert(tmp_path / "tiny-bert", minilm_path, **overrides)  # same name: only the facts differ
    with pytest.raises(StoreError, match=message):
        import_adapter("books", {"path": str(lora_folder[0])}, base_model=other)


def test_model_type_and_base_name_mismatches_are_named(tmp_path, base, lora_folder):
    folder = _copy(lora_folder[0], tmp_path)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["model_type"] = "roberta"
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(StoreError, match=r"its model_type is 'roberta', base_model .* has model_type 'bert'"):
        import_adapter("books", {"path": str(folder)}, base_model=base)

    renamed = shutil.copytree(base, tmp_path / "another-bert")
    with pytest.raises(StoreError, match=r"records base model '.*tiny-bert', but base_model is '.*another-bert'.*"
                                         r"check_base_name: false"):
        import_adapter("books", {"path": str(lora_folder[0])}, base_model=str(renamed))
    imported = import_adapter("books", {"path": str(lora_folder[0]), "check_base_name": False}, base_model=str(renamed))
    assert imported.has_head


@pytest.mark.parametrize("source, message", [
    ({}, "must name exactly one of path, hub, peft"),
    ({"path": "a", "peft": "b"}, "must name exactly one of path, hub, peft"),
    ({"path": "a", "drop_modules_to_save": True}, r"unknown option\(s\) \['drop_modules_to_save'\]"),
    ({"path": "a", "allow_pickle": "yes"}, "allow_pickle must be true or false"),
])
def test_malformed_sources_are_usage_errors(base, source, message):
    with pytest.raises(UsageError, match=message):
        import_adapter("books", source, base_model=base)


# --- architecture between members ------------------------------------------------------------


def _config(kind: str, **kw) -> dict:
    from adapters import LoRAConfig, SeqBnConfig

    return (LoRAConfig if kind == "lora" else SeqBnConfig)(**kw).to_dict()


@pytest.mark.parametrize("other, message", [
    (_config("seq_bn", reduction_factor=4), r"method \(architecture\) is 'lora' in 'a' but 'bottleneck' in 'b'"),
    (_config("lora", r=8, alpha=8), r"their LoRA rank \(r\) is 4 in 'a' but 8 in 'b'"),
    (_config("lora", r=4, alpha=16), r"LoRA alpha \(alpha\) is 8 in 'a' but 16 in 'b'"),
    (_config("lora", r=4, alpha=8, attn_matrices=["q", "k", "v"]),
     r"target modules \(attention matrices\) \(attn_matrices\) is \['q', 'v'\] in 'a' but \['q', 'k', 'v'\]"),
    (_config("lora", r=4, alpha=8, intermediate_lora=True), r"target modules \(intermediate\)"),
])
def test_architecture_mismatch_between_members_is_named(other, message):
    with pytest.raises(StoreError, match=message):
        check_same_architecture({"a": _config("lora", r=4, alpha=8), "b": other})


def test_bottleneck_mismatches_and_what_may_differ():
    with pytest.raises(StoreError, match=r"reduction factor \(reduction_factor\) is 4 in 'a' but 16 in 'b'"):
        check_same_architecture({"a": _config("seq_bn", reduction_factor=4), "b": _config("seq_bn", reduction_factor=16)})
    with pytest.raises(StoreError, match=r"non-linearity \(non_linearity\) is 'relu' in 'a' but 'gelu' in 'b'"):
        check_same_architecture({"a": _config("seq_bn", non_linearity="relu"), "b": _config("seq_bn", non_linearity="gelu")})
    check_same_architecture({"a": _config("lora", r=4, alpha=8, dropout=0.1), "b": _config("lora", r=4, alpha=8)})
    check_same_architecture({"a": _config("lora", r=4, alpha=8), "b": _config("lora", r=8, alpha=2)}, lora_on_delta=True)


def test_shared_initialisation_check_flags_pairs_near_one_half():
    matrix = torch.tensor([[0.0, 0.12, 0.49], [0.12, 0.0, 0.51], [0.49, 0.51, 0.0]], dtype=torch.float64)
    report = shared_initialisation_check(matrix, ["a", "b", "c"])
    assert [(a, b) for a, b, _ in report.suspects] == [("b", "c"), ("a", "c")]
    assert not report.shared
    assert "2 pair(s) of adapters did not start from one initialisation: FSD b/c 0.510, a/c 0.490" in report.message()
    assert shared_initialisation_check(matrix[:2, :2], ["a", "b"]).shared
    with pytest.raises(ValueError, match="threshold must be in"):
        shared_initialisation_check(matrix, ["a", "b", "c"], threshold=0.0)


# --- PEFT LoRA ----------------------------------------------------------------------------------


def _peft_trained(base: str, folder: Path, inputs, *, model_class: str = "BertModel", steps: int = 8, **lora):
    """PEFT trains a LoRA for a few steps on the tiny BERT and saves it; returns the PEFT model."""
    import transformers
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    model = getattr(transformers, model_class).from_pretrained(base)
    peft_model = get_peft_model(model, LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": TARGETS, **lora}))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=5e-2)
    for _ in range(steps):
        out = peft_model(**inputs)
        loss = out.logits.pow(2).mean() if hasattr(out, "logits") else (out.last_hidden_state - 1.0).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    peft_model.eval()
    peft_model.save_pretrained(str(folder))
    return peft_model


def _adapters_hidden(base: str, folder: Path, inputs):
    import adapters
    from transformers import BertModel

    model = BertModel.from_pretrained(base)
    adapters.init(model)
    model.load_adapter(str(folder), set_active=True, use_safetensors=True)
    return _encode(model.eval(), inputs, logits=False)


@pytest.mark.parametrize("lora", [
    {},
    {"rank_pattern": {"value": 2}, "alpha_pattern": {"query": 16}},  # per-module r and alpha
    {"use_rslora": True, "r": 3, "lora_alpha": 5, "layers_to_transform": [1],  # alpha/sqrt(r); layer 0 untouched
     "target_modules": ["query", "value", "intermediate.dense"]},
], ids=["plain", "rank_and_alpha_pattern", "rslora_one_layer"])
def test_peft_lora_converts_to_adapters_with_equal_outputs(tmp_path, base, inputs, lora):
    from transformers import BertModel

    peft_model = _peft_trained(base, tmp_path / "peft", inputs, **lora)
    expected = _encode(peft_model, inputs, logits=False)
    plain = _encode(BertModel.from_pretrained(base).eval(), inputs, logits=False)
    assert (expected - plain).abs().max() > 1e-3  # trained: the LoRA changes the output (100x the tolerance)

    imported = import_adapter("books", {"peft": str(tmp_path / "peft")}, base_model=base)
    assert imported.source["kind"] == "peft" and "adapter_model.safetensors" in imported.source["files"]
    assert imported.config["architecture"] == "lora" and imported.config["attn_matrices"] == ["q", "v"]
    assert imported.config["intermediate_lora"]
    assert imported.config["output_lora"] == ("target_modules" not in lora)
    actual = _adapters_hidden(base, imported.write(tmp_path / "out"), inputs)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)
    if "layers_to_transform" in lora:
        assert any("layer.0." in m for m in imported.source["zero_filled_modules"])


def test_peft_classifier_lora_needs_drop_modules_to_save_and_then_imports_the_body(tmp_path, base, inputs):
    _peft_trained(base, tmp_path / "peft", inputs, model_class="BertForSequenceClassification", steps=3,
                  task_type="SEQ_CLS")
    with pytest.raises(StoreError, match=r"modules_to_save = \['classifier', 'score'\].*drop_modules_to_save: true"):
        import_adapter("books", {"peft": str(tmp_path / "peft")}, base_model=base)
    imported = import_adapter("books", {"peft": str(tmp_path / "peft"), "drop_modules_to_save": True},
                              base_model=base)
    assert not imported.has_head and any("classifier" in k for k in imported.source["dropped"])


@pytest.fixture(scope="session")
def peft_folder(tmp_path_factory, base, inputs) -> Path:
    folder = tmp_path_factory.mktemp("peft") / "books"
    _peft_trained(base, folder, inputs, steps=1)
    return folder


def _edited(peft_folder: Path, tmp_path: Path, **changes) -> Path:
    folder = Path(shutil.copytree(peft_folder, tmp_path / "edited"))
    config = json.loads((folder / "adapter_config.json").read_text())
    config.update(changes)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("changes, message", [
    ({"use_dora": True}, r"use_dora = True: DoRA"),
    ({"lora_bias": True}, r"lora_bias = True: a trainable bias on lora_B"),
    ({"bias": "all"}, r"bias = 'all'.*retrain with bias='none'"),
    ({"peft_type": "IA3"}, r"peft_type is 'IA3'"),
    ({"init_lora_weights": "pissa"}, r"init_lora_weights = 'pissa' changes the base model's weights"),
    ({"fan_in_fan_out": True}, r"fan_in_fan_out is True in PEFT but False for .* in `adapters`"),
    ({"layer_replication": [[0, 2], [1, 2]]}, r"layer_replication = .*layer replication"),
    ({"rank_pattern": {"query": 2}}, r"has rank 4 in its weights but r = 2 in adapter_config\.json"),
    ({"base_model_name_or_path": "bert-base-uncased"}, r"records base model 'bert-base-uncased'"),
])
def test_peft_variants_and_inconsistencies_are_refused_by_name(tmp_path, base, peft_folder, changes, message):
    with pytest.raises(StoreError, match=message) as info:
        import_adapter("books", {"peft": str(_edited(peft_folder, tmp_path, **changes))}, base_model=base)
    assert "'books'" in str(info.value)


def test_peft_lora_on_modules_adapters_cannot_adapt_is_refused(tmp_path, base, inputs):
    _peft_trained(base, tmp_path / "peft", inputs, steps=1, target_modules=["query", "dense"])  # + attention.output
    with pytest.raises(StoreError, match=r"adapted module 'encoder\.layer\.0\.attention\.output\.dense'.*cannot adapt"):
        import_adapter("books", {"peft": str(tmp_path / "peft")}, base_model=base)


def test_peft_lora_for_another_base_is_named(tmp_path, minilm_path, peft_folder):
    wider = _bert(tmp_path / "tiny-bert", minilm_path, hidden_size=48, intermediate_size=96)
    with pytest.raises(StoreError, match=r"trained for another base model: module .* has lora_A \(4, 32\)"):
        import_adapter("books", {"peft": str(peft_folder)}, base_model=wider)
    deeper = _bert(tmp_path / "deep" / "tiny-bert", minilm_path, num_hidden_layers=1)
    with pytest.raises(StoreError, match=r"weights cover layers \[0, 1\] \(2 layers\).*num_hidden_layers 1"):
        import_adapter("books", {"peft": str(peft_folder)}, base_model=deeper)


def test_peft_truncated_weights_are_named(tmp_path, base, peft_folder):
    folder = _edited(peft_folder, tmp_path)
    path = folder / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(StoreError, match=r"adapter_model\.safetensors cannot be read .* truncated"):
        import_adapter("books", {"peft": str(folder)}, base_model=base)


def test_lora_adapters_from_two_initialisations_are_flagged_on_their_a_factors(base):
    from adapters import LoRAConfig

    from spaces.fsd import SignIndex
    from trainables.imports import initialisation_weights
    from trainables.lora import lora_delta_weights

    def lora(init_seed: int, data_seed: int) -> dict[str, torch.Tensor]:
        model = _adapters_model(base)
        torch.manual_seed(init_seed)  # A's initialisation; B starts at 0
        model.add_adapter(ADAPTER_NAME, config=LoRAConfig(r=4, alpha=8))
        g = torch.Generator().manual_seed(data_seed)
        out = {}
        for name, p in model.named_parameters():
            if f".{ADAPTER_NAME}." in name:  # "training": B learns data-specific signs, A moves a little
                step = torch.randn(p.shape, generator=g)
                out[name] = p.detach() + (0.5 * step if name.endswith("lora_B") else 1e-3 * step)
        return out

    adapters_ = {"books": lora(0, 10), "dvd": lora(0, 11), "kitchen": lora(7, 12)}
    init_index = SignIndex.from_weights({n: initialisation_weights(w) for n, w in adapters_.items()})
    report = shared_initialisation_check(init_index.matrix, list(init_index.names))
    assert {frozenset((a, b)) for a, b, _ in report.suspects} == {frozenset(("books", "kitchen")),
                                                                  frozenset(("dvd", "kitchen"))}
    # On ΔW every pair looks independent: ΔW cannot tell one initialisation from two.
    delta = SignIndex.from_weights({n: lora_delta_weights(w, scaling=2.0) for n, w in adapters_.items()}).matrix
    assert float(delta[0, 1]) > 0.4
