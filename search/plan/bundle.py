"""A serving plan as one bundle to ship, and evaluating a bundle again.

``export_bundle`` writes the chosen plan of a ``plan`` run (DESIGN.md, "Export format")::

    DIR/bodies/<body>/...      one folder per body, the export format of one mixture
                               (adapter_config.json, adapter.safetensors, heads/<d>/, mixture.json);
                               a group of one domain is that domain's own adapter
    DIR/heads/<domain>/...     every domain's head (head_config.json, model_head.safetensors)
    DIR/routing.json           domain -> {"body": "bodies/<body>", "head": "heads/<domain>"}
    DIR/plan.json              the plan run's record (groups, specs, validation and test
                               accuracies, the config) and the registered model version
    DIR/masks/<domain>.safetensors  a domain's sign mask over its body, 1 bit per parameter
                               (uint8 per parameter, numpy's packbits layout), where the plan uses one;
                               routing.json's domains.<d>.mask names it (mask_rescaler: EMR's scalar on
                               the masked delta), domains.<d>.rescaler holds the domain's scalar on its
                               body's adapter output (batchable: one multiply per row)
    DIR/init.safetensors       the adapters' shared initialisation, where a domain has a mask (a masked
                               domain is served ``init + mask * (body - init)``)

It is built in a hidden sibling folder and renamed into place, and registered as one version of
an ``mlflow.pyfunc`` model of the plan run (``search/tracking/registry.py``) that holds a copy.
``evaluate_bundle`` loads it as it is served (``trainables/bundle_predictor.py``: plain
``adapters`` calls, ``load_adapter`` per body, ``load_head`` per domain) and scores every
domain through its routed body and head, with its mask and rescaler where it has them
(:func:`add_domain_serving` gives a domain of a bundle its mask and rescaler).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

from search.settings.config import Config, updated
from search.workflows.export import check_output_dir, signmix_version
from search.plan.bodies import group_name, own_spec
from search.tracking.layout import KIND_TAG, MIXTURE_ARTIFACT, PLAN_ARTIFACT, PLAN_RUN_TAG
from search.tracking.registry import register_served_model
from search.tracking.tracker import open_config_experiment
from spaces.errors import TrackingError, UsageError
from trainables.data import encode_split, load_domain
from trainables.evaluate import target_metrics
from trainables.settings import DomainConfig
from trainables.store import AdapterStore
from trainables.bundle_predictor import INIT_FILE, domain_served  # noqa: F401  (served as evaluated)

ROUTING_FILE = "routing.json"
PLAN_FILE = "plan.json"
HEAD_FILES = ("head_config.json", "model_head.safetensors")
ADAPTER_FILES = ("adapter_config.json", "adapter.safetensors")
MASKS_DIR = "masks"

if TYPE_CHECKING:
    from torch import Tensor


def find_plan_run(client, experiment_id: str, run_id: str | None = None):
    """The newest finished plan run of the experiment, or the plan run ``run_id``."""
    if run_id is not None:
        run = client.get_run(run_id)
        if run.data.tags.get(KIND_TAG) != "plan":
            raise UsageError(f"run {run_id} is not a plan run (signmix.kind is "
                             f"{run.data.tags.get(KIND_TAG)!r}); give the run id that `signmix plan` printed")
        return run
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{KIND_TAG}` = 'plan' and "
                              "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise TrackingError("the experiment has no finished serving plan yet; run `signmix plan CONFIG` first")
    return runs[0]


def served_plan(record: dict, bodies: int | None = None) -> dict:
    """The plan a bundle serves: the plan run's chosen plan, or its best plan of ``bodies`` bodies
    (a point of the front), with its groups, their bodies and its logged accuracies."""
    if bodies is None:
        return record["chosen"]
    row = next((r for r in record["front"] if r["bodies"] == bodies), None)
    if row is None:
        raise UsageError(f"--bodies: got {bodies}, but the plan's front has plans of "
                         f"{[r['bodies'] for r in record['front']]} bodies; choose one of them")
    groups = []
    for g in row["groups"]:
        if len(g) == 1:
            groups.append({"domains": g, "kind": "own", "spec": own_spec(g[0], record["head"]).to_dict()})
        else:
            body = record["group_runs"][group_name(g)]
            serving = record.get("serving", {}).get(group_name(g), {})
            groups.append({"domains": g, "kind": "merged", "run_id": body["run_id"], "spec": body["spec"],
                           "serving": serving.get("option", "plain"), "serving_values": serving.get("domains", {})})
    return {"bodies": bodies, "groups": groups, **{k: row[k] for k in (
        "validation", "test", "test_low", "test_high", "validation_by_domain", "test_by_domain")}}


def export_bundle(cfg: Config, out: str | os.PathLike, *, run_id: str | None = None, bodies: int | None = None,
                  register: bool = True) -> tuple[Path, dict]:
    """Write the chosen plan (or the best plan of ``bodies`` bodies) of the newest (or the given)
    plan run as a bundle; returns the folder and its ``plan.json`` record, whose ``served`` is
    the plan the bundle serves."""
    out = Path(out).resolve()
    check_output_dir(out)
    client, experiment_id = open_config_experiment(cfg)
    run = find_plan_run(client, experiment_id, run_id)
    store = AdapterStore(cfg.store_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        with tempfile.TemporaryDirectory(prefix="signmix-plan-") as tmp:
            record = json.loads(Path(client.download_artifacts(run.info.run_id, f"{PLAN_ARTIFACT}/{PLAN_FILE}",
                                                               tmp)).read_text(encoding="utf-8"))
        chosen = record["served"] = served_plan(record, bodies)
        own_refit = [g["domains"][0] for g in chosen["groups"] if g["kind"] == "own" and record["head"] == "refit"]
        if own_refit:
            raise UsageError(f"the plan serves {own_refit} with their own adapters under refit heads, which the plan "
                             "run does not store; plan with search.head: own, or with plan.max_bodies small enough "
                             "that every domain shares a body")
        routing = {}
        for group in chosen["groups"]:
            body = group_name(group["domains"])
            folder = staging / "bodies" / body
            folder.parent.mkdir(parents=True, exist_ok=True)
            if group["kind"] == "merged":
                local = Path(client.download_artifacts(group["run_id"], MIXTURE_ARTIFACT, str(staging)))
                os.replace(local, folder)
            else:
                d = group["domains"][0]
                (folder / "heads" / d).mkdir(parents=True)
                for name in ADAPTER_FILES + HEAD_FILES:
                    shutil.copyfile(store.path(d) / name, folder / name)
                for name in HEAD_FILES:
                    shutil.copyfile(store.path(d) / name, folder / "heads" / d / name)
            (folder / "mixture.json").write_text(json.dumps(_body_record(cfg, record, group, store), indent=2),
                                                 encoding="utf-8")
            for d in group["domains"]:
                shutil.copytree(folder / "heads" / d, staging / "heads" / d)
                routing[d] = {"body": f"bodies/{body}", "head": f"heads/{d}"}
        (staging / ROUTING_FILE).write_text(json.dumps({"base_model": cfg.base_model, "domains": routing}, indent=2),
                                            encoding="utf-8")
        record = {**record, "signmix_version": signmix_version(), "bundle_of_plan_run": run.info.run_id}
        (staging / PLAN_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
        _write_serving(cfg, staging, chosen, store)  # after routing.json and plan.json: it reads the bundle
        if register:  # the registered version's model holds a copy of the bundle
            record["registered_model"] = register_served_model(
                client, name=cfg.registered_bundle_name, kind="bundle", experiment_id=run.info.experiment_id,
                run_id=run.info.run_id, folder=staging, example_domain=sorted(routing)[0],
                description=bundle_description(record),
                tags={PLAN_RUN_TAG: run.info.run_id, "signmix.bodies": str(chosen["bodies"]),
                      "signmix.domains": ",".join(sorted(routing))})
            (staging / PLAN_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out, record


def bundle_description(record: dict) -> str:
    """A registered bundle version's description: its bodies and their domains, its test accuracy."""
    served = record["served"]
    bodies = "\n".join(f"- body {i}: {', '.join(g['domains'])} ({'merged' if g['kind'] == 'merged' else 'own adapter'})"
                        for i, g in enumerate(served["groups"], 1))
    return (f"Serving bundle of {served['bodies']} bodies for {len(record['domains'])} domains "
            f"({', '.join(record['domains'])}); {record['head']} heads.\n\n{bodies}\n\n"
            f"Test accuracy (mean over domains, 95% interval): {served['test']:.4f} "
            f"[{served['test_low']:.4f}, {served['test_high']:.4f}]; validation {served['validation']:.4f}. "
            f"From plan run {record['bundle_of_plan_run']} of experiment {record['experiment']}.")


