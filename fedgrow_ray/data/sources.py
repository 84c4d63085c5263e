"""Where the raw examples come from: named public datasets (Hugging Face hub or cache), local
files (Parquet, CSV, JSON Lines, image folders) and the offline synthetic sets.

Every source gives the same `Raw`: train and test `datasets.Dataset`s with a column `text` or
`image` and a column `label` (int 0..K-1), plus the class names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv
import pyarrow.json
import pyarrow.parquet

from .synthetic import synthetic_image, synthetic_text

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class DatasetUnavailable(ValueError):
    """A named public dataset is neither in the local Hugging Face cache nor downloadable."""


@dataclass(frozen=True)
class Raw:
    train: Dataset
    test: Dataset
    class_names: list[str]
    family: str  # "text" or "image": the column holding the inputs


@dataclass(frozen=True)
class HubDataset:
    path: str
    family: str
    input_column: str
    label_column: str
    train_split: str = "train"
    test_split: str = "test"
    names_column: str | None = None  # a column of label names, where the label is a plain int


HUB = {
    "ag_news": HubDataset("fancyzhx/ag_news", "text", "text", "label"),
    "20newsgroups": HubDataset("SetFit/20_newsgroups", "text", "text", "label", names_column="label_text"),
    "cifar10": HubDataset("uoft-cs/cifar10", "image", "img", "label"),
    "cifar100": HubDataset("uoft-cs/cifar100", "image", "img", "fine_label"),
    # The official split has 10 training images per class; train + validation gives 20.
    "flowers102": HubDataset("dpdl-benchmark/oxford_flowers102", "image", "image", "label",
                             train_split="train+validation"),
}
SYNTHETIC = {"synthetic_text": ("text", synthetic_text), "synthetic_image": ("image", synthetic_image)}
SOURCE_FAMILY = {**{name: family for name, (family, _) in SYNTHETIC.items()},
                 **{name: hub.family for name, hub in HUB.items()}, "files": None}
FORMAT_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl",
                   ".json": "jsonl", ".ndjson": "jsonl"}


def load_source(spec: dict, seed: int) -> Raw:
    """The raw train and test sets a checked data spec names (see check_data_spec)."""
    source = spec["source"]
    if source in SYNTHETIC:
        family, generate = SYNTHETIC[source]
        raw = Raw(*generate(spec["num_classes"], spec["train_size"], spec["test_size"], seed,
                            spec["label_noise"]), family)
    elif source in HUB:
        raw = load_hub(source)
    else:
        raw = load_files(spec["files"], spec["num_classes"], seed, spec["partition"].get("column"))
    limit = spec["max_train_samples"]
    if limit is not None and limit < len(raw.train):
        keep = np.sort(np.random.default_rng([seed, 303]).choice(len(raw.train), limit, replace=False))
        raw = Raw(raw.train.select(keep), raw.test, raw.class_names, raw.family)
    return raw


# ---- named public datasets ------------------------------------------------------------------

def load_hub(name: str) -> Raw:
    """A named public dataset from the Hugging Face cache, downloading it where possible."""
    import datasets

    hub = HUB[name]
    try:
        train, test = (datasets.load_dataset(hub.path, split=split)
                       for split in (hub.train_split, hub.test_split))
    except OSError as err:  # hub, network and cache misses are all OSErrors
        raise DatasetUnavailable(_unavailable_message(name, hub, err)) from None
    where = f"dataset {name!r} ({hub.path})"
    names = None
    if hub.names_column:
        names = dict(zip(column(train, hub.label_column), column(train, hub.names_column)))
        names = [names[k] for k in sorted(names)]
    return _normalise(train, test, hub.input_column, hub.label_column, hub.family,
                      names, None, "data.source", f"{where} {hub.train_split}", f"{where} {hub.test_split}")


def _unavailable_message(name, hub, err):
    """One line: what is missing, where it was looked for, and the two ways to provide it
    (spelled out in this package's docstring, "Datasets offline")."""
    import datasets

    reason = (str(err).splitlines() or [""])[0]
    return (f"data.source: dataset {name!r} (Hugging Face {hub.path!r}) is not available offline: it is "
            f"not in the Hugging Face cache ({datasets.config.HF_DATASETS_CACHE}) and cannot be "
            f"downloaded here ({type(err).__name__}: {reason}); on a machine with internet run "
            f"python -c \"import datasets; datasets.load_dataset('{hub.path}')\" and copy its "
            f"~/.cache/huggingface here (or point HF_HOME at the copy), or export the splits "
            f"({hub.train_split!r}, {hub.test_split!r}) to Parquet and use source: files with "
            f"{hub.family}_column: {hub.input_column}, label_column: {hub.label_column} (see 'Datasets "
            f"offline' in fedgrow_ray/data/__init__.py)")


# ---- local files ----------------------------------------------------------------------------

def load_files(files: dict, num_classes: int | None, seed: int, owner_column: str | None = None) -> Raw:
    """Local files in a checked `files` spec; without a test file, a seeded share of the train
    file becomes the test set. With `owner_column` (data.partition scheme natural), the training
    set keeps that column as `participant`."""
    import datasets

    family = files_family(files)
    input_column = files.get("text_column") or files.get("image_column") or "image"

    def read(path, key):
        if files["format"] == "imagefolder":
            return _read_image_folder(path, key)
        dataset = _read_table(path, files["format"], key)
        if family == "image" and dataset.features.get(input_column) == datasets.Value("string"):
            # Image paths in a table are relative to the table's folder.
            paths = [str(Path(path).parent / p) for p in column(dataset, input_column)]
            dataset = dataset.remove_columns(input_column).add_column(input_column, paths)
        return dataset

    train = read(files["train"], "data.files.train")
    if files["test"] is None:
        order = np.random.default_rng([seed, 404]).permutation(len(train))
        cut = int(round(len(train) * files["test_fraction"]))
        if cut == 0 or cut == len(train):
            raise ValueError(f"data.files.test_fraction: {files['test_fraction']} of {len(train)} "
                             f"rows leaves an empty train or test set")
        train, test = train.select(np.sort(order[cut:])), train.select(np.sort(order[:cut]))
        test_where = f"{files['train']} (test share)"
    else:
        test = read(files["test"], "data.files.test")
        test_where = files["test"]
    label_column = files.get("label_column", "label")  # image folders name it "label"
    if owner_column is not None and owner_column not in train.column_names:
        raise ValueError(f"data.partition.column: column {owner_column!r} is not in {files['train']}; "
                         f"columns present: {train.column_names}")
    owners = column(train, owner_column) if owner_column is not None else None
    raw = _normalise(train, test, input_column, label_column, family, None, num_classes, "data.files",
                     files["train"], test_where)
    if owners is not None:
        raw = Raw(raw.train.add_column("participant", [str(o) for o in owners]), raw.test, raw.class_names,
                  raw.family)
    return raw


def files_family(files: dict) -> str:
    """"text" or "image": what a checked `files` spec holds."""
    return "text" if files.get("text_column") else "image"


def _read_table(path, file_format, key) -> Dataset:
    from datasets import Dataset
    from datasets.table import InMemoryTable

    path = _existing(path, key)
    if path.stat().st_size == 0:
        raise ValueError(f"{key}: {path} is empty")
    readers = {"parquet": pyarrow.parquet.read_table, "csv": pyarrow.csv.read_csv,
               "jsonl": pyarrow.json.read_json}
    try:
        table = readers[file_format](path)
    except (pa.ArrowException, OSError) as err:
        raise ValueError(f"{key}: cannot read {path} as {file_format}: {err}") from None
    if table.num_rows == 0:
        raise ValueError(f"{key}: {path} has no rows")
    return Dataset(InMemoryTable(table))  # features from the schema, Hugging Face metadata included


def _read_image_folder(path, key) -> Dataset:
    """A class-per-subfolder tree: root/<class name>/<image>; labels are folder names."""
    from datasets import Dataset

    root = _existing(path, key)
    if not root.is_dir():
        raise ValueError(f"{key}: {root} is not a folder (format imagefolder wants root/<class>/<image>)")
    paths, labels = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for image in sorted(folder.rglob("*")):
            if image.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(str(image))
                labels.append(folder.name)
    if not paths:
        raise ValueError(f"{key}: no images under {root} (expected root/<class>/<image> with "
                         f"suffixes {sorted(IMAGE_SUFFIXES)})")
    return Dataset.from_dict({"image": paths, "label": labels})


def _existing(path, key) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        # Imported here: `python -m fedgrow_ray.data.offline` imports this module first.
        from .offline import missing_file_hint
        where = "" if path.is_absolute() else f" (relative to the current folder, {Path.cwd()})"
        raise ValueError(f"{key}: {path} does not exist{where}{missing_file_hint(path)}")
    return path


# ---- columns and labels ---------------------------------------------------------------------

def _normalise(train, test, input_column, label_column, family, names, num_classes, owner,
               train_where, test_where) -> Raw:
    """Keep the input and label columns, renamed to text|image and label; labels to 0..K-1.
    `owner` is the spec key that errors name (data.files or data.source)."""
    import datasets
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature
    from datasets.table import InMemoryTable

    for dataset, where in ((train, train_where), (test, test_where)):
        for key, name in ((f"{family}_column", input_column), ("label_column", label_column)):
            if name not in dataset.column_names:
                raise ValueError(f"{owner}.{key}: column {name!r} is not in {where}; columns "
                                 f"present: {dataset.column_names}")
    feature = train.features[label_column]
    if isinstance(feature, ClassLabel):
        names = feature.names
    train_labels, test_labels, names = _encode_labels(
        column(train, label_column), column(test, label_column), names, num_classes,
        f"{owner}.label_column", train_where, test_where)

    def tidy(dataset, labels):
        # Built from Arrow columns directly: datasets' add_column/cast_column would copy and cast
        # row by row behind progress bars.
        values = dataset.with_format("arrow").select_columns([input_column])[:][input_column]
        feature = dataset.features[input_column]
        if family == "text" and feature != datasets.Value("string"):
            raise ValueError(f"{owner}.text_column: column {input_column!r} holds {feature}, not text")
        if family == "image" and not isinstance(feature, ImageFeature) \
                and not type(feature).__name__.startswith("Array"):
            try:  # image files' paths, encoded bytes or {bytes, path} records
                values, feature = ImageFeature().cast_storage(values.combine_chunks()), ImageFeature()
            except (TypeError, ValueError, pa.ArrowException):
                raise ValueError(f"{owner}.image_column: column {input_column!r} holds {feature}, "
                                 f"not images (expected image files' paths or bytes)") from None
        table = pa.table({family: values, "label": pa.array(labels)})
        features = Features({family: feature, "label": ClassLabel(names=names)})
        return Dataset(InMemoryTable(table), info=datasets.DatasetInfo(features=features))

    return Raw(tidy(train, train_labels), tidy(test, test_labels), list(names), family)


def _encode_labels(train, test, names, num_classes, key, train_where, test_where):
    """Integer labels (checked against the class count) or string labels (classes = sorted
    distinct training labels) to int64 arrays in 0..K-1, with the class names."""
    train, test = np.asarray(train, dtype=object), np.asarray(test, dtype=object)
    if all(isinstance(v, str) for v in train) and all(isinstance(v, str) for v in test):
        names = sorted(set(train))
        index = {name: i for i, name in enumerate(names)}
        unseen = sorted(set(test) - set(index))
        if unseen:
            raise ValueError(f"{key}: {test_where} has labels {unseen[:5]} that "
                             f"the training data never uses; known: {names[:20]}")
        return (np.array([index[v] for v in train], dtype=np.int64),
                np.array([index[v] for v in test], dtype=np.int64), names)
    ints = []
    for values, where in ((train, train_where), (test, test_where)):
        bad = [v for v in values if isinstance(v, bool) or not _integral(v)]
        if bad:
            raise ValueError(f"{key}: {where} has non-integer labels, e.g. "
                             f"{bad[:3]}; labels must be integers 0..K-1 or strings (class names)")
        ints.append(np.array([int(v) for v in values], dtype=np.int64))
    count = len(names) if names else num_classes or int(max(ints[0].max(), ints[1].max())) + 1
    for values, where in zip(ints, (train_where, test_where)):
        outside = values[(values < 0) | (values >= count)]
        if outside.size:
            raise ValueError(f"{key}: {where} has labels out of range "
                             f"{sorted(set(outside.tolist()))[:5]}; expected 0..{count - 1}")
    return ints[0], ints[1], names or [str(k) for k in range(count)]


def _integral(value):
    return isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer())


def column(dataset: Dataset, name: str) -> list:
    """One column's values as a Python list, without decoding the other columns."""
    return dataset.select_columns([name])[:][name]
