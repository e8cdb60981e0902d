"""One domain's labelled text, loaded through ``datasets``, and its batches for the encoder.

``load_domain(name, domain)`` takes one ``domains.<name>`` entry of the config (a
:class:`~trainables.settings.DomainConfig`) and returns a :class:`DomainData` whose splits all have
the columns ``text``, optional ``text_pair`` and ``label`` (an int in ``range(num_labels)``).
Every problem a user can fix (missing file, column or split, unusable labels) is a
:class:`~spaces.errors.DataError` that names the domain, the split and the config key.

``encode_split`` tokenises once; ``iter_batches`` (evaluation, sorted by length so padding is
minimal) and ``shuffled_batches`` (training, seeded per epoch) turn it into padded tensors.
"""

from __future__ import annotations

import inspect
import os
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from spaces.errors import DataError

if TYPE_CHECKING:
    import datasets
    import torch

    from trainables.settings import DomainConfig

SPLITS = ("train", "validation", "test")
# Local split files, by extension, and the `datasets` builder that reads each.
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class DomainData:
    """A domain's splits (columns ``text``, optional ``text_pair``, ``label``) and label names."""

    name: str
    splits: dict[str, datasets.Dataset]
    label_names: tuple[str, ...]

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def load_domain(name: str, domain: DomainConfig, *, splits: Sequence[str] = SPLITS,
                max_train_examples: int | None = None, max_eval_examples: int | None = None,
                seed: int = 0, trust_remote_code: bool = False,
                label_names: Sequence[str] | None = None) -> DomainData:
    """Load the requested splits of one configured domain, validated and capped.

    ``label_names``: the classes of an already trained head, in its order; string labels
    are then encoded with them (evaluating validation alone must not reorder the classes).
    """
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"unknown split(s) {unknown}; choose among {list(SPLITS)}")
    split_names = {**{s: s for s in SPLITS}, **domain.splits}
    raw = {s: _load_split(name, domain, s, split_names[s], trust_remote_code) for s in splits}
    return prepare_domain(name, raw, text_column=domain.text_column, text_pair_column=domain.text_pair_column,
                          label_column=domain.label_column,
                          max_train_examples=max_train_examples, max_eval_examples=max_eval_examples,
                          seed=seed, label_names=label_names)


def _load_split(name: str, domain: DomainConfig, split: str, source_split: str,
                trust_remote_code: bool) -> datasets.Dataset:
    import datasets

    if domain.path:
        folder = str(domain.path)
        if not os.path.isdir(folder):
            raise DataError(f"domain {name!r}: data folder {folder} does not exist; fix domains.{name}.path "
                            f"or create the folder with {source_split}.jsonl (or .json/.csv) files")
        found = [source_split + ext for ext in FILE_BUILDERS if os.path.isfile(os.path.join(folder, source_split + ext))]
        if len(found) != 1:
            accepted = ", ".join(source_split + ext for ext in FILE_BUILDERS)
            problem = f"has several files for it ({', '.join(found)}); keep one" if found else \
                f"has no file for it; accepted names: {accepted}"
            raise DataError(f"domain {name!r}, split {split!r}: folder {folder} {problem}. It holds: "
                            f"{sorted(os.listdir(folder)) or 'nothing'}. To read another file, set "
                            f"domains.{name}.splits.{split}")
        file = os.path.join(folder, found[0])
        if os.path.getsize(file) == 0:
            raise DataError(f"domain {name!r}, split {split!r}: {file} is empty; add examples to it")
        try:
            return datasets.load_dataset(FILE_BUILDERS[os.path.splitext(file)[1]], data_files=file, split="train")
        except (datasets.exceptions.DatasetGenerationError, ValueError, StopIteration) as exc:
            if "corresponds to no data" in str(exc) or isinstance(exc, StopIteration):
                raise DataError(f"domain {name!r}, split {split!r}: {file} has no rows; add examples to it") from exc
            raise DataError(f"domain {name!r}, split {split!r}: {file} could not be read "
                            f"({type(exc).__name__}: {exc}); check that it is valid "
                            f"{FILE_BUILDERS[os.path.splitext(file)[1]].upper()}") from exc

    hub, subset = str(domain.hub), domain.subset
    kwargs: dict[str, Any] = {}
    if trust_remote_code:
        # datasets >= 4 dropped dataset scripts (and the argument with them).
        if "trust_remote_code" not in inspect.signature(datasets.load_dataset).parameters:
            raise DataError(f"domain {name!r}: trust_remote_code is not supported by the installed datasets "
                            f"{datasets.__version__} (dataset scripts were removed); use a script-free "
                            f"version of {hub!r} or export it to a folder and set domains.{name}.path")
        kwargs["trust_remote_code"] = True
    where = hub + (f" (subset {subset!r})" if subset else "")
    try:
        return datasets.load_dataset(hub, subset, split=source_split, **kwargs)
    except ConnectionError as exc:
        raise DataError(f"domain {name!r}: the dataset {where} could not be reached ({exc}). Without internet, "
                        f"export it to a folder of train/validation/test .jsonl or .csv files and set "
                        f"domains.{name}.path, or, if it is already in the datasets cache, set "
                        f"HF_DATASETS_OFFLINE=1") from exc
    except FileNotFoundError as exc:
        raise DataError(f"domain {name!r}: the dataset {where} was not found ({exc}); "
                        f"check domains.{name}.hub and domains.{name}.subset") from exc
    except ValueError as exc:
        if "split" not in str(exc).lower():
            raise
        raise DataError(f"domain {name!r}, split {split!r}: the dataset {where} has no split {source_split!r} "
                        f"({exc}); set domains.{name}.splits.{split} to one of its splits") from exc