def _write_serving(cfg: Config, path: Path, served: dict, store) -> None:
    """Give every domain of a group that the plan serves with masks or rescalers its mask and scalar
    (:func:`add_domain_serving`); an EMR group's body becomes EMR's ``init + tau_uni``. The masks are
    computed again from the stored adapters, the shared initialisation and the body: the same inputs
    as the plan's serving trial, so the same masks."""
    from safetensors.torch import load_file, save_file

    from search.runtime.trial_inputs import shared_initialisation
    from trainables.serving_options import domain_mask, emr_body

    groups = [g for g in served["groups"] if g["kind"] == "merged" and g.get("serving", "plain") != "plain"]
    if not groups:
        return
    weights = {d: store.load_weights(d) for g in groups for d in g["domains"]}
    with_ties = updated(cfg, search=updated(cfg.search,
                                            merge_methods=list(dict.fromkeys([*cfg.search.merge_methods, "ties"]))))
    init = shared_initialisation(with_ties, weights)
    for group in groups:
        domains, option = list(group["domains"]), group["serving"]
        members = [weights[d] for d in domains]
        body_file = path / "bodies" / group_name(domains) / ADAPTER_FILES[1]
        body = load_file(str(body_file))
        if option == "emr":
            elected = emr_body(members, init)
            if set(elected) != set(body):
                raise UsageError(f"the stored adapters of {domains} do not fit the body {body_file}; retrain them or "
                                 "plan again")
            body = {k: elected[k].detach().cpu().contiguous() for k in body}
            save_file(body, str(body_file))
        for i, d in enumerate(domains):
            value = float(group["serving_values"][d]["value"])
            if option == "rescaled":
                add_domain_serving(path, d, rescaler=value)
            else:
                add_domain_serving(path, d, mask=domain_mask(option, members, init, body, i, value),
                                   mask_rescaler=value if option == "emr" else 1.0, init=init)


