"""The MLflow layout of DESIGN.md, defined once: tag names, run kinds, statuses, artifact names,
and the parameters a mixture run logs, with the one way back from them to a MixtureSpec.

Every module that writes or reads signmix's MLflow runs takes its names from here; nothing
here talks to MLflow.
"""

from __future__ import annotations

import re
from typing import Mapping

from search.tracking.outcomes import OUTCOMES
from spaces.operators import OPERATOR_PARAMETERS
from spaces.spec import MixtureSpec, make_mixture_spec

# MLflow's own tags.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow 3's UI opens a custom_model_development experiment on its runs
EXPERIMENT_KIND = "custom_model_development"
NOTE_TAG = "mlflow.note.content"  # the description of an experiment or run (markdown, on its page)
# Tags of every signmix run.
KIND_TAG = "signmix.kind"  # one of RUN_KINDS
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: a child run's parent
STRATEGY_TAG = "signmix.strategy"  # a search's strategy ("study" for `signmix study`)
RAY_EXPERIMENT_TAG = "signmix.ray_experiment"  # where a search's Ray Tune experiment lives (--resume)
# Tags of a mixture run.
STATUS_TAG = "signmix.status"  # one of STATUSES, or "running" while it is
KEY_TAG = "signmix.mixture_key"  # MixtureSpec.key: one run per distinct mixture
TRIAL_TAG = "signmix.trial_id"
ERROR_TAG = "signmix.error"
FILTER_REASON_TAG = "signmix.filter_reason"
BASELINE_TAG = "signmix.baseline"  # a one-body baseline the confirmation chose over the searched mixtures (soup, ties_of_all)
STUDY_PART_TAG = "signmix.study_part"  # subsets | sweep | sparse_mixing
STUDY_TARGET_TAG = "signmix.target"
SPARSE_SIZE_TAG = "signmix.sparse_size"
# Tags of a training run.
DOMAIN_TAG = "signmix.domain"
ADAPTER_PATH_TAG = "signmix.adapter_path"
# Tags of a search's parent run, set by the FSD gate and the confirmation.
GATE_DECISION_TAG = "signmix.fsd_gate"
GATE_REASON_TAG = "signmix.fsd_gate_reason"
GATE_MEASURE_TAG = "signmix.gate_measure"  # the conflict measure the gate filters with (search/proposals/measure_gate.py)
# Tags of a measures run (search/workflows/conflict_measures.py).
MEASURES_FINGERPRINT_TAG = "signmix.measures_fingerprint"
CHOSEN_TAG = "signmix.chosen_run_id"
BEST_TAG = "signmix.best_run_id"
RULE_TAG = "signmix.when_tied"
NOTES_TAG = "signmix.confirmation_notes"
# Tags of a group body's search in a serving plan (search/plan/).
PLAN_RUN_TAG = "signmix.plan_run_id"  # the plan run it belongs to
PLAN_GROUP_TAG = "signmix.plan_group"  # its domains, joined by ","
PLAN_BODY_KEY_TAG = "signmix.plan_body_key"  # a hash of what the body search depends on (reused when equal)

RUN_KINDS = ("training", "search", "mixture", "confirmation", "plan", "measures")
STATUSES = OUTCOMES  # what became of a mixture: the one outcome rule's names
MIXTURE_ARTIFACT = "mixture"  # an evaluated mixture's adapter and heads
PLAN_ARTIFACT = "plan"  # a plan run's table, figure and plan.json

# The operator parameters a mixture run logs: MLflow parameter -> MixtureSpec field
# (spaces.operators.OPERATOR_PARAMETERS; "lambda" is the spec's lam).
MERGE_PARAMS: dict[str, str] = {p.logged_as: p.name for p in OPERATOR_PARAMETERS.values()}


