"""The experiment configuration: one YAML file validated once into frozen models.

``load_config(path)`` reads the YAML, resolves relative paths against the file's folder,
and returns a :class:`Config`, or raises :class:`ConfigError` listing *every* problem at
once, each naming the field, the bad value and what is allowed. What travels to Ray
trials is ``config.model_dump()``, plain data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal, Optional, Sequence, Union

import yaml
from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator, model_validator

from mlflow_server.network import sqlite_uri
from search.config_loading import cross_field_problems, describe_error, resolve_paths
from search.confirmation_decision import TIE_RULES
from search.plan.compatibility import COMPATIBILITY_MEASURES
from search.proposals.objectives import OBJECTIVES, PARETO_RULES
from search.proposals.strategies import STRATEGIES
from spaces.errors import ConfigError
from spaces.fsd import FSD_MEASURES
from spaces.measures import DEFAULT_PROBE_SIZE, PAIRWISE_MEASURES, PROBE_SIZE_RANGE
from spaces.merge_dimensions import WEIGHTINGS
from spaces.operators import HEAD_PROTOCOLS, MERGE_OPERATORS
from spaces.space import SEARCH_PRUNE_METHODS
from spaces.spec import PRUNE_SCOPES, PRUNE_WHEN
from trainables.lora_mixture import LORA_MERGES, MERGE_ON_DELTA
from trainables.settings import (
    ADAPTER_METHODS,
    AdapterConfig,
    BlackboxAttack,
    DomainConfig,
    EvalDtype,
    EvaluationSettings,
    Experiment,
    FrozenModel,
    ResourcesConfig,
    TrainingConfig,
)

# Every enumeration a config names, with the registry that defines it (one grep:
# REGISTERED_CHOICES). The config's Literals below, the CLI's choices, the validation
# messages and the README's table of choices are all derived from these registries.
REGISTERED_CHOICES: dict[str, tuple[str, ...]] = {
    "adapter.method": tuple(ADAPTER_METHODS),
    "search.strategy": tuple(STRATEGIES),
    "search.fsd_measure": tuple(FSD_MEASURES),
    "search.conflict_measure": ("auto", *PAIRWISE_MEASURES),
    "search.prune_methods": tuple(SEARCH_PRUNE_METHODS),
    "search.prune_scope": tuple(PRUNE_SCOPES),
    "search.prune_when": tuple(PRUNE_WHEN),
    "search.objectives": tuple(OBJECTIVES),
    "search.pareto_rule": tuple(PARETO_RULES),
    "search.merge_methods": tuple(MERGE_OPERATORS),
    "search.weights": tuple(WEIGHTINGS),
    "search.head": tuple(HEAD_PROTOCOLS),
    "search.when_tied": tuple(TIE_RULES),
    "search.lora_merge": tuple(LORA_MERGES),
    "plan.compatibility": tuple(COMPATIBILITY_MEASURES),
}


def _choice(field: str):
    """The ``Literal`` of the names registered for ``field`` (for pydantic)."""
    return Literal[REGISTERED_CHOICES[field]]


StrategyName = _choice("search.strategy")
FsdMeasure = _choice("search.fsd_measure")
ConflictMeasure = _choice("search.conflict_measure")
SearchPruneMethod = _choice("search.prune_methods")
PruneScope = _choice("search.prune_scope")
PruneWhen = _choice("search.prune_when")
Objective = _choice("search.objectives")
ParetoRule = _choice("search.pareto_rule")
MergeMethodName = _choice("search.merge_methods")
Weighting = _choice("search.weights")
HeadProtocol = _choice("search.head")
TieRule = _choice("search.when_tied")
LoraMerge = _choice("search.lora_merge")


# search.merge_methods when the config does not say: average first (the warm start's greedy
# path and soup_all are the paper's averages), then the operators that served best on real data.
DEFAULT_MERGE_METHODS = ("average", "ties", "task_arithmetic", "dare_ties")


class SearchConfig(FrozenModel):
    strategy: StrategyName = "tpe"
    # tpe only: start from the greedy FSD path (Alg. 1), then let TPE propose.
    warm_start: Literal["greedy_fsd", "none"] = "greedy_fsd"
    # tpe only: past this many finished Optuna trials (filtered proposals and repeats count),
    # mutations of the best mixtures propose instead of TPE, whose ask grows with the study
    # (search/proposals/local_search.py); null: TPE to the end.
    tpe_switch_after: Optional[Annotated[int, Field(ge=1)]] = 2000
    # The domains a mixture is scored on, each with its own head. Default (left out or null):
    # every domain with data, so one merged body serves them all (serving); one target is the
    # in-domain search (e.g. [books]). Filled in by Config from its domains (serving_defaults).
    targets: list[str]
    num_mixtures: Annotated[int, Field(ge=1)] = 16  # mixtures to evaluate (filtered ones do not count)
    require_targets: bool = True
    max_members: Optional[Annotated[int, Field(ge=1)]] = None
    prune_ratios: list[Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(default_factory=lambda: [0.0])
    # How a positive ratio prunes: "magnitude" (Alg. 2) or "conflict_layers" (Alg. 4: only
    # the m most sign-conflicting layers of every member); m is chosen from prune_layers.
    prune_methods: list[SearchPruneMethod] = Field(default_factory=lambda: ["magnitude"])
    prune_layers: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [2])
    prune_scope: PruneScope = "adapter"
    prune_when: PruneWhen = "members"
    fsd_measure: FsdMeasure = "mean_pairwise"
    # auto: filter only once the evaluated mixtures show FSD predicts accuracy here (search/proposals/gate.py);
    # a number: a fixed threshold; null: no FSD filter.
    max_fsd: Union[Annotated[float, Field(ge=0.0, le=1.0)], Literal["auto"], None] = "auto"
    # What the gate measures conflict with (spaces/measures.py): weight_fsd (the FSD above),
    # delta_fsd, activation_fsd, cross_head; auto: every one of them is tracked and the one whose
    # evidence is strongest filters (search/proposals/measure_gate.py). The probe measures read probe_size
    # rows of each domain's probe_split.
    conflict_measure: ConflictMeasure = "weight_fsd"
    probe_size: Annotated[int, Field(ge=PROBE_SIZE_RANGE[0], le=PROBE_SIZE_RANGE[1])] = DEFAULT_PROBE_SIZE
    probe_split: Literal["train", "validation", "test"] = "train"
    # Confirm the chosen mixture and the baselines once on the test split (search/confirmation.py).
    confirm: bool = True
    # Which mixture is exported when the validation data cannot separate the best from the
    # runner-up or the target alone: the one with fewer members, or the higher accuracy.
    when_tied: TieRule = "fewer_members"
    # Warn before a search when a target's validation set gives a 95% interval wider than this (±).
    max_interval_half_width: Annotated[float, Field(gt=0.0, le=1.0)] = 0.05
    max_concurrent: Annotated[int, Field(ge=1)] = 2
    eval_batch_size: Annotated[int, Field(ge=1)] = 64
    eval_dtype: EvalDtype = "float32"  # bfloat16: faster on CPUs with AVX-512 BF16
    eval_chunks: Annotated[int, Field(ge=1)] = 1  # >1 reports per chunk so ASHA can stop early
    early_stopping: bool = False
    # Mixtures one Ray trial evaluates, one after the other: >1 divides Ray Tune's cost per
    # trial (scheduling, actor reset, its loop over every trial) when mixtures are quick to
    # evaluate; each mixture keeps its own MLflow run. Not with early stopping (ASHA stops trials).
    mixtures_per_trial: Annotated[int, Field(ge=1)] = 1
    max_failures: Annotated[int, Field(ge=0)] = 1
    seed: int = 0
    # White-box FGSM on the input embeddings (the paper uses 0.01); None: not measured.
    fgsm_step: Optional[Annotated[float, Field(ge=0.0)]] = None
    # Black-box word-substitution attack (TextFooler-style, trainables/blackbox_attack.py) on a
    # seeded sample of each target's validation rows; None: not run. `{}` runs it with its defaults.
    blackbox_attack: Optional[BlackboxAttack] = None
    # What the search maximises; both: Optuna's multi-objective samplers, and the export
    # picks from the Pareto front by `pareto_rule`.
    objectives: list[Objective] = Field(default_factory=lambda: ["accuracy"])
    pareto_rule: ParetoRule = "balanced"
    # How the members are merged (spaces/operators.py): a choice among operators, each
    # parameter a choice list (density: ties; drop_rate: dare_*; lambda: all but average);
    # weights equal, or searched (one per member, on a grid of 0.1 to 1.0, normalised).
    # The defaults are the operators and scales that served real domains best (BENCHMARKS.md,
    # "When does mixing pay?"); the first of each list is what the warm start, soup_all and
    # the "TIES of all" baseline use.
    merge_methods: list[MergeMethodName] = Field(default_factory=lambda: list(DEFAULT_MERGE_METHODS))
    densities: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(default_factory=lambda: [0.1, 0.2])
    drop_rates: list[Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(default_factory=lambda: [0.5])
    lambdas: list[Annotated[float, Field(gt=0.0, allow_inf_nan=False)]] = Field(
        default_factory=lambda: [1.0, 1.5, 2.0])
    weights: Weighting = "uniform"
    # A data-only target (domains.<d>.train: false): AdapterSoup's selection baseline of the
    # confirmation averages the k domains whose training texts are nearest the target's.
    adaptersoup_k: Annotated[int, Field(ge=1)] = 3
    # Which heads score a mixture: each target's trained head (own), or a linear head refit
    # on the mixed adapter's features of the target's training split (refit).
    head: HeadProtocol = "own"
    # LoRA stores: merge the updates ΔW = B·A·alpha/r and factorise back to the members' rank
    # (delta_svd), or average the factors A and B separately (factors, the old behaviour).
    lora_merge: LoraMerge = MERGE_ON_DELTA

    @field_validator("targets")
    @classmethod
    def _targets_nonempty(cls, v):
        if not v:
            raise ValueError("name at least one target domain")
        if len(set(v)) != len(v):
            raise ValueError(f"targets must be distinct, got {v}")
        return v

    @model_validator(mode="after")
    def _batches_are_not_stopped_early(self):
        if self.mixtures_per_trial > 1 and self.early_stopping and self.eval_chunks > 1:
            raise ValueError("early_stopping stops a trial, which would stop every mixture of its batch: "
                             "set mixtures_per_trial: 1, or early_stopping: false")
        return self

    @model_validator(mode="after")
    def _auto_measure_has_no_fixed_threshold(self):
        if self.conflict_measure == "auto" and isinstance(self.max_fsd, float):
            raise ValueError(f"conflict_measure: auto chooses its measure from the evidence, so a fixed max_fsd "
                             f"({self.max_fsd}) has no measure to apply to: set max_fsd: auto (or null), or name "
                             "the measure in conflict_measure")
        return self

    @model_validator(mode="after")
    def _robust_objective_needs_fgsm(self):
        if "robust_accuracy" in self.objectives and self.fgsm_step is None:
            raise ValueError("objectives includes robust_accuracy, which needs search.fgsm_step (e.g. 0.01)")
        if "bb_robust_accuracy" in self.objectives and self.blackbox_attack is None:
            raise ValueError("objectives includes bb_robust_accuracy, which needs search.blackbox_attack "
                             "(e.g. blackbox_attack: {synonyms: embedding})")
        robustness = [o for o in self.objectives if o != "accuracy"]
        if len(robustness) > 1:
            raise ValueError(f"objectives can hold accuracy and one robustness measure (the Pareto choice weighs "
                             f"the two), got {self.objectives}: keep one of {robustness}")
        if len(set(self.objectives)) != len(self.objectives) or not self.objectives:
            raise ValueError(f"objectives must be distinct and non-empty, got {self.objectives}")
        return self

    @field_validator("prune_ratios")
    @classmethod
    def _ratios_nonempty(cls, v):
        if not v:
            raise ValueError("give at least one pruning ratio (0.0 means no pruning)")
        return sorted(set(v))

    @field_validator("prune_methods")
    @classmethod
    def _methods_nonempty(cls, v):
        if not v:
            raise ValueError(f"give at least one pruning method ({' or '.join(SEARCH_PRUNE_METHODS)})")
        return list(dict.fromkeys(v))

    @field_validator("merge_methods", "densities", "drop_rates", "lambdas")
    @classmethod
    def _choices_nonempty(cls, v, info: ValidationInfo):
        if not v:
            raise ValueError(f"give at least one value of {info.field_name}")
        return list(dict.fromkeys(v))

    @field_validator("weights")
    @classmethod
    def _exhaustive_cannot_search_weights(cls, v, info: ValidationInfo):
        if v == "searched" and info.data.get("strategy") == "exhaustive":
            raise ValueError("exhaustive cannot enumerate a continuous space (one searched weight per member); "
                             "use strategy tpe or random, or weights: uniform")
        return v

    @field_validator("prune_layers")
    @classmethod
    def _layers_nonempty(cls, v):
        if not v:
            raise ValueError("give at least one number of layers m for conflict_layers")
        return sorted(set(v))


class StudyConfig(FrozenModel):
    """``signmix study``: the paper's experiments on this config's adapters."""

    targets: Optional[list[str]] = None  # default: every domain
    max_size: Optional[Annotated[int, Field(ge=1)]] = None  # subsets up to this size (default: all)
    sweep_ratios: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=lambda: [0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0])
    sparse_sizes: list[Annotated[int, Field(ge=2)]] = Field(default_factory=lambda: [2, 3])
    sparse_layers: Annotated[int, Field(ge=1)] = 2  # m: layers pruned by Alg. 4
    sparsities: list[Annotated[float, Field(gt=0.0, lt=1.0)]] = Field(default_factory=lambda: [0.8, 0.9])


class PlanConfig(FrozenModel):
    """``signmix plan``: which domains share which merged body (search/plan/)."""

    domains: Optional[list[str]] = None  # the domains to serve (default: every domain with data)
    # The chosen plan: the fewest bodies within this much mean validation accuracy (0.01 = 1 point)
    # of the N own adapters under the same head protocol ...
    tolerance: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01
    max_bodies: Optional[Annotated[int, Field(ge=1)]] = None  # ... or the best plan of at most this many bodies
    group_evaluations: Optional[Annotated[int, Field(ge=1)]] = None  # groups whose body is searched (default 4N)
    mixtures_per_group: Annotated[int, Field(ge=1)] = 4  # evaluations of one group's body search
    compatibility: _choice("plan.compatibility") = "cross_heads"  # the clustering's start (search/plan/compatibility.py)

    @field_validator("domains")
    @classmethod
    def _two_or_more(cls, v):
        if v is not None and len(set(v)) < 2:
            raise ValueError(f"a plan serves at least 2 domains, got {v}; name 2 or more, or leave plan.domains "
                             "out to serve every domain with data")
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"plan.domains must be distinct, got {v}")
        return v


class RayConfig(FrozenModel):
    address: Optional[str] = None  # None: start a local cluster; "auto" or "host:port" (from outside: signmix submit)
    storage_path: str = "signmix_runs"
    num_cpus: Optional[int] = None  # for a local cluster only


class MlflowConfig(FrozenModel):
    tracking_uri: Optional[str] = None  # default: sqlite:///<storage_path>/mlflow.db
    experiment: Optional[str] = None  # default: the config's name
    registered_model: Optional[str] = None  # default: the config's name


class Config(FrozenModel):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")]
    base_model: str
    trust_remote_code: bool = False
    adapter: AdapterConfig = AdapterConfig()
    training: TrainingConfig = TrainingConfig()
    domains: dict[str, DomainConfig]
    search: SearchConfig  # may be left out: serving_defaults fills it in
    study: StudyConfig = StudyConfig()
    plan: PlanConfig = PlanConfig()
    resources: ResourcesConfig = ResourcesConfig()
    ray: RayConfig = RayConfig()
    mlflow: MlflowConfig = MlflowConfig()
    store: Optional[str] = None  # adapter store; default: <storage_path>/adapters

    @model_validator(mode="before")
    @classmethod
    def _serving_defaults(cls, raw):
        """What the search section leaves out, from the domains: see :func:`serving_defaults`."""
        return serving_defaults(raw)

    @field_validator("domains")
    @classmethod
    def _domains(cls, v):
        if not v:
            raise ValueError("name at least one domain")
        for name in v:
            if not name or "/" in name or name.startswith("."):
                raise ValueError(f"domain name {name!r} must be a plain folder-safe name")
        return v

    @model_validator(mode="after")
    def _targets_are_domains(self):
        unknown = [t for t in self.search.targets if t not in self.domains]
        if unknown:
            raise ValueError(f"search.targets {unknown} are not domains; the domains are {sorted(self.domains)}")
        unknown = [t for t in (self.study.targets or []) if t not in self.domains]
        if unknown:
            raise ValueError(f"study.targets {unknown} are not domains; the domains are {sorted(self.domains)}")
        no_data = [t for t in dict.fromkeys([*self.search.targets, *(self.study.targets or [])])
                   if not self.domains[t].has_data]
        if no_data:
            raise ValueError(f"targets {no_data} name an adapter but no data; a target needs data to be "
                             f"evaluated: give domains.{no_data[0]}.path (or hub), or take {no_data[0]!r} out "
                             "of the targets (a domain with only an adapter can still be a member)")
        self._check_plan()
        self._check_data_only()
        if self.search.max_members is not None and self.search.require_targets \
                and self.search.max_members < len(self.search.targets):
            raise ValueError(f"search.max_members={self.search.max_members} is smaller than the "
                             f"{len(self.search.targets)} targets that every mixture must contain")
        return self

    def _check_data_only(self) -> None:
        """A data-only domain (``train: false``) is a target under refit heads, never a member."""
        data_only = self.data_only_domains
        if not data_only:
            return
        if not self.member_domains:
            raise ValueError(f"every domain is data-only (train: false): {data_only}; a new domain's mixtures are "
                             "made of the other domains' adapters: give at least one domain with train: true "
                             "(the default) or an adapter")
        targets = [t for t in self.search.targets if t in data_only]
        if targets and self.search.head != "refit":
            raise ValueError(f"search.head: got {self.search.head!r}, but target {targets[0]!r} is data-only "
                             "(train: false) and has no adapter of its own, hence no trained head: set "
                             "search.head: refit (a head fit on its few labelled examples)")
        if targets and self.search.require_targets:
            raise ValueError(f"search.require_targets: got true, which makes every target a member, but target "
                             f"{targets[0]!r} is data-only (train: false) and is never a member: set "
                             "search.require_targets: false (the default when a target is data-only)")
        listed = [d for d in self.plan.domains or [] if d in data_only]
        if listed:
            raise ValueError(f"plan.domains: got {listed}, data-only domain(s) (train: false), which are never "
                             f"members of a body; allowed: the domains with adapters {self.member_domains}")
        listed = [d for d in self.study.targets or [] if d in data_only]
        if listed:
            raise ValueError(f"study.targets: got {listed}, data-only domain(s) (train: false); the study mixes "
                             f"every subset including the target, so it needs the target's adapter; allowed: "
                             f"{self.member_domains}")

    @property
    def data_only_domains(self) -> list[str]:
        """The domains with data and no adapter of their own (``train: false``): targets, never members."""
        return sorted(d for d, c in self.domains.items() if not c.train)

    @property
    def member_domains(self) -> list[str]:
        """The domains whose adapters mixtures are made of (every domain but the data-only ones)."""
        return sorted(d for d, c in self.domains.items() if c.train)

    def _check_plan(self) -> None:
        """plan.domains are domains with data; plan.max_bodies is at most their number."""
        unknown = [d for d in self.plan.domains or [] if d not in self.domains]
        if unknown:
            raise ValueError(f"plan.domains {unknown} are not domains; the domains are {sorted(self.domains)}")
        no_data = [d for d in self.plan.domains or [] if not self.domains[d].has_data]
        if no_data:
            raise ValueError(f"plan.domains {no_data} name an adapter but no data; a served domain needs data to be "
                             f"evaluated: give domains.{no_data[0]}.path (or hub), or take {no_data[0]!r} out of "
                             "plan.domains")
        n = len(self.plan_domains)
        if self.plan.max_bodies is not None and n >= 2 and self.plan.max_bodies > n:
            raise ValueError(f"plan.max_bodies: got {self.plan.max_bodies}, but the plan serves {n} domains; "
                             f"set plan.max_bodies between 1 and {n}, or leave it out")

    @property
    def plan_domains(self) -> list[str]:
        """The domains a plan serves: ``plan.domains``, by default every domain with data."""
        return sorted(self.plan.domains or [d for d, c in self.domains.items() if c.has_data and c.train])

    # Resolved locations -------------------------------------------------------------
    @property
    def study_targets(self) -> list[str]:
        """The study's targets: ``study.targets``, by default every domain with data (a domain
        that brings only an adapter is a member, never a target)."""
        return sorted(self.study.targets or [d for d, c in self.domains.items() if c.has_data and c.train])

    @property
    def storage_path(self) -> str:
        return self.ray.storage_path

    @property
    def store_path(self) -> str:
        return self.store or os.path.join(self.ray.storage_path, "adapters")

    @property
    def tracking_uri(self) -> str:
        if self.mlflow.tracking_uri:
            return self.mlflow.tracking_uri

        return sqlite_uri(os.path.join(self.ray.storage_path, "mlflow.db"))

    @property
    def experiment_name(self) -> str:
        return self.mlflow.experiment or self.name

    @property
    def registered_model_name(self) -> str:
        return self.mlflow.registered_model or self.name

    def experiment(self, targets: Sequence[str] | None = None) -> Experiment:
        """What a trial reads of this config (``targets``: the heads its model loads; default
        ``search.targets``)."""
        s = self.search
        return Experiment(
            base_model=self.base_model, trust_remote_code=self.trust_remote_code, adapter=self.adapter,
            training=self.training, domains=self.domains, resources=self.resources, store=self.store_path,
            evaluation=EvaluationSettings(targets=tuple(targets or s.targets), batch_size=s.eval_batch_size,
                                          dtype=s.eval_dtype, chunks=s.eval_chunks, fgsm_step=s.fgsm_step,
                                          blackbox_attack=s.blackbox_attack,
                                          lora_merge=s.lora_merge))


def serving_defaults(raw):
    """The raw config with the search section's defaults that depend on the domains filled in.

    - ``search.targets`` left out (or null): every domain with data (a folder or a hub
      dataset), so the search looks for one merged body that serves them all, each domain
      through its own head. ``search:`` may be left out entirely.
    - ``search.merge_methods`` left out while a domain brings its own adapter that is not a
      LoRA merged on ΔW: ``[average]``, the one operator that needs no shared initialisation
      (imported adapters did not start from the config's seed).
    Anything the file says is kept; malformed input is left for validation to report.
    """
    if not isinstance(raw, dict) or not isinstance(raw.get("domains"), dict):
        return raw
    search = raw.get("search", {})
    if not isinstance(search, dict):
        return raw
    search = dict(search)
    domains = {name: (d.model_dump() if isinstance(d, BaseModel) else d) for name, d in raw["domains"].items()}
    with_data = [name for name, d in domains.items()
                 if isinstance(d, dict) and (d.get("path") is not None or d.get("hub") is not None)]
    if search.get("targets") is None and with_data:
        search["targets"] = with_data
    # A data-only target (train: false) is never a member: its mixtures do not hold it.
    data_only = [name for name, d in domains.items() if isinstance(d, dict) and d.get("train") is False]
    if "require_targets" not in search and isinstance(search.get("targets"), list) \
            and any(t in data_only for t in search["targets"]):
        search["require_targets"] = False
    if "merge_methods" not in search:
        adapter = raw.get("adapter")
        adapter = adapter.model_dump() if isinstance(adapter, BaseModel) else adapter if isinstance(adapter, dict) else {}
        on_delta = adapter.get("method", "seq_bn") == "lora" and search.get("lora_merge", MERGE_ON_DELTA) == MERGE_ON_DELTA
        if not on_delta and any(isinstance(d, dict) and d.get("adapter") for d in domains.values()):
            search["merge_methods"] = ["average"]
    return {**raw, "search": search}


def validate_config(raw: object, *, source: str = "config", base_dir: str | Path = ".") -> Config:
    """Validate a parsed YAML document into a :class:`Config` (every problem reported at once)."""
    if not isinstance(raw, dict):
        raise ConfigError(source, [f"the file must hold a YAML mapping of settings, got {type(raw).__name__}"])
    raw = resolve_paths(raw, Path(base_dir))
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        # A union field reports one error per alternative; keep one line per field.
        problems, seen = [], set()
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("literal[", "float", "constrained"))))
            line = describe_error({**err, "loc": loc}, Config, DomainConfig)
            if loc in seen and err["type"] != "extra_forbidden":
                continue
            seen.add(loc)
            problems.append(line)
        if all(err["loc"] for err in exc.errors()):  # the model-level checks did not run
            problems.extend(cross_field_problems(raw))
        raise ConfigError(source, problems) from None


def load_config(path: str | os.PathLike) -> Config:
    """Read and validate a YAML config file; raises :class:`ConfigError` with every problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), ["no such file; create one (see the README's 'Configuration' section)"])
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), [f"not valid YAML: {exc}"]) from None
    return validate_config(raw, source=str(path), base_dir=path.parent.resolve())