def prepare_domain(name: str, raw: Mapping[str, datasets.Dataset], *, text_column: str = "text",
                   text_pair_column: str | None = None, label_column: str = "label",
                   max_train_examples: int | None = None, max_eval_examples: int | None = None,
                   seed: int = 0, label_names: Sequence[str] | None = None) -> DomainData:
    """Rename, clean, label-encode and cap already loaded splits (the part of ``load_domain`` after I/O)."""
    import datasets

    renames = {text_column: ("text", "text_column"), label_column: ("label", "label_column")}
    if text_pair_column:
        renames[text_pair_column] = ("text_pair", "text_pair_column")
    cleaned: dict[str, datasets.Dataset] = {}
    for split, ds in raw.items():
        for column, (_, key) in renames.items():
            if column not in ds.column_names:
                raise DataError(f"domain {name!r}, split {split!r}: no column {column!r}; the columns are "
                                f"{ds.column_names}. Set domains.{name}.{key} to one of them")
        ds = ds.select_columns(list(renames)).rename_columns({c: new for c, (new, _) in renames.items()})
        for column in ("text", "text_pair"):
            if column in ds.column_names and ds.features[column] != datasets.Value("string"):
                ds = ds.cast_column(column, datasets.Value("string"))
        # A row with no text cannot be classified; such rows are dropped, not kept as "".
        ds = ds.filter(lambda batch: [bool(t and t.strip()) for t in batch["text"]], batched=True)
        if len(ds) == 0:
            raise DataError(f"domain {name!r}, split {split!r} has no rows with text in column "
                            f"{text_column!r}; add examples or point domains.{name}.splits.{split} elsewhere")
        cleaned[split] = ds

    label_names, encode = _label_encoding(name, cleaned, label_column, known=label_names)
    out: dict[str, datasets.Dataset] = {}
    for split, ds in cleaned.items():
        if split == "train" and max_train_examples is not None and len(ds) > max_train_examples:
            ds = ds.shuffle(seed=seed).select(range(max_train_examples)).flatten_indices()
        elif split != "train" and max_eval_examples is not None and len(ds) > max_eval_examples:
            ds = ds.select(range(max_eval_examples))  # the first rows: evaluation stays reproducible
        labels = [encode(v) for v in ds["label"]]
        ds = ds.remove_columns("label").add_column("label", labels, feature=datasets.Value("int64"))
        out[split] = ds
    return DomainData(name=name, splits=out, label_names=label_names)


def _label_encoding(name: str, splits: Mapping[str, datasets.Dataset], label_column: str,
                    known: Sequence[str] | None = None) -> tuple[tuple[str, ...], Any]:
    """The label names and a value -> int function, after checking every split's labels.

    ``known``: a trained head's class names; string labels are encoded in that order."""
    import datasets

    fix = f"check domains.{name}.label_column (now {label_column!r})"
    class_labels = [ds.features["label"] for ds in splits.values() if isinstance(ds.features["label"], datasets.ClassLabel)]
    if class_labels:
        names = tuple(class_labels[0].names)
        for split, ds in splits.items():
            feature = ds.features["label"]
            if not isinstance(feature, datasets.ClassLabel) or tuple(feature.names) != names:
                raise DataError(f"domain {name!r}, split {split!r}: its labels {feature} differ from the "
                                f"class names {list(names)} of the other splits; use one label set in every split")
            bad = sorted(v for v in ds.unique("label") if not 0 <= v < len(names))
            if bad:
                raise DataError(f"domain {name!r}, split {split!r} has label {bad[0]} outside the classes "
                                f"{list(names)} (-1 marks an unlabelled split, e.g. a hub test split); set "
                                f"domains.{name}.splits.{split} to a labelled split")
        return names, int

    kinds: dict[str, str] = {}
    values: dict[str, list] = {}
    for split, ds in splits.items():
        uniques = ds.unique("label")
        for v in uniques:
            if isinstance(v, str):
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v).is_integer() or v < 0:
                raise DataError(f"domain {name!r}, split {split!r} has label {v!r}; labels must be class "
                                f"names (strings) or integers >= 0; {fix}")
        strings = [isinstance(v, str) for v in uniques]
        if any(strings) and not all(strings):
            raise DataError(f"domain {name!r}, split {split!r} mixes string and integer labels; use one kind")
        kinds[split] = "str" if all(strings) else "int"
        values[split] = uniques if kinds[split] == "str" else [int(v) for v in uniques]
    if len(set(kinds.values())) > 1:
        raise DataError(f"domain {name!r}: splits disagree on the kind of label ({kinds}); "
                        f"use class names everywhere or integers everywhere")

    if next(iter(kinds.values())) == "int":
        top = max(max(v) for v in values.values())
        return tuple(str(i) for i in range(top + 1)), int
    reference = ["train"] if "train" in values else list(values)
    names = tuple(known) if known else tuple(sorted({v for s in reference for v in values[s]}))
    for split, seen in values.items():
        unseen = sorted(set(seen) - set(names))
        if unseen and known:
            raise DataError(f"domain {name!r}, split {split!r} has label {unseen[0]!r}, which the trained head "
                            f"does not know (its classes: {list(names)}); retrain with `signmix train CONFIG --force`")
        if unseen:
            raise DataError(f"domain {name!r}, split {split!r} has label {unseen[0]!r} that never occurs in "
                            f"the train split (labels: {list(names)}); fix the data or {fix}")
    index = {label: i for i, label in enumerate(names)}
    return names, index.__getitem__