_RATIO_WORDS = ("accuracy", "macro_f1", "fsd", "sparsity", "ci_low", "ci_high", "_loss")
_PER_DOMAIN = re.compile(r"/(?!G\d+$)")  # accuracy/books: one division, kept as computed; test_accuracy/G2: a mean


def logged_value(name: str, value: float) -> float:
    """Metric ``name`` as signmix logs it: means of ratios of counts (``accuracy_mean``, FSD, intervals,
    the plan's per-G accuracies) rounded to 10 decimals, so that summation noise
    (``0.7939999999999999``) stays out of the UI. A per-domain accuracy (correct / n, one division)
    is logged as computed: evaluating an export again reproduces it exactly."""
    value = float(value)
    if any(w in name for w in _RATIO_WORDS) and not _PER_DOMAIN.search(name) and value == value:
        return round(value, 10)
    return value


def run_link(experiment_id: str, run_id: str, text: str | None = None) -> str:
    """A markdown link to a run's page in the MLflow UI (for run descriptions, which MLflow renders)."""
    return f"[{text or run_id}](#/experiments/{experiment_id}/runs/{run_id})"


def spec_params(spec: MixtureSpec, *, strategy: str, measure: str) -> dict[str, str]:
    """The mixture run's parameters (MLflow strings), with names the MLflow UI can sort and filter on."""
    return {
        "members": ",".join(spec.members), "k": str(spec.k), "targets": ",".join(spec.targets),
        "weights": ",".join(f"{w:.6g}" for w in spec.weights),
        "prune_method": spec.prune_method, "prune_ratio": f"{spec.prune_ratio:g}",
        "prune_scope": spec.prune_scope, "prune_when": spec.prune_when, "prune_layers": str(spec.prune_layers),
        "fsd_measure": measure, "strategy": strategy,
        "merge_method": spec.merge_method, "head": spec.head,
        # The operator's parameters, only those it takes.
        **{name: f"{getattr(spec, field):g}" for name, field in MERGE_PARAMS.items()
           if getattr(spec, field) is not None},
    }


def spec_from_params(params: Mapping[str, object]) -> MixtureSpec:
    """The mixture that :func:`spec_params` logged (or an export's ``mixture.json`` records).

    Reads MLflow's strings and JSON's lists and numbers alike. Runs logged before operators
    and head protocols existed read as ``average`` and ``own``; a mixture.json's operator
    parameters may sit under ``merge_parameters`` (keyed by their MLflow names).
    """
    def listed(value) -> list:
        return value.split(",") if isinstance(value, str) else list(value)

    def given(name: str) -> bool:
        return params.get(name) not in (None, "", "None")

    operator = {**params, **dict(params.get("merge_parameters") or {})}
    merge = {field: _read(OPERATOR_PARAMETERS[field], operator[name])
             for name, field in MERGE_PARAMS.items() if operator.get(name) not in (None, "", "None")}
    return make_mixture_spec(
        members=listed(params["members"]), targets=listed(params["targets"]),
        weights=[float(w) for w in listed(params["weights"])],
        prune_method=str(params["prune_method"]), prune_ratio=float(params["prune_ratio"]),
        prune_scope=str(params["prune_scope"]), prune_when=str(params["prune_when"]),
        prune_layers=int(params["prune_layers"]) if given("prune_layers") else 0,
        merge_method=str(params["merge_method"]) if given("merge_method") else "average",
        head=str(params["head"]) if given("head") else "own",
        require_targets=False, **merge)


def _read(parameter, value):
    return parameter.read(value) if isinstance(value, str) else value


def spec_from_run(run) -> MixtureSpec:
    """The mixture an MLflow mixture run evaluated."""
    return spec_from_params(run.data.params)


def merge_parameters_record(spec: MixtureSpec) -> dict[str, float | int]:
    """``mixture.json``'s ``merge_parameters``: the operator's parameters under their MLflow names."""
    return {name: getattr(spec, field) for name, field in MERGE_PARAMS.items() if getattr(spec, field) is not None}
