"""Export a mixture as a normal ``adapters`` adapter, and evaluate an export.

The export directory (DESIGN.md, "Export format")::

    DIR/adapter_config.json  adapter.safetensors        the mixed, pruned adapter
        head_config.json     model_head.safetensors     the first target's head
        heads/<target>/...                              every target's head
        mixture.json                                    what it is and how it scored

``model.load_adapter(DIR)`` gives a ready classifier for the first target; the other
targets' heads load with ``model.load_head(DIR/heads/<target>)``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from mlflow_server.network import check_writable
from search.settings.config import Config
from search.workflows.confirmation import confirmed_choice
from search.settings.objectives import DEFAULT_ROBUSTNESS, pick_from_pareto_front, robustness_metric, selection_rule
from search.tracking.layout import (
    KEY_TAG,
    KIND_TAG,
    MIXTURE_ARTIFACT,
    STATUS_TAG,
    merge_parameters_record,
    spec_from_run,
)
from search.tracking.registry import register_served_model
from search.tracking.tracker import open_config_experiment
from spaces.errors import TrackingError, UsageError
from trainables.example_correctness import VALIDATION_CORRECTNESS_FILE
from trainables.data import encode_split, load_domain
from trainables.evaluate import target_metrics
from trainables.peft_export import write_peft_lora
from trainables.settings import DomainConfig
from trainables.store import AdapterStore

logger = logging.getLogger(__name__)

MIXTURE_FILE = "mixture.json"


def signmix_version() -> str:
    try:
        return version("signmix")
    except PackageNotFoundError:
        return "unknown"


def find_best_run(client, experiment_id: str, parent_run_id: str | None = None, *, rule: str = "accuracy",
                  robustness: str = DEFAULT_ROBUSTNESS):
    """The best evaluated mixture of an experiment (or of one search).

    ``rule`` "accuracy": the highest mean accuracy. With robustness as a second objective,
    the choice is made on the Pareto front of (accuracy, ``robustness``: FGSM's or the black-box
    attack's mean robust accuracy): "robust_accuracy" takes its most robust mixture, "balanced"
    the one with the highest mean of the two.
    Among equals: the fewest members, then the earliest.
    """
    where = f"tags.`{STATUS_TAG}` = 'evaluated' and tags.`{KIND_TAG}` = 'mixture'"
    if parent_run_id:
        where += f" and tags.`mlflow.parentRunId` = '{parent_run_id}'"
    order = ["metrics.accuracy_mean DESC", "metrics.k ASC", "attributes.start_time ASC"]
    if rule == "accuracy":
        runs = client.search_runs([experiment_id], filter_string=where, order_by=order, max_results=1)
    else:
        runs = client.search_runs([experiment_id], filter_string=where, order_by=order, max_results=50000)
        runs = [pick_from_pareto_front(runs, rule, robustness)] if runs else []
    if not runs or runs[0] is None:
        raise TrackingError("the experiment has no evaluated mixture yet; run `signmix search CONFIG` first")
    return runs[0]


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def check_output_dir(out: Path) -> None:
    """Refuse to write into an existing non-empty folder or an unwritable place (writes nothing)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"the export folder {out} exists and is not empty; choose a new --out or remove it")
    check_writable(out.parent, what="the folder of the export", fix="choose another --out")


EXPORT_FORMATS: dict[str, str] = {
    "adapters": "an `adapters` adapter folder (model.load_adapter) with the targets' heads",
    "peft": "a PEFT LoRA folder (PeftModel.from_pretrained on AutoModel), LoRA mixtures only; heads under heads/",
}


