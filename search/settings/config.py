"""The experiment configuration: one YAML file validated once into frozen models.

``load_config(path)`` reads the YAML, resolves relative paths against the file's folder,
and returns a :class:`Config`, or raises :class:`ConfigError` listing *every* problem at
once, each naming the field, the bad value and what is allowed. What travels to Ray
trials is ``config.model_dump()``, plain data.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional, Sequence, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from mlflow_server.network import sqlite_uri
from search.settings.loading import cross_field_problems, describe_error, resolve_paths
from search.settings.search_section import REGISTERED_CHOICES, SearchConfig, choice
from spaces.errors import ConfigError
from spaces.measures import PROBE_SIZE_RANGE
from trainables.lora_mixture import MERGE_ON_DELTA
from trainables.settings import (
    AdapterConfig,
    DomainConfig,
    EvaluationSettings,
    Experiment,
    FrozenModel,
    ResourcesConfig,
    TrainingConfig,
)

__all__ = ["REGISTERED_CHOICES", "Config", "MlflowConfig", "PlanConfig", "RayConfig", "SearchConfig", "StudyConfig",
           "load_config", "serving_defaults", "validate_config"]


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
    # Plans the planner proposes at once; their groups' searches run at the same time, each a Ray task
    # whose trials share the cluster's CPUs. 1: one group after another. The plans found depend on this
    # number, never on the cluster's size; a larger batch can spend evaluations on plans that one at a
    # time would have passed over.
    parallel_groups: Annotated[int, Field(ge=1)] = 1
    # A group's search first evaluates the operator choices that served the groups searched before it
    # best, and one tried least (search/plan/transfer.py); false: every group's search starts afresh.
    transfer: bool = True
    compatibility: choice("plan.compatibility") = "activation_fsd"  # the clustering's start (search/plan/compatibility.py)
    # activation_fsd: the probe examples read of each plan domain (search.probe_split), by every adapter's
    # probe pass; a plan of N domains probes N times this many rows per adapter.
    probe_size: Annotated[int, Field(ge=PROBE_SIZE_RANGE[0], le=PROBE_SIZE_RANGE[1])] = 32
    # The floor: the most validation accuracy any one domain may lose against its own adapter (same head
    # protocol) in the chosen plan (0.01 = 1 point); null: no floor, the mean alone decides. 1 point by
    # default: the promise "as well as its own adapter" is made per domain, at the scale the mean's
    # tolerance uses; the planner splits a domain that loses more off its group.
    max_domain_loss: Optional[Annotated[float, Field(ge=0.0, le=1.0)]] = 0.01
    # How a group's body may serve its domains (spaces.domain_masks.SERVING_OPTIONS); each is scored on
    # validation for the groups of the front and the plan picks one per group. Default: all of them for
    # bottleneck adapters under trained heads (search.head: own), else [plain].
    serving_options: Optional[list[choice("plan.serving_options")]] = None

    @field_validator("serving_options")
    @classmethod
    def _some_options(cls, v):
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError(f"plan.serving_options must name at least one option, each once, got {v}; "
                             "leave it out for every option the adapters and heads allow")
        return v

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
        extra = [o for o in self.plan.serving_options or [] if o != "plain"]
        if extra and self.adapter.method == "lora":
            raise ValueError(f"plan.serving_options: got {extra}, which need a bottleneck adapter (seq_bn, "
                             "double_seq_bn): a LoRA's masks act on ΔW and its output has no rescaler here; set "
                             "plan.serving_options: [plain], or leave it out")
        if extra and self.search.head != "own":
            raise ValueError(f"plan.serving_options: got {extra}, which need search.head: own (a mask or rescaler "
                             "moves the features a refit head was fit on); set search.head: own, or "
                             "plan.serving_options: [plain], or leave it out")
        n = len(self.plan_domains)
        if self.plan.max_bodies is not None and n >= 2 and self.plan.max_bodies > n:
            raise ValueError(f"plan.max_bodies: got {self.plan.max_bodies}, but the plan serves {n} domains; "
                             f"set plan.max_bodies between 1 and {n}, or leave it out")

    @property
    def plan_serving_options(self) -> list[str]:
        """How a plan's groups may serve their domains: ``plan.serving_options``, by default every option for
        bottleneck adapters under trained heads, else only the plain body."""
        if self.plan.serving_options is not None:
            return [o for o in REGISTERED_CHOICES["plan.serving_options"] if o in self.plan.serving_options]
        if self.adapter.method == "lora" or self.search.head != "own":
            return ["plain"]
        return list(REGISTERED_CHOICES["plan.serving_options"])

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

    @property
    def registered_bundle_name(self) -> str:
        """The registered model of serving bundles: single mixtures and bundles are kept apart."""
        return f"{self.registered_model_name}-bundle"

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


Settings = TypeVar("Settings", bound=BaseModel)


def updated(settings: Settings, **changes: object) -> Settings:
    """A copy of a frozen settings model (the config or one of its sections) with ``changes``,
    validated again as a whole.

    A derived config (a plan's group search, its probe passes) is built from typed values: the
    changed fields and the untouched ones are passed as they are (sections as models, never as a
    dumped dict edited by key), and every field and model validator runs again, which
    ``model_copy(update=...)`` alone would skip.

    Raises:
        ValueError: a name in ``changes`` is not a field of the model.
    """
    fields = type(settings).model_fields
    unknown = sorted(set(changes) - set(fields))
    if unknown:
        raise ValueError(f"{type(settings).__name__} has no field(s) {unknown}; its fields are {sorted(fields)}")
    return type(settings).model_validate({name: getattr(settings, name) for name in fields} | changes)


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
