"""A bundle that carries per-domain sign masks and rescalers: written, read back, evaluated as it was served.

The bundle is written by hand (one body shared by two demo domains over the tiny random BERT):
no Ray, no MLflow. The reference for a masked and rescaled domain is a plain bundle whose body
for that domain is the domain's weights made by hand: ``init + r * mask * (body - init)`` with
the up-projections scaled by the output rescaler.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from search.plan.bundle import (
    INIT_FILE,
    ROUTING_FILE,
    add_domain_serving,
    domain_served,
    evaluate_bundle,
    read_bundle,
)
from spaces.errors import UsageError
from trainables.domain_serving import adapter_up_modules, emr_merge, masked_body, unpack_domain_mask
from trainables.model import adapter_config_for, load_encoder
from trainables.settings import AdapterConfig, DomainConfig
from trainables.store import ADAPTER_NAME

DOMAINS = ("books", "kitchen")


def adapter_params(model, name: str = ADAPTER_NAME) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if f".adapters.{name}." in n}


def write_body(model, folder: Path, weights: dict[str, torch.Tensor], record: dict) -> None:
    with torch.no_grad():
        for n, p in adapter_params(model).items():
            p.copy_(weights[n])
    folder.mkdir(parents=True, exist_ok=True)
    model.save_adapter(str(folder), ADAPTER_NAME, with_head=False, use_safetensors=True)
    (folder / "mixture.json").write_text(json.dumps(record), encoding="utf-8")


@pytest.fixture(scope="module")
def emr_bundle(tmp_path_factory, tiny_bert, demo_domains):
    """A bundle of one EMR body serving books and kitchen, plus what made it (init, members' masks, rescalers)."""
    root = tmp_path_factory.mktemp("bundle")
    model, _ = load_encoder(tiny_bert)
    torch.manual_seed(0)
    model.add_adapter(ADAPTER_NAME, config=adapter_config_for(AdapterConfig(method="seq_bn", reduction_factor=4)))
    model.set_active_adapters(ADAPTER_NAME)
    init = {n: p.detach().clone() for n, p in adapter_params(model).items()}
    g = torch.Generator().manual_seed(1)
    members = [{n: t + 0.5 * torch.randn(t.shape, generator=g) for n, t in init.items()} for _ in DOMAINS]
    body, masks, rescalers = emr_merge(members, init)
    record = {"base_model": tiny_bert, "domains": {d: DomainConfig(path=str(demo_domains[d])).model_dump() for d in DOMAINS},
              "evaluation": {"max_length": 32, "batch_size": 8, "max_eval_examples": None, "seed": 0,
                             "dtype": "float32", "trust_remote_code": False}}
    write_body(model, root / "bodies" / "shared", body, record)
    routing = {}
    for d in DOMAINS:
        model.add_classification_head(f"head_{d}", num_labels=2)
        (root / "heads" / d).mkdir(parents=True)
        model.save_head(str(root / "heads" / d), f"head_{d}", use_safetensors=True)
        routing[d] = {"body": "bodies/shared", "head": f"heads/{d}"}
    (root / ROUTING_FILE).write_text(json.dumps({"base_model": tiny_bert, "domains": routing}), encoding="utf-8")
    (root / "plan.json").write_text(json.dumps({"served": {}}), encoding="utf-8")
    return {"root": root, "model": model, "init": init, "body": body, "masks": masks, "rescalers": rescalers,
            "record": record}


def served_copy(emr_bundle, tmp_path, name: str, output_rescaler: float) -> Path:
    """The bundle with books given EMR's mask and rescaler and an output rescaler."""
    out = tmp_path / name
    shutil.copytree(emr_bundle["root"], out)
    add_domain_serving(out, "books", mask=emr_bundle["masks"][0], mask_rescaler=emr_bundle["rescalers"][0],
                       rescaler=output_rescaler, init=emr_bundle["init"])
    return out


def test_a_bundle_carries_a_domains_packed_mask_and_its_rescalers(emr_bundle, tmp_path):
    out = served_copy(emr_bundle, tmp_path, "served", 0.7)
    routing, _ = read_bundle(out)
    route = routing["domains"]["books"]
    assert route == {"body": "bodies/shared", "head": "heads/books", "rescaler": 0.7,
                     "mask": "masks/books.safetensors", "mask_rescaler": emr_bundle["rescalers"][0]}
    assert routing["domains"]["kitchen"] == {"body": "bodies/shared", "head": "heads/kitchen"}
    from safetensors.torch import load_file

    packed = load_file(str(out / route["mask"]))
    body = load_file(str(out / "bodies" / "shared" / "adapter.safetensors"))
    mask = unpack_domain_mask(packed, body)
    assert all(torch.equal(mask[k], emr_bundle["masks"][0][k]) for k in body)
    parameters = sum(t.numel() for t in body.values())
    assert sum(t.numel() for t in packed.values()) == sum((t.numel() + 7) // 8 for t in body.values())
    assert sum(t.numel() for t in packed.values()) <= parameters * 4 / 32 + len(body)  # 1/32 of float32, per tensor
    (out / INIT_FILE).unlink()
    with pytest.raises(UsageError, match="has a mask, but"):
        read_bundle(out)


def test_evaluating_a_masked_rescaled_domain_reproduces_its_weights_made_by_hand(emr_bundle, tmp_path):
    served = evaluate_bundle(served_copy(emr_bundle, tmp_path, "served", 0.7))["metrics"]
    plain = evaluate_bundle(emr_bundle["root"])["metrics"]
    # the reference: books routed to a body that holds its served weights, up-projections scaled by 0.7
    reference = tmp_path / "reference"
    shutil.copytree(emr_bundle["root"], reference)
    model = emr_bundle["model"]
    weights = masked_body(emr_bundle["init"], emr_bundle["body"], emr_bundle["masks"][0], emr_bundle["rescalers"][0])
    for n in weights:
        if ".adapter_up." in n:
            weights[n] = weights[n] * 0.7
    write_body(model, reference / "bodies" / "books_alone", weights, emr_bundle["record"])
    routing = json.loads((reference / ROUTING_FILE).read_text())
    routing["domains"]["books"]["body"] = "bodies/books_alone"
    (reference / ROUTING_FILE).write_text(json.dumps(routing))
    by_hand = evaluate_bundle(reference)["metrics"]
    assert served == by_hand
    # kitchen, evaluated on the same body after books, finds the body as it was
    assert served["accuracy/kitchen"] == plain["accuracy/kitchen"]


def test_a_served_domain_has_the_logits_of_its_weights_and_the_body_comes_back(emr_bundle, tmp_path):
    out = served_copy(emr_bundle, tmp_path, "served", 1.6)
    routing, _ = read_bundle(out)
    model, _ = load_encoder(emr_bundle["record"]["base_model"])
    name = model.load_adapter(str(out / "bodies" / "shared"), load_as="body_0", with_head=False, use_safetensors=True)
    model.set_active_adapters(name)
    model.add_classification_head("probe", num_labels=2)
    model.eval()
    inputs = {"input_ids": torch.randint(1, 1000, (4, 12), generator=torch.Generator().manual_seed(0))}
    with torch.inference_mode():
        plain = model(**inputs).logits
    with domain_served(model, name, out, routing["domains"]["books"]), torch.inference_mode():
        served = model(**inputs).logits
    with torch.inference_mode():
        assert torch.equal(model(**inputs).logits, plain)  # weights restored, hooks removed
    weights = masked_body(emr_bundle["init"], emr_bundle["body"], emr_bundle["masks"][0], emr_bundle["rescalers"][0])
    with torch.no_grad():
        for n, p in adapter_params(model, name).items():
            p.copy_(weights[n.replace(".adapters.body_0.", f".adapters.{ADAPTER_NAME}.")])
        for module in adapter_up_modules(model, name):
            module.weight.mul_(1.6)
            module.bias.mul_(1.6)
    with torch.inference_mode():
        by_hand = model(**inputs).logits
    torch.testing.assert_close(served, by_hand, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(served, plain, atol=1e-4)


@pytest.mark.parametrize("kwargs,message", [
    ({"rescaler": float("nan")}, "rescaler must be a finite number"),
    ({"mask_rescaler": 2.0}, "without a mask"),
    ({"mask": "first", "init": None}, "give init"),
    ({"mask": "truncated", "init": "init"}, "does not fit its body"),
])
def test_add_domain_serving_refuses_what_would_not_serve(emr_bundle, tmp_path, kwargs, message):
    out = tmp_path / "bad"
    shutil.copytree(emr_bundle["root"], out)
    mask = emr_bundle["masks"][0]
    given = dict(kwargs)
    if given.get("mask") == "first":
        given["mask"] = mask
    elif given.get("mask") == "truncated":
        given["mask"] = dict(list(mask.items())[1:])
    if given.get("init") == "init":
        given["init"] = emr_bundle["init"]
    with pytest.raises(UsageError, match=message):
        add_domain_serving(out, "books", **given)
    with pytest.raises(UsageError, match="is not in the bundle"):
        add_domain_serving(out, "movies", rescaler=1.0)
