"""Serving a bundle or one exported mixture: each row of a request through its domain's body and head.

A folder is a plan's bundle (``routing.json``: domain -> body folder and head folder) or one
exported mixture (``mixture.json``: every target through the one body, its head under
``heads/<target>``). :class:`BundlePredictor` loads every body and head into one model with
plain ``adapters`` calls and predicts rows of (domain, text): the rows of a domain go through
that domain's :class:`DomainRoute` in batches sorted by length, as
:func:`trainables.evaluate.predict` batches a split. ``signmix evaluate`` scores bundles
through :meth:`BundlePredictor.predict_encoded`, so a domain's whole split, sent as one
request, is predicted exactly as it was scored.

No MLflow here: ``search/tracking/served_model.py`` wraps this for ``mlflow.pyfunc``.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from spaces.errors import UsageError
from trainables.data import EncodedSplit, iter_batches
from trainables.evaluate import HEAD_FILES, cast_model
from trainables.model import load_encoder, model_device

ROUTING_FILE = "routing.json"
MIXTURE_FILE = "mixture.json"
ADAPTER_FILES = ("adapter_config.json", "adapter.safetensors")
INIT_FILE = "init.safetensors"  # a bundle's shared initialisation, where a domain is served through a mask
PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")


@dataclass(frozen=True)
class DomainRoute:
    """Where one domain's rows go: its body (a folder of the bundle) and head, and how it was evaluated.

    A later per-domain step of a body (a sign mask, a rescaler) belongs here, beside the body."""

    domain: str
    body: str  # folder of the body, relative to the bundle ("." for a single export)
    head: str  # folder of the domain's head, relative to the bundle
    label_names: tuple[str, ...]
    max_length: int
    batch_size: int
    serving: dict  # the domain's mask and rescalers over its body (routing.json: mask, mask_rescaler, rescaler)


@dataclass(frozen=True)
class Prediction:
    """One row's answer: the label and every class's probability, or why there is none."""

    label: str | None
    probabilities: dict[str, float] | None
    error: str | None = None


def read_routes(path: str | Path) -> tuple[dict, dict[str, DomainRoute]]:
    """The folder's evaluation settings (base model, dtype, ...) and each served domain's route.

    Raises:
        UsageError: the folder is neither a bundle nor an export, or a routed file is missing.
    """
    path = Path(path)
    if (path / ROUTING_FILE).is_file():
        routing = json.loads((path / ROUTING_FILE).read_text(encoding="utf-8"))["domains"]
        pairs = [(d, r["body"], r["head"]) for d, r in sorted(routing.items())]
        serving = {d: {k: r[k] for k in ("mask", "mask_rescaler", "rescaler") if r.get(k) is not None}
                   for d, r in routing.items()}
    elif (path / MIXTURE_FILE).is_file():
        record = json.loads((path / MIXTURE_FILE).read_text(encoding="utf-8"))
        pairs = [(t, ".", f"heads/{t}") for t in record["targets"]]
        serving = {}
    else:
        raise UsageError(f"{path} is neither a signmix bundle ({ROUTING_FILE}) nor an export ({MIXTURE_FILE}); "
                         "create one with `signmix export CONFIG --out DIR` (add --plan for a bundle)")
    routes, settings = {}, None
    for domain, body, head in pairs:
        record = json.loads((path / body / MIXTURE_FILE).read_text(encoding="utf-8")) \
            if (path / body / MIXTURE_FILE).is_file() else None
        weights = PEFT_FILES if record and record.get("format") == "peft" else ADAPTER_FILES
        missing = [f"{body}/{f}" for f in (MIXTURE_FILE, *weights) if not (path / body / f).is_file()]
        missing += [f"{head}/{f}" for f in HEAD_FILES if not (path / head / f).is_file()]
        if serving.get(domain, {}).get("mask"):
            missing += [f for f in (serving[domain]["mask"], INIT_FILE) if not (path / f).is_file()]
        if missing:
            raise UsageError(f"{path} lacks {', '.join(missing)} (domain {domain}); export it again with "
                             "`signmix export`")
        ev = record["evaluation"]
        settings = settings or {"base_model": record["base_model"], "dtype": ev.get("dtype", "float32"),
                                "trust_remote_code": ev["trust_remote_code"]}
        routes[domain] = DomainRoute(domain=domain, body=body, head=head, max_length=ev["max_length"],
                                     batch_size=ev["batch_size"], serving=serving.get(domain, {}),
                                     label_names=tuple(record.get("label_names", {}).get(domain) or ()))
    return settings, routes


class BundlePredictor:
    """Every body and head of a bundle (or export) in one ``adapters`` model, rows routed by domain."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.settings, self.routes = read_routes(self.path)
        self.model, self.tokenizer = load_encoder(self.settings["base_model"],
                                                  trust_remote_code=self.settings["trust_remote_code"])
        self._bodies: dict[str, str] = {}  # body folder -> adapter name in the model
        for route in self.routes.values():
            if route.body not in self._bodies:
                self._bodies[route.body] = self._load_body(route.body, f"body_{len(self._bodies)}")
            self.model.load_head(str(self.path / route.head), load_as=_head_name(route.domain), use_safetensors=True)
        cast_model(self.model, self.settings["dtype"])

    def _load_body(self, body: str, name: str) -> str:
        folder = self.path / body
        record = json.loads((folder / MIXTURE_FILE).read_text(encoding="utf-8"))
        if record.get("format") != "peft":
            return self.model.load_adapter(str(folder), use_safetensors=True, with_head=False, load_as=name)
        from trainables.imports.peft_lora import read_peft_lora

        # PEFT's LoRA, converted exactly into `adapters`' form, as `signmix evaluate` reads it
        with tempfile.TemporaryDirectory(prefix="signmix-serve-") as converted:
            written = read_peft_lora(folder, label=str(folder), base_model=record["base_model"], check_name=False,
                                     trust_remote_code=self.settings["trust_remote_code"]).write(converted)
            return self.model.load_adapter(str(written), use_safetensors=True, with_head=False, load_as=name)

    @property
    def domains(self) -> list[str]:
        return sorted(self.routes)

    def use(self, domain: str):
        """The model set up for ``domain``: its body active, its head the active head."""
        route = self.routes[domain]
        self.model.set_active_adapters(self._bodies[route.body])
        self.model.active_head = _head_name(domain)
        return self.model

    def predict_encoded(self, domain: str, encoded: EncodedSplit) -> dict[int, list[float]]:
        """Row -> logits of ``domain``'s head for each row of ``encoded``, batched as the search evaluates."""
        import torch

        model, route = self.use(domain), self.routes[domain]
        device = model_device(model)
        logits: dict[int, list[float]] = {}
        # the domain's mask and rescaler apply to its rows only
        with domain_served(model, self._bodies[route.body], self.path, route.serving), torch.inference_mode():
            for rows, batch in iter_batches(encoded, route.batch_size):
                batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
                for row, values in zip(rows, model(**batch).logits.float().tolist()):
                    logits[row] = values
        return logits

    def encode(self, domain: str, texts: Sequence[str], pairs: Sequence[str | None] | None = None) -> EncodedSplit:
        """``texts`` (and text pairs) tokenised as ``signmix evaluate`` tokenises ``domain``'s split."""
        route = self.routes[domain]
        enc = self.tokenizer(list(texts), [p or "" for p in pairs] if pairs is not None else None,
                             truncation=True, max_length=route.max_length, padding=False)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        return EncodedSplit(input_ids=[list(x) for x in enc["input_ids"]],
                            token_type_ids=[list(x) for x in enc["token_type_ids"]] if "token_type_ids" in enc else None,
                            labels=[0] * len(texts), pad_token_id=int(pad))

    def predict(self, domains: Sequence[str], texts: Sequence[str],
                pairs: Sequence[str | None] | None = None) -> list[Prediction]:
        """One :class:`Prediction` per row, in the rows' order; a row of a domain this folder does not
        serve gets an error that names the domains it serves (the other rows are predicted)."""
        import torch

        if len(domains) != len(texts) or (pairs is not None and len(pairs) != len(texts)):
            raise UsageError(f"every row needs a domain and a text: got {len(domains)} domains, {len(texts)} texts")
        out: list[Prediction | None] = [None] * len(texts)
        by_domain: dict[str, list[int]] = {}
        for i, domain in enumerate(domains):
            by_domain.setdefault(str(domain), []).append(i)
        for domain, rows in by_domain.items():
            if domain not in self.routes:
                error = (f"unknown domain {domain!r}: this model serves {', '.join(self.domains)}; "
                         "send one of them in the 'domain' column")
                for i in rows:
                    out[i] = Prediction(label=None, probabilities=None, error=error)
                continue
            names = self.routes[domain].label_names
            encoded = self.encode(domain, [texts[i] for i in rows], None if pairs is None else [pairs[i] for i in rows])
            for j, values in self.predict_encoded(domain, encoded).items():
                probs = torch.softmax(torch.tensor(values), dim=-1).tolist()
                out[rows[j]] = Prediction(label=_label(names, class_of(values)), probabilities={
                    _label(names, c): round(p, 6) for c, p in enumerate(probs)})
        return out  # type: ignore[return-value]


