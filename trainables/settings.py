"""What a trial is given: the typed settings of the experiment that trainables read.

The config (``search/settings/config.py``) validates the YAML once into frozen models; the parts a
trial needs are defined here, where ``trainables`` can read them without knowing the search,
and the config composes them. A trial receives an :class:`Experiment` (built once by
``Config.experiment()``), never a dict read back with string keys: every default is stated
once, in these models or the config's.
"""

from __future__ import annotations

from typing import Annotated, Callable, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from spaces.errors import UsageError
from trainables.lora_mixture import LORA_MERGES
from trainables.synonyms import DEFAULT_WORDNET_FOLDER, SYNONYM_SOURCES, wordnet_folder

# Building blocks of the adapter methods (the `adapters` library is imported only when one is built).

def _seq_bn(adapter: AdapterConfig):
    from adapters import SeqBnConfig

    return SeqBnConfig(reduction_factor=adapter.reduction_factor)


def _double_seq_bn(adapter: AdapterConfig):
    from adapters import DoubleSeqBnConfig

    return DoubleSeqBnConfig(reduction_factor=adapter.reduction_factor)


def _lora(adapter: AdapterConfig):
    from adapters import LoRAConfig

    return LoRAConfig(r=adapter.rank, alpha=adapter.alpha)


# The adapter methods (``adapter.method``): name -> the ``adapters`` config it builds.
ADAPTER_METHODS: dict[str, Callable[[AdapterConfig], object]] = {
    "seq_bn": _seq_bn,  # Pfeiffer
    "double_seq_bn": _double_seq_bn,  # Houlsby
    "lora": _lora,
}
AdapterMethod = Literal[tuple(ADAPTER_METHODS)]
LoraMerge = Literal[tuple(LORA_MERGES)]
EvalDtype = Literal["float32", "bfloat16"]


class FrozenModel(BaseModel):
    """A settings model: immutable, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class AdapterConfig(FrozenModel):
    """The adapter architecture every domain adapter is trained with."""

    method: AdapterMethod = "seq_bn"
    reduction_factor: Annotated[int, Field(gt=0)] = 16  # bottleneck adapters
    rank: Annotated[int, Field(gt=0)] = 8  # lora
    alpha: Annotated[float, Field(gt=0)] = 8.0  # lora


class TrainingConfig(FrozenModel):
    epochs: Annotated[int, Field(ge=1)] = 2
    learning_rate: Annotated[float, Field(gt=0)] = 1e-3
    batch_size: Annotated[int, Field(ge=1)] = 16
    max_length: Annotated[int, Field(ge=8, le=4096)] = 128
    seed: int = 42
    max_train_examples: Optional[Annotated[int, Field(ge=1)]] = None
    max_eval_examples: Optional[Annotated[int, Field(ge=1)]] = None


class AdapterSourceConfig(FrozenModel):
    """An existing adapter a domain brings instead of training one (trainables/imports)."""

    path: Optional[str] = None  # a folder written by `adapters`' save_adapter
    hub: Optional[str] = None  # an id resolved by `adapters`' own hub loading
    peft: Optional[str] = None  # a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors)
    allow_pickle: bool = False  # read pytorch_adapter.bin / adapter_model.bin (unpickling runs code)
    check_base_name: bool = True  # compare the base model name the adapter records
    with_head: Optional[bool] = None  # path/hub: load its head when it has one (default true)
    version: Optional[str] = None  # hub only
    drop_modules_to_save: Optional[bool] = None  # peft only: drop modules_to_save instead of refusing

    @model_validator(mode="after")
    def _one_kind(self):
        kinds = [k for k in ("path", "hub", "peft") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"give exactly one of 'path' (an adapters folder), 'hub' (a hub id) or 'peft' "
                             f"(a PEFT LoRA folder), got {kinds or 'none'}")
        kind = kinds[0]
        for option, kinds_allowed in (("with_head", ("path", "hub")), ("version", ("hub",)),
                                      ("drop_modules_to_save", ("peft",))):
            if getattr(self, option) is not None and kind not in kinds_allowed:
                raise ValueError(f"{option} applies to {' and '.join(kinds_allowed)} adapters only, "
                                 f"not to a {kind} adapter")
        return self

    def source(self) -> dict:
        """Returns what :func:`trainables.imports.import_adapter` takes."""
        return self.model_dump(exclude_none=True)


class DomainConfig(FrozenModel):
    """One domain: a local folder of split files, or a dataset on the Hugging Face hub, and/or
    an existing adapter (``adapter``) to use instead of training one."""

    path: Optional[str] = None  # folder with train/validation/test .jsonl or .csv
    hub: Optional[str] = None  # e.g. "glue"
    subset: Optional[str] = None  # e.g. "sst2"
    text_column: str = "text"
    text_pair_column: Optional[str] = None
    label_column: str = "label"
    splits: dict[Literal["train", "validation", "test"], str] = Field(
        default_factory=lambda: {"train": "train", "validation": "validation", "test": "test"})
    adapter: Optional[AdapterSourceConfig] = None  # an existing adapter instead of training one
    # false: a data-only domain (a new domain with a few labelled examples): no adapter of its own
    # in the library, never a member of a mixture, a search target under refit heads.
    train: bool = True
    # How many training examples this domain has (a seeded draw, draw_seed, default training.seed);
    # default training.max_train_examples.
    max_train_examples: Optional[Annotated[int, Field(ge=1)]] = None
    draw_seed: Optional[int] = None
    # Epochs of this domain's adapter (default training.epochs): with a few examples, as many
    # optimizer steps as the library's adapters took need more epochs.
    epochs: Optional[Annotated[int, Field(ge=1)]] = None

    @model_validator(mode="after")
    def _data_only_has_data(self):
        if not self.train:
            if self.path is None and self.hub is None:
                raise ValueError("train: false declares a data-only domain, which needs data: give 'path' (a "
                                 "local folder) or 'hub' (a hub dataset id)")
            if self.adapter is not None:
                raise ValueError("train: false declares a data-only domain (no adapter of its own), but 'adapter' "
                                 "names one: remove 'adapter', or remove 'train: false' to make it a member")
            if "train" not in self.splits:
                raise ValueError(f"train: false declares a data-only domain, whose few labelled examples are its "
                                 f"training split, but splits has none (got {sorted(self.splits)}): add "
                                 "splits.train")
        return self

    @model_validator(mode="after")
    def _one_source(self):
        if self.path is not None and self.hub is not None:
            raise ValueError("give exactly one of 'path' (a local folder) or 'hub' (a hub dataset id)")
        if self.path is None and self.hub is None and self.adapter is None:
            raise ValueError("give exactly one of 'path' (a local folder) or 'hub' (a hub dataset id), "
                             "or an existing adapter under 'adapter' (path, hub or peft)")
        return self

    @property
    def has_data(self) -> bool:
        """Whether the domain has data (a folder or a hub dataset), not only an adapter."""
        return self.path is not None or self.hub is not None


def train_draw(training: TrainingConfig, domain: DomainConfig) -> tuple[Optional[int], int]:
    """How many training examples of ``domain`` are drawn, and the draw's seed: the domain's
    ``max_train_examples``/``draw_seed``, by default the training section's."""
    cap = domain.max_train_examples if domain.max_train_examples is not None else training.max_train_examples
    return cap, domain.draw_seed if domain.draw_seed is not None else training.seed