def export_mixture(cfg: Config, out: str | os.PathLike, *, run_id: str | None = None,
                   register: bool = True, format: str = "adapters") -> tuple[Path, dict]:
    """Write the best (or the given) mixture to ``out`` in ``format`` (:data:`EXPORT_FORMATS`);
    returns the folder and its record."""
    if format not in EXPORT_FORMATS:
        raise UsageError(f"--format: got {format!r}; allowed: {', '.join(EXPORT_FORMATS)}")
    out = Path(out).resolve()
    check_output_dir(out)
    client, experiment_id = open_config_experiment(cfg)
    if run_id is None:
        run = find_best_run(client, experiment_id, rule=selection_rule(cfg.search.objectives, cfg.search.pareto_rule),
                            robustness=robustness_metric(cfg.search.objectives))
    else:
        from mlflow.exceptions import MlflowException

        try:
            run = client.get_run(run_id)
        except MlflowException as exc:
            # Only "not found" (or not a run id at all) is the user's --run-id; anything else (an
            # outage is a TrackingError from the retrying client) is a runtime failure.
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise TrackingError(f"MLflow could not read run {run_id!r}: {_first_line(exc)}") from exc
            raise UsageError(f"no MLflow run {run_id!r} in {cfg.experiment_name!r}: {_first_line(exc)}") from exc
        if run.data.tags.get(STATUS_TAG) != "evaluated":
            raise UsageError(f"run {run_id} is a {run.data.tags.get(STATUS_TAG, 'non-mixture')!r} run; "
                             "only evaluated mixtures have weights to export")

    # The tie rule may export the runner-up or the targets alone; the test split confirms it.
    run, confirmation = confirmed_choice(cfg, client, experiment_id, run, explicit=run_id is not None)
    p, metrics = run.data.params, run.data.metrics
    spec = spec_from_run(run)
    targets = list(spec.targets)
    record = {
        # Logged weights are rounded to 6 digits: the record keeps them as logged, so that
        # the export evaluates the very mixture whose metrics it reports.
        "members": list(spec.members), "weights": [float(w) for w in p["weights"].split(",")],
        "targets": targets,
        "prune_method": spec.prune_method, "prune_ratio": spec.prune_ratio,
        "prune_scope": spec.prune_scope, "prune_when": spec.prune_when, "prune_layers": spec.prune_layers,
        # How the members were merged and which heads the export carries.
        "merge_method": spec.merge_method, "merge_parameters": merge_parameters_record(spec),
        "head": spec.head,
        "fsd": metrics.get("fsd"), "fsd_measure": p["fsd_measure"], "strategy": p["strategy"],
        "metrics": {k: v for k, v in metrics.items()
                    if k.startswith(("accuracy", "robust_accuracy", "bb_", "macro_f1", "sparsity"))},
        "objectives": list(cfg.search.objectives),
        "selected_by": selection_rule(cfg.search.objectives, cfg.search.pareto_rule),
        "base_model": cfg.base_model,
        "adapter": cfg.adapter.model_dump(),
        "adapter_method": cfg.adapter.method,
        "domains": {t: cfg.domains[t].model_dump() for t in targets},
        "label_names": {t: AdapterStore(cfg.store_path).meta(t)["label_names"] for t in targets},
        "evaluation": {"max_length": cfg.training.max_length, "batch_size": cfg.search.eval_batch_size,
                       "max_eval_examples": cfg.training.max_eval_examples, "seed": cfg.training.seed,
                       "dtype": cfg.search.eval_dtype,
                       "trust_remote_code": cfg.trust_remote_code},
        "format": format,
        "lora_merge": cfg.search.lora_merge,  # how LoRA members were merged (LoRA mixtures only)
        # where imported members came from (domains.<d>.adapter): kind, location, file hashes
        "sources": {m: meta["source"] for m in p["members"].split(",")
                    if (meta := AdapterStore(cfg.store_path).meta(m)).get("source")},
        "signmix_version": signmix_version(),
        "mlflow_run_id": run.info.run_id,
        "mlflow_experiment": cfg.experiment_name,
        "mixture_key": run.data.tags.get(KEY_TAG),
        # Test accuracies with 95% intervals, McNemar vs each target's own adapter, baselines
        # (search/workflows/confirmation_decision.py); None when search.confirm is off.
        "confirmation": confirmation,
    }
    # Build in a sibling temp folder, then rename: no half-written export on any failure.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        local = client.download_artifacts(run.info.run_id, MIXTURE_ARTIFACT, str(staging))
        for item in Path(local).iterdir():
            shutil.move(str(item), staging / item.name)
        Path(local).rmdir()
        # The search's per-example validation record is the run's, not the adapter's: not shipped.
        (staging / VALIDATION_CORRECTNESS_FILE).unlink(missing_ok=True)
        if format == "peft":  # the adapter's files are replaced by PEFT's; the heads stay under heads/

            adapters_form = staging / ".adapters"
            adapters_form.mkdir()
            for name in ("adapter_config.json", "adapter.safetensors", "head_config.json", "model_head.safetensors"):
                if (staging / name).exists():
                    os.replace(staging / name, adapters_form / name)
            write_peft_lora(adapters_form, staging, base_model=cfg.base_model)
            shutil.rmtree(adapters_form)
        (staging / MIXTURE_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
        # Registered before the folder appears (the version's model holds a copy of the folder):
        # a refused model name leaves no export behind.
        if register:
            record["registered_model"] = register_served_model(
                client, name=cfg.registered_model_name, kind="mixture", experiment_id=run.info.experiment_id,
                run_id=run.info.run_id, folder=staging, example_domain=targets[0],
                description=mixture_description(record), tags={KEY_TAG: record["mixture_key"],
                                                               "signmix.targets": ",".join(targets)})
            (staging / MIXTURE_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
        if out.exists():
            out.rmdir()
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out, record


def mixture_description(record: dict) -> str:
    """A registered mixture version's description: what it merges, what it serves, how it scored."""
    conf = record.get("confirmation") or {}
    members = "+".join(record["members"])
    lines = [f"**{members}** merged with {record['merge_method']} (head protocol {record['head']}, pruning "
             f"{record['prune_method']} {record['prune_ratio']:g}), serving {', '.join(record['targets'])}."]
    if conf.get("targets"):
        lines.append("Test accuracy (95% interval): " + "; ".join(
            f"{t} {v['accuracy']:.4f} [{v['ci_low']:.4f}, {v['ci_high']:.4f}]" for t, v in conf["targets"].items()))
    else:
        lines.append(f"Validation accuracy (mean of the targets) {record['metrics'].get('accuracy_mean', float('nan')):.4f}; "
                     "not confirmed on test (search.confirm is off).")
    lines.append(f"From MLflow run {record['mlflow_run_id']} of experiment {record['mlflow_experiment']}; "
                 f"base model {record['base_model']}.")
    return "\n\n".join(lines)


def evaluate_export(path: str | os.PathLike, split: str = "validation") -> dict:
    """Accuracy and macro-F1 of an exported mixture on each target's ``split``.

    Loads the export with plain ``adapters`` calls (``load_adapter``, ``load_head``) and
    evaluates with the same code, batches and settings as the search trial.
    """

    path = Path(path)
    if not (path / MIXTURE_FILE).is_file():
        raise UsageError(f"{path} is not a signmix export (no {MIXTURE_FILE}); "
                         "create one with `signmix export CONFIG --out DIR`")
    record = json.loads((path / MIXTURE_FILE).read_text(encoding="utf-8"))
    peft = record.get("format") == "peft"
    # Only safetensors are read: `adapters` would fall back to unpickling a .bin file.
    needed = [path / ("adapter_model.safetensors" if peft else "adapter.safetensors")] + [
        path / "heads" / t / "model_head.safetensors" for t in record.get("targets", [])]
    missing = [str(f.relative_to(path)) for f in needed if not f.is_file()]
    if missing:
        raise UsageError(f"the export {path} lacks {', '.join(missing)}; signmix reads weights from safetensors "
                         "files only (never pickled .bin files): export the mixture again with `signmix export`")
    from trainables.bundle_predictor import BundlePredictor, class_of

    # the export as it is served (search/tracking/served_model.py): its predictions are what is scored
    ev, predictor = record["evaluation"], BundlePredictor(path)
    encoded, num_labels, preds = {}, {}, {}
    for target in record["targets"]:
        data = load_domain(target, DomainConfig.model_validate(record["domains"][target]), splits=(split,),
                           max_eval_examples=ev["max_eval_examples"], seed=ev["seed"],
                           trust_remote_code=ev["trust_remote_code"],
                           label_names=record.get("label_names", {}).get(target))
        encoded[target], num_labels[target] = encode_split(predictor.tokenizer, data.splits[split],
                                                           ev["max_length"]), data.num_labels
        preds[target] = {row: class_of(v) for row, v in predictor.predict_encoded(target, encoded[target]).items()}
    return {"record": record, "metrics": target_metrics(preds, encoded, num_labels)}
