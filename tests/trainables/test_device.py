"""Which device a trial's model runs on, and that evaluation sends its batches there.

This machine has no GPU. Tests that can only check the CUDA branch with
``torch.cuda.is_available`` mocked (or with the ``meta`` device standing in for a GPU) say
``mocked_gpu`` in their names; tests/benchmarks/bench_gpu.py runs real GPU trials.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from tests_support import make_experiment  # noqa: E402

from trainables import evaluate  # noqa: E402
from trainables.data import encode_split, iter_batches, load_domain  # noqa: E402
from trainables.evaluate import MixtureModel, cast_model, mixture_model, predict  # noqa: E402
from trainables.model import adapter_config_for, load_encoder, model_device, trial_device  # noqa: E402
from trainables.robustness import fgsm_predict  # noqa: E402
from trainables.settings import AdapterConfig, DomainConfig  # noqa: E402
from trainables.store import ADAPTER_NAME, AdapterStore  # noqa: E402

CPU = torch.device("cpu")


def test_trial_device_is_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for gpu in (None, 0, 0.0, 0.25, 1, 2):
        assert trial_device(gpu) == CPU


def test_trial_device_on_this_machine_follows_torch():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert trial_device().type == expected
    assert trial_device(0) == CPU


def test_trial_device_follows_the_trials_gpu_request_mocked_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for gpu in (None, 0.25, 1, 2):
        assert trial_device(gpu) == torch.device("cuda")
    # Ray 2.60 leaves every GPU visible to a trial that asked for none: it stays on the CPU.
    for gpu in (0, 0.0):
        assert trial_device(gpu) == CPU


def test_model_device():
    assert model_device(torch.nn.Linear(2, 2)) == CPU
    assert model_device(torch.nn.Linear(2, 2, device="meta")).type == "meta"
    assert model_device(torch.nn.Module()) == CPU  # no parameters


class DeviceRecorder(torch.nn.Module):
    """A classifier whose one parameter lives on ``device``; it records the device of each
    input it gets and predicts class (sequence width % 2) on the CPU."""

    def __init__(self, device: str) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1, device=device))
        self.seen: list[set] = []

    def forward(self, **inputs):
        self.seen.append({(k, v.device.type) for k, v in inputs.items()})
        n, width = inputs["input_ids"].shape
        logits = torch.zeros(n, 2)
        logits[:, width % 2] = 1.0
        return SimpleNamespace(logits=logits)


@pytest.fixture(scope="module")
def encoded_books(tiny_bert, demo_domains):
    from transformers import AutoTokenizer

    data = load_domain("books", DomainConfig(path=str(demo_domains["books"])), splits=("validation",))
    return encode_split(AutoTokenizer.from_pretrained(tiny_bert), data.splits["validation"], 32), data


def test_predict_sends_every_batch_to_the_models_device_mocked_gpu(encoded_books):
    encoded, _ = encoded_books
    model = DeviceRecorder("meta")  # stands in for a model on a GPU
    preds = predict(model, encoded, 8, indices=[5, 0, 3, 9, 1])
    assert sorted(preds) == [0, 1, 3, 5, 9]
    assert model.seen and all({dev for _, dev in s} == {"meta"} for s in model.seen)
    assert all("labels" not in {k for k, _ in s} for s in model.seen)
    cpu_model = DeviceRecorder("cpu")
    assert predict(cpu_model, encoded, 8, indices=[5, 0, 3, 9, 1]) == preds
    assert all({dev for _, dev in s} == {"cpu"} for s in cpu_model.seen)


@pytest.fixture(scope="module")
def adapter_model(tiny_bert, demo_domains):
    """The tiny BERT with a seeded seq_bn adapter and head (untrained), on the CPU."""
    data = load_domain("books", DomainConfig(path=str(demo_domains["books"])), splits=("validation",))
    model, _ = load_encoder(tiny_bert)
    torch.manual_seed(0)
    model.add_adapter(ADAPTER_NAME, config=adapter_config_for(AdapterConfig(method="seq_bn", reduction_factor=4)))
    model.add_classification_head(ADAPTER_NAME, num_labels=data.num_labels,
                                  id2label=dict(enumerate(data.label_names)))
    model.set_active_adapters(ADAPTER_NAME)
    model.eval()
    return model


def test_predict_on_the_cpu_gives_the_predictions_of_a_plain_loop(adapter_model, encoded_books):
    encoded, _ = encoded_books
    expected = {}
    with torch.no_grad():
        for rows, batch in iter_batches(encoded, 8):
            batch.pop("labels")
            for row, p in zip(rows, adapter_model(**batch).logits.argmax(dim=-1).tolist()):
                expected[row] = p
    assert predict(adapter_model, encoded, 8) == expected
    rows = [7, 2, 11]
    assert predict(adapter_model, encoded, 2, indices=rows) == {r: expected[r] for r in rows}
    assert fgsm_predict(adapter_model, encoded, 8, 0.0) == expected


@pytest.fixture(scope="module")
def one_adapter_store(tmp_path_factory, adapter_model, encoded_books):
    _, data = encoded_books
    store = AdapterStore(tmp_path_factory.mktemp("device-store"))
    staged = store.staging_dir("books")
    adapter_model.save_adapter(str(staged), ADAPTER_NAME, use_safetensors=True)
    store.commit("books", staged, {"domain": "books", "fingerprint": "x", "base_model": "tiny",
                                   "adapter": {"method": "seq_bn", "reduction_factor": 4},
                                   "label_names": list(data.label_names), "num_labels": data.num_labels})
    return store


def test_mixture_model_on_the_cpu_evaluates_and_saves_cpu_float32(tiny_bert, one_adapter_store, adapter_model,
                                                                  encoded_books, tmp_path):
    from safetensors.torch import load_file

    encoded, _ = encoded_books
    mixer = MixtureModel(base_model=tiny_bert, store=one_adapter_store, heads=["books"], device="cpu")
    assert mixer.device == CPU and model_device(mixer.model) == CPU
    weights = {n: w.clone() for n, w in one_adapter_store.load_weights("books").items()}
    mixer.set_weights(weights)
    mixer.use_head("books")
    assert predict(mixer.model, encoded, 8) == predict(adapter_model, encoded, 8)
    mixer.save(tmp_path / "out", ["books"])
    saved = load_file(str(tmp_path / "out" / "adapter.safetensors"))
    assert saved and all(t.device == CPU and t.dtype == torch.float32 for t in saved.values())
    assert all(torch.equal(saved[n], weights[n]) for n in weights)


def test_mixture_model_stays_on_the_cpu_for_a_cpu_trial_mocked_gpu(monkeypatch, tiny_bert, one_adapter_store):
    """gpu: 0 on a machine with CUDA: the worker's model stays on the CPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(evaluate, "_MIXERS", {})
    experiment = make_experiment(tiny_bert, one_adapter_store.root, gpu=0)
    mixer = mixture_model(experiment, str(one_adapter_store.root))
    assert mixer.device == CPU and model_device(mixer.model) == CPU


def test_mixture_model_asks_for_the_trials_gpu_mocked_gpu(monkeypatch, tiny_bert, one_adapter_store):
    """gpu: 0.25: the model is built on trial_device(0.25), cached per device."""
    asked = []

    def fake_trial_device(gpu=None):
        asked.append(gpu)
        return CPU  # no CUDA here to build on

    monkeypatch.setattr(evaluate, "trial_device", fake_trial_device)
    monkeypatch.setattr(evaluate, "_MIXERS", {})
    experiment = make_experiment(tiny_bert, one_adapter_store.root, gpu=0.25)
    first = mixture_model(experiment, str(one_adapter_store.root))
    assert asked == [0.25]
    assert mixture_model(experiment, str(one_adapter_store.root)) is first
    assert list(evaluate._MIXERS)[0][-1] == "cpu"


def test_cast_model_moves_and_casts():
    module = torch.nn.Linear(3, 2)
    cast_model(module, "bfloat16", "meta")
    assert module.weight.dtype == torch.bfloat16 and module.weight.device.type == "meta"
    module = torch.nn.Linear(3, 2)
    cast_model(module, "bfloat16")
    assert module.weight.device == CPU and module.weight.dtype == torch.bfloat16