def _body_record(cfg: Config, record: dict, group: dict, store) -> dict:
    """One body's ``mixture.json``: what it mixes, how, which domains it serves and how they scored."""
    spec = group["spec"]
    domains = group["domains"]
    chosen = record["served"]
    return {
        **spec, "targets": domains, "kind": group["kind"], "mlflow_run_id": group.get("run_id"),
        # plain | rescaled | emr (the body is EMR's init + tau_uni, not the spec's) | tall: routing.json has each
        # domain's mask and scalars
        "serving": group.get("serving", "plain"), "serving_values": group.get("serving_values", {}),
        "metrics": {f"accuracy/{d}": chosen["validation_by_domain"][d] for d in domains},
        "test_metrics": {f"accuracy/{d}": chosen["test_by_domain"][d] for d in domains},
        "base_model": cfg.base_model, "adapter": cfg.adapter.model_dump(), "adapter_method": cfg.adapter.method,
        "domains": {d: cfg.domains[d].model_dump() for d in domains},
        "label_names": {d: store.meta(d)["label_names"] for d in domains},
        "evaluation": {"max_length": cfg.training.max_length, "batch_size": cfg.search.eval_batch_size,
                       "max_eval_examples": cfg.training.max_eval_examples, "seed": cfg.training.seed,
                       "dtype": cfg.search.eval_dtype, "trust_remote_code": cfg.trust_remote_code},
        "format": "adapters",
    }


def read_bundle(path: str | os.PathLike) -> tuple[dict, dict]:
    """``routing.json`` and ``plan.json`` of a bundle, every routed body and head checked present.

    Raises:
        UsageError: not a bundle, or its routing names a body or head that is not there.
    """
    path = Path(path)
    if not (path / ROUTING_FILE).is_file() or not (path / PLAN_FILE).is_file():
        raise UsageError(f"{path} is not a signmix bundle (no {ROUTING_FILE} and {PLAN_FILE}); "
                         "create one with `signmix export CONFIG --plan --out DIR`")
    routing = json.loads((path / ROUTING_FILE).read_text(encoding="utf-8"))
    plan = json.loads((path / PLAN_FILE).read_text(encoding="utf-8"))
    for domain, route in routing["domains"].items():
        for what, files in (("body", ADAPTER_FILES + ("mixture.json",)), ("head", HEAD_FILES)):
            folder = path / route[what]
            missing = [f for f in files if not (folder / f).is_file()]
            if missing:
                raise UsageError(f"{ROUTING_FILE}: domains.{domain}.{what} is {route[what]!r}, but {folder} lacks "
                                 f"{', '.join(missing)}; export the plan again with `signmix export CONFIG --plan "
                                 "--out DIR`, or fix the routing")
        for needed in ([route["mask"], INIT_FILE] if route.get("mask") else []):
            if not (path / needed).is_file():
                raise UsageError(f"{ROUTING_FILE}: domains.{domain} has a mask, but {path / needed} is not there; "
                                 "export the plan again, or fix the routing")
    return routing, plan