class ResourcesConfig(FrozenModel):
    cpu: Annotated[float, Field(gt=0)] = 1.0
    gpu: Annotated[float, Field(ge=0)] = 0.0



class BlackboxAttack(FrozenModel):
    """``search.blackbox_attack``: the black-box word-substitution attack run on each evaluated
    mixture (:mod:`trainables.blackbox_attack`); the defaults cost about a second per attacked
    example with MiniLM-L6 on 2 cores (BENCHMARKS.md)."""

    synonyms: Literal[SYNONYM_SOURCES] = "embedding"
    # The WordNet database (synonyms: wordnet): Debian's wordnet-base, or an NLTK data folder.
    wordnet_folder: str = DEFAULT_WORDNET_FOLDER
    examples: Annotated[int, Field(ge=1, le=100_000)] = 50  # attacked per target (a seeded sample)
    candidates: Annotated[int, Field(ge=1, le=200)] = 20  # substitutes tried per word (one batched query)
    max_word_share: Annotated[float, Field(gt=0.0, le=1.0)] = 0.25  # of a text's words that may change
    query_budget: Annotated[int, Field(ge=2, le=100_000)] = 300  # forward passes per example
    similarity_floor: Annotated[float, Field(ge=-1.0, le=1.0)] = 0.5  # cosine, embedding source
    seed: int = 0

    @model_validator(mode="after")
    def _wordnet_is_there(self):
        if self.synonyms == "wordnet":
            try:
                wordnet_folder(self.wordnet_folder)
            except UsageError as exc:
                raise ValueError(str(exc)) from None
        return self


class EvaluationSettings(FrozenModel):
    """How a trial evaluates a mixture (from ``search:``; the defaults are stated there)."""

    targets: tuple[str, ...]  # the domains whose heads the trial's model loads
    batch_size: Annotated[int, Field(ge=1)]
    dtype: EvalDtype
    chunks: Annotated[int, Field(ge=1)]  # >1: report per chunk, so ASHA can stop early
    fgsm_step: Optional[float]  # None: robust accuracy is not measured
    blackbox_attack: Optional[BlackboxAttack] = None  # None: black-box robust accuracy is not measured
    lora_merge: LoraMerge


class Experiment(FrozenModel):
    """Everything a training, mixture or confirmation trial reads of the experiment."""

    base_model: str
    trust_remote_code: bool
    adapter: AdapterConfig
    training: TrainingConfig
    domains: dict[str, DomainConfig]
    resources: ResourcesConfig
    evaluation: EvaluationSettings
    store: str  # the adapter store's root
