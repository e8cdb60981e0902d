"""The choices a config names and the ``search:`` section: :class:`SearchConfig`.

Every enumeration a config names is registered once in :data:`REGISTERED_CHOICES`, with the
registry that defines it; the config's Literals, the CLI's choices, the validation messages and
the README's table of choices are derived from it. ``search.settings.config`` builds the whole config
from these (and re-exports them).
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import Field, ValidationInfo, field_validator, model_validator

from search.settings.choices import COMPATIBILITY_MEASURES, STRATEGY_NAMES, TIE_RULES
from search.settings.objectives import OBJECTIVES, PARETO_RULES
from spaces.domain_masks import SERVING_OPTIONS
from spaces.fsd import FSD_MEASURES
from spaces.measures import DEFAULT_PROBE_SIZE, PAIRWISE_MEASURES, PROBE_SIZE_RANGE, WEIGHT_FSD
from spaces.merge_dimensions import WEIGHTINGS
from spaces.operators import HEAD_PROTOCOLS, MERGE_OPERATORS
from spaces.space import SEARCH_PRUNE_METHODS
from spaces.spec import PRUNE_SCOPES, PRUNE_WHEN
from trainables.lora_mixture import LORA_MERGES, MERGE_ON_DELTA
from trainables.settings import ADAPTER_METHODS, BlackboxAttack, EvalDtype, FrozenModel

# Every enumeration a config names, with the registry that defines it (one grep:
# REGISTERED_CHOICES). The config's Literals below, the CLI's choices, the validation
# messages and the README's table of choices are all derived from these registries.
REGISTERED_CHOICES: dict[str, tuple[str, ...]] = {
    "adapter.method": tuple(ADAPTER_METHODS),
    "search.strategy": STRATEGY_NAMES,
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
    "plan.serving_options": tuple(SERVING_OPTIONS),
}


def choice(field: str):
    """The ``Literal`` of the names registered for ``field`` (for pydantic)."""
    return Literal[REGISTERED_CHOICES[field]]


StrategyName = choice("search.strategy")
FsdMeasure = choice("search.fsd_measure")
ConflictMeasure = choice("search.conflict_measure")
SearchPruneMethod = choice("search.prune_methods")
PruneScope = choice("search.prune_scope")
PruneWhen = choice("search.prune_when")
Objective = choice("search.objectives")
ParetoRule = choice("search.pareto_rule")
MergeMethodName = choice("search.merge_methods")
Weighting = choice("search.weights")
HeadProtocol = choice("search.head")
TieRule = choice("search.when_tied")
LoraMerge = choice("search.lora_merge")


# search.conflict_measure when the config does not say (the reason is beside the field below).
DEFAULT_CONFLICT_MEASURE = "activation_fsd"

# search.merge_methods when the config does not say: TIES first, because the first is what the
# greedy warm start walks, and on real data TIES beat the uniform average by about 12 points
# (BENCHMARKS.md, "When does mixing pay?"; a search that walked averages exported a mixture 8
# points under TIES of all). The paper's averaged greedy path is one setting away:
# merge_methods: [average, ...]. The soup stays a uniform average whatever comes first.
DEFAULT_MERGE_METHODS = ("ties", "average", "task_arithmetic", "dare_ties")


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
    # auto: filter only once the evaluated mixtures show FSD predicts accuracy here (search/proposals/fsd_gate.py);
    # a number: a fixed threshold; null: no FSD filter.
    max_fsd: Union[Annotated[float, Field(ge=0.0, le=1.0)], Literal["auto"], None] = "auto"
    # What the gate measures conflict with (spaces/measures.py): weight_fsd (the paper's FSD above),
    # delta_fsd, activation_fsd, cross_head; auto: every one of them is tracked and the one whose
    # evidence is strongest filters (search/proposals/measure_gate.py). The probe measures read probe_size
    # rows of each domain's probe_split, once per store (search/workflows/conflict_measures.py caches them).
    # activation_fsd by default: on real data it predicts accuracy (partial Spearman -0.67 over 384
    # in-domain mixtures, -0.75 over 28 serving pairs) where weight FSD predicts nothing (+0.01..+0.03;
    # BENCHMARKS.md, "Which conflict measure predicts?"); max_fsd: auto still filters only on evidence.
    conflict_measure: ConflictMeasure = DEFAULT_CONFLICT_MEASURE
    probe_size: Annotated[int, Field(ge=PROBE_SIZE_RANGE[0], le=PROBE_SIZE_RANGE[1])] = DEFAULT_PROBE_SIZE
    probe_split: Literal["train", "validation", "test"] = "train"
    # Confirm the chosen mixture and the baselines once on the test split (search/workflows/confirmation.py).
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
    # "When does mixing pay?"). The first operator is what the greedy warm start merges with
    # (a step of one adapter keeps it as it is); the first density and λ are what it and the
    # "TIES of all" baseline use. soup_all and the soup baseline average, whatever comes first.
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
    def _fixed_threshold_names_its_measure(self):
        # A number is a threshold on one measure's scale: a config written when weight FSD was the
        # default must not silently apply it to activation FSD.
        if isinstance(self.max_fsd, float) and "conflict_measure" not in self.model_fields_set:
            raise ValueError(f"max_fsd {self.max_fsd} is a fixed threshold on a conflict measure, and the config "
                             f"does not name one (the default is {DEFAULT_CONFLICT_MEASURE}; it was weight_fsd "
                             "before): set conflict_measure: weight_fsd for the paper's FSD threshold, or "
                             f"conflict_measure: {DEFAULT_CONFLICT_MEASURE}, or max_fsd: auto")
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

    @property
    def gate_measures(self) -> tuple[str, ...]:
        """The conflict measures the gate tracks: ``conflict_measure`` itself, or under ``auto``
        every pairwise measure (the one whose evidence is strongest filters). The one place where
        ``conflict_measure`` is read: the gate, the preflight and the warm start ask here."""
        return PAIRWISE_MEASURES if self.conflict_measure == "auto" else (self.conflict_measure,)

    @property
    def gate_chooses_measure(self) -> bool:
        """Whether the evidence chooses the gate's measure (``conflict_measure: auto``)."""
        return self.conflict_measure == "auto"

    @property
    def gate_on_weight_signs(self) -> bool:
        """Whether the gate is the paper's FSD gate on the sign index alone (no measure to compute)."""
        return self.conflict_measure == WEIGHT_FSD

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