def check_labels(data: DomainData, num_labels: int) -> None:
    """Raise :class:`DataError` if any label of ``data`` is outside a head with ``num_labels`` classes."""
    for split, ds in data.splits.items():
        top = max(ds.unique("label"), default=-1)
        if top >= num_labels:
            raise DataError(f"domain {data.name!r}: labels in split {split!r} go up to {top} but the head has "
                            f"{num_labels} classes; retrain the adapter for {data.name!r} on this data, or "
                            f"check domains.{data.name}.label_column and its splits")


# Tokenisation and batching ----------------------------------------------------------


@dataclass(frozen=True)
class EncodedSplit:
    """A tokenised split: unpadded token ids per row, their labels, and the pad id to batch them."""

    input_ids: list[list[int]]
    token_type_ids: list[list[int]] | None
    labels: list[int]
    pad_token_id: int

    def __len__(self) -> int:
        return len(self.input_ids)


def encode_split(tokenizer: Any, dataset: datasets.Dataset, max_length: int) -> EncodedSplit:
    """Tokenise a split (``text`` and optional ``text_pair``), truncated to ``max_length``, unpadded."""
    pairs = dataset["text_pair"] if "text_pair" in dataset.column_names else None
    enc = tokenizer(list(dataset["text"]), [p or "" for p in pairs] if pairs is not None else None,
                    truncation=True, max_length=max_length, padding=False)
    # Padded positions are masked out, so any id works for tokenizers without a pad token.
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    return EncodedSplit(input_ids=[list(x) for x in enc["input_ids"]],
                        token_type_ids=[list(x) for x in enc["token_type_ids"]] if "token_type_ids" in enc else None,
                        labels=[int(v) for v in dataset["label"]], pad_token_id=int(pad))


def iter_batches(encoded: EncodedSplit, batch_size: int, *, sort_by_length: bool = True,
                 indices: Sequence[int] | None = None) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """Yield ``(row indices, padded batch)``; rows sorted by length (ties by index) unless told not to."""
    rows = list(range(len(encoded))) if indices is None else [int(i) for i in indices]
    bad = [i for i in rows if not 0 <= i < len(encoded)]
    if bad:
        raise ValueError(f"row index {bad[0]} is outside the split's {len(encoded)} rows")
    if sort_by_length:
        rows.sort(key=lambda i: (len(encoded.input_ids[i]), i))
    yield from _batches(encoded, rows, batch_size)


def shuffled_batches(encoded: EncodedSplit, batch_size: int, *, seed: int,
                     epoch: int) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    """Yield training batches in a permutation fixed by ``(seed, epoch)``."""
    rows = list(range(len(encoded)))
    random.Random(f"{seed}:{epoch}").shuffle(rows)  # a str seed hashes the same in every process
    yield from _batches(encoded, rows, batch_size)


def _batches(encoded: EncodedSplit, rows: list[int],
             batch_size: int) -> Iterator[tuple[list[int], dict[str, torch.Tensor]]]:
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(len(encoded.input_ids[i]) for i in chunk)
        ids = torch.full((len(chunk), width), encoded.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        types = torch.zeros((len(chunk), width), dtype=torch.long) if encoded.token_type_ids is not None else None
        for r, i in enumerate(chunk):
            n = len(encoded.input_ids[i])
            ids[r, :n] = torch.tensor(encoded.input_ids[i], dtype=torch.long)
            mask[r, :n] = 1
            if types is not None:
                types[r, :n] = torch.tensor(encoded.token_type_ids[i], dtype=torch.long)
        batch = {"input_ids": ids, "attention_mask": mask,
                 "labels": torch.tensor([encoded.labels[i] for i in chunk], dtype=torch.long)}
        if types is not None:
            batch["token_type_ids"] = types
        yield chunk, batch