def evaluate_bundle(path: str | os.PathLike, split: str = "validation") -> dict:
    """Accuracy and macro-F1 of every domain of a bundle on ``split``, through its routed body and
    head: the bundle served as a request is (:class:`trainables.bundle_predictor.BundlePredictor`,
    plain ``adapters`` calls), each split batched as the search trial batches it.

    Returns ``{"routing": ..., "plan": ..., "metrics": {"accuracy/<d>": ..., "macro_f1/<d>": ...},
    "predictions": {d: [class of each row, ...]}}``.
    """
    from trainables.bundle_predictor import BundlePredictor, class_of

    path = Path(path)
    routing, plan = read_bundle(path)
    predictor = BundlePredictor(path)
    metrics: dict[str, float] = {}
    predictions: dict[str, list[int]] = {}
    for domain in predictor.domains:
        record = json.loads((path / routing["domains"][domain]["body"] / "mixture.json").read_text(encoding="utf-8"))
        ev = record["evaluation"]
        data = load_domain(domain, DomainConfig.model_validate(record["domains"][domain]), splits=(split,),
                           max_eval_examples=ev["max_eval_examples"], seed=ev["seed"],
                           trust_remote_code=ev["trust_remote_code"],
                           label_names=record.get("label_names", {}).get(domain))
        encoded = encode_split(predictor.tokenizer, data.splits[split], ev["max_length"])
        logits = predictor.predict_encoded(domain, encoded)
        preds = {row: class_of(values) for row, values in logits.items()}
        predictions[domain] = [preds[row] for row in range(len(encoded))]
        found = target_metrics({domain: preds}, {domain: encoded}, {domain: data.num_labels})
        metrics.update({k: v for k, v in found.items() if k.startswith(("accuracy/", "macro_f1/"))})
    return {"routing": routing, "plan": plan, "metrics": metrics, "predictions": predictions}


def add_domain_serving(path: str | os.PathLike, domain: str, *, mask: Mapping[str, Tensor] | None = None,
                       mask_rescaler: float = 1.0, rescaler: float | None = None,
                       init: Mapping[str, Tensor] | None = None) -> dict:
    """Give ``domain`` of bundle ``path`` its sign mask over its body and/or its rescaler; returns its route.

    Args:
        path: a bundle folder (:func:`export_bundle`).
        domain: a routed domain.
        mask: boolean per parameter of the body's ``adapter.safetensors`` (same names and shapes),
            written packed to ``masks/<domain>.safetensors``
            (:func:`trainables.domain_serving.pack_domain_mask`).
        mask_rescaler: EMR's scalar on the masked delta (``init + mask_rescaler * mask * (body -
            init)``, :func:`trainables.domain_serving.masked_body`); 1.0 for TALL. Only with a mask.
        rescaler: the scalar on the body's adapter output for this domain's rows
            (:func:`trainables.domain_serving.per_row_adapter_scale`), kept in ``routing.json``.
        init: the adapters' shared initialisation, written to ``init.safetensors`` the first time
            a mask is added (required then; later ones must not differ).
    """
    import math

    import torch
    from safetensors.torch import load_file, save_file

    from trainables.domain_serving import pack_domain_mask

    path = Path(path)
    routing, _ = read_bundle(path)
    if domain not in routing["domains"]:
        raise UsageError(f"domain {domain!r} is not in the bundle; it routes {sorted(routing['domains'])}")
    route = routing["domains"][domain]
    for what, value in (("rescaler", rescaler), ("mask_rescaler", mask_rescaler)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value)):
            raise UsageError(f"{what} must be a finite number, got {value!r}")
    if rescaler is not None:
        route["rescaler"] = float(rescaler)
    if mask is not None:
        body = load_file(str(path / route["body"] / "adapter.safetensors"))
        if init is not None:
            if (path / INIT_FILE).is_file():
                stored = load_file(str(path / INIT_FILE))
                if set(stored) != set(init) or any(not torch.equal(stored[k], init[k].cpu()) for k in stored):
                    raise UsageError(f"{path / INIT_FILE} holds another initialisation than the one given")
            else:
                save_file({k: t.detach().cpu().contiguous() for k, t in init.items()}, str(path / INIT_FILE))
        elif not (path / INIT_FILE).is_file():
            raise UsageError("a masked domain is served init + mask * (body - init): give init (the adapters' shared "
                             "initialisation) with the first mask")
        packed = pack_domain_mask(mask)
        if set(packed) != set(body) or any(m.shape != body[k].shape for k, m in mask.items()):
            raise UsageError(f"the mask of {domain!r} does not fit its body {route['body']}: it must have the "
                             "body's parameter names and shapes")
        (path / MASKS_DIR).mkdir(exist_ok=True)
        save_file(packed, str(path / MASKS_DIR / f"{domain}.safetensors"))
        route["mask"] = f"{MASKS_DIR}/{domain}.safetensors"
        route["mask_rescaler"] = float(mask_rescaler)
    elif mask_rescaler != 1.0:
        raise UsageError(f"mask_rescaler scales a masked delta; got {mask_rescaler} without a mask")
    (path / ROUTING_FILE).write_text(json.dumps(routing, indent=2), encoding="utf-8")
    return route


def logged_accuracy(plan: dict, split: str) -> dict[str, float]:
    """Each domain's accuracy the plan run logged for the bundle's plan on ``split``."""
    return dict(plan["served"]["validation_by_domain" if split == "validation" else "test_by_domain"])