@contextlib.contextmanager
def domain_served(model, name: str, path: Path, route: dict):
    """Within the block, adapter ``name`` (a body of bundle ``path``) serves as ``route``'s domain: its mask
    written into the adapter's weights (restored afterwards) and its rescaler on the adapter's output."""
    import torch
    from safetensors.torch import load_file

    from trainables.domain_serving import masked_body, per_row_adapter_scale, unpack_domain_mask

    with contextlib.ExitStack() as stack:
        if route.get("mask"):
            params = {n: p for n, p in model.named_parameters() if f".adapters.{name}." in n}
            body = {n: p.detach().clone() for n, p in params.items()}
            # the files name the adapter as it was saved; the model as it was loaded (load_as)
            saved = load_file(str(path / route["mask"]))
            stored = {_param_name(k, name): t for k, t in saved.items()}
            init = {_param_name(k, name): t for k, t in load_file(str(path / INIT_FILE)).items()}
            served = masked_body(init, body, unpack_domain_mask(stored, body), float(route.get("mask_rescaler", 1.0)))
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(served[n])

            def restore():
                with torch.no_grad():
                    for n, p in params.items():
                        p.copy_(body[n])
            stack.callback(restore)
        if route.get("rescaler") is not None:
            stack.enter_context(per_row_adapter_scale(model, float(route["rescaler"]), adapter_name=name))
        yield


def _param_name(key: str, name: str) -> str:
    """The model's parameter name of a saved adapter's key, for the adapter loaded as ``name``."""
    head, sep, tail = key.partition(".adapters.")
    return f"{head}{sep}{name}.{tail.split('.', 1)[1]}" if sep else key


def class_of(logits: Sequence[float]) -> int:
    """The predicted class: the largest logit, the first among equals (as ``torch.argmax``)."""
    return max(range(len(logits)), key=lambda c: (logits[c], -c))


def _head_name(domain: str) -> str:
    return f"head_{domain}"


def _label(names: Sequence[str], index: int) -> str:
    return names[index] if index < len(names) else str(index)
