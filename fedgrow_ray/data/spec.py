"""The `data:` section of a scenario: its keys, their defaults and their validation. Pure: no
file, cache or network is touched, so a scenario can be checked anywhere."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import PurePath

from .sources import FORMAT_SUFFIXES, SOURCE_FAMILY, SYNTHETIC, files_family
from .synthetic import MAX_IMAGE_CLASSES

COMMON = {"source", "max_train_samples", "partition", "test_per_participant", "global_test_size", "tokenizer"}
# data.tokenizer (text): train a word-level tokenizer on the training texts, or use the one saved
# in the participants' model.checkpoints folders
TOKENIZERS = ("train", "from_checkpoint")
SYNTHETIC_DEFAULTS = {"num_classes": 4, "train_size": 4000, "test_size": 1000, "label_noise": 0.05}
PARTITION_DEFAULTS = {
    "iid": {},
    "dirichlet": {"alpha": 0.5, "min_samples": 2},
    "quantity_skew": {"sigma": 1.0, "min_samples": 2},
    "shards": {"shards_per_participant": 2},
    # Lazy (a million participants): each participant's rows are drawn when it is first used,
    # a pure function of the seed and its id (rows may repeat across participants).
    "sampled": {"samples": 40},
    # A dataset column names each row's participant (data.files sources).
    "natural": {"column": None},
}
LAZY_SCHEMES = ("sampled", "natural")  # test splits drawn per participant on first use
FORMATS = ("parquet", "csv", "jsonl", "imagefolder")


def check_data_spec(raw, where: str = "data") -> dict:
    """The data spec with every default filled in; a ValueError names the first bad key, its
    value and what is allowed. Checking a checked spec returns it unchanged."""
    raw = _mapping(raw, where)
    source = raw.get("source")
    if source not in SOURCE_FAMILY:
        raise ValueError(f"{where}.source: {source!r} is unknown; allowed: {sorted(SOURCE_FAMILY)}")
    allowed = COMMON | (set(SYNTHETIC_DEFAULTS) if source in SYNTHETIC else set()) \
        | ({"files", "num_classes"} if source == "files" else set())
    _no_unknown(raw, allowed, where, f"source {source!r}")

    spec = {"source": source}
    if source in SYNTHETIC:
        raw = {**SYNTHETIC_DEFAULTS, **raw}
        limit = MAX_IMAGE_CLASSES if source == "synthetic_image" else None
        spec["num_classes"] = check_int(raw["num_classes"], f"{where}.num_classes", 2, limit)
        spec["train_size"] = check_int(raw["train_size"], f"{where}.train_size", 1)
        spec["test_size"] = check_int(raw["test_size"], f"{where}.test_size", 1)
        spec["label_noise"] = _number(raw["label_noise"], f"{where}.label_noise",
                                      lambda x: 0 <= x < 1, "in [0, 1)")
    if source == "files":
        spec["files"] = _check_files(raw.get("files"), f"{where}.files")
        spec["num_classes"] = _optional(raw.get("num_classes"), f"{where}.num_classes", 2)
    spec["max_train_samples"] = _optional(raw.get("max_train_samples"), f"{where}.max_train_samples", 1)
    spec["partition"] = _check_partition(raw.get("partition", {}), f"{where}.partition")
    if spec["partition"]["scheme"] == "natural" and source != "files":
        raise ValueError(f"{where}.partition.scheme: 'natural' is not allowed with source {source!r}; "
                         f"it needs data.files with a column naming each row's participant")
    spec["test_per_participant"] = check_int(raw.get("test_per_participant", 100),
                                            f"{where}.test_per_participant", 1)
    spec["global_test_size"] = _optional(raw.get("global_test_size"), f"{where}.global_test_size", 1)
    if spec_family(spec) == "text":
        spec["tokenizer"] = raw.get("tokenizer", "train")
        if spec["tokenizer"] not in TOKENIZERS:
            raise ValueError(f"{where}.tokenizer: {spec['tokenizer']!r} is unknown; allowed: {list(TOKENIZERS)}")
    elif raw.get("tokenizer") is not None:
        raise ValueError(f"{where}.tokenizer: {raw['tokenizer']!r} is not allowed; images have no tokenizer")
    return spec


def spec_family(spec: dict) -> str:
    """"text" or "image": what a checked spec's inputs are."""
    return SOURCE_FAMILY[spec["source"]] or files_family(spec["files"])


def _check_files(raw, where):
    raw = _mapping(raw, where)
    if not isinstance(raw.get("train"), str) or not raw["train"]:
        raise ValueError(f"{where}.train: {raw.get('train')!r} must be the path of the training "
                         f"file (or image folder)")
    file_format = raw.get("format") or _format_of(raw["train"], where)
    if file_format not in FORMATS:
        raise ValueError(f"{where}.format: {file_format!r} is unknown; allowed: {list(FORMATS)}")
    common = {"train", "test", "format", "test_fraction"}
    columns = {"text_column", "image_column", "label_column"}
    _no_unknown(raw, common if file_format == "imagefolder" else common | columns,
                where, f"format {file_format!r} (the class is the subfolder name)"
                if file_format == "imagefolder" else f"format {file_format!r}")
    test = raw.get("test")
    if test is not None and (not isinstance(test, str) or not test):
        raise ValueError(f"{where}.test: {test!r} must be a path or null (null: split the train file)")
    files = {"train": raw["train"], "test": test, "format": file_format,
             "test_fraction": _number(raw.get("test_fraction", 0.2), f"{where}.test_fraction",
                                      lambda x: 0 < x < 1, "in (0, 1)")}
    if file_format == "imagefolder":
        return files
    named = [key for key in ("text_column", "image_column") if raw.get(key) is not None]
    if len(named) != 1:
        raise ValueError(f"{where}: name exactly one of text_column or image_column (the column "
                         f"holding the inputs), got {named or 'neither'}")
    for key in (*named, "label_column"):
        value = raw.get(key, "label")
        if not isinstance(value, str) or not value:
            raise ValueError(f"{where}.{key}: {value!r} must be a column name")
    return {**files, "text_column": raw.get("text_column"), "image_column": raw.get("image_column"),
            "label_column": raw.get("label_column", "label")}


def _format_of(path, where):
    suffix = PurePath(path).suffix.lower()
    if not suffix:
        return "imagefolder"
    if suffix not in FORMAT_SUFFIXES:
        raise ValueError(f"{where}.format: cannot tell the format of {path!r} from its suffix; "
                         f"set it to one of {list(FORMATS)}")
    return FORMAT_SUFFIXES[suffix]


def _check_partition(raw, where):
    raw = _mapping(raw, where)
    scheme = raw.get("scheme", "dirichlet")
    if scheme not in PARTITION_DEFAULTS:
        raise ValueError(f"{where}.scheme: {scheme!r} is unknown; allowed: {list(PARTITION_DEFAULTS)}")
    _no_unknown(raw, {"scheme", *PARTITION_DEFAULTS[scheme]}, where, f"scheme {scheme!r}")
    params = {**PARTITION_DEFAULTS[scheme], **raw}
    spec = {"scheme": scheme}
    if "alpha" in params:
        spec["alpha"] = _number(params["alpha"], f"{where}.alpha", lambda x: x > 0, "> 0")
    if "sigma" in params:
        spec["sigma"] = _number(params["sigma"], f"{where}.sigma", lambda x: x >= 0, ">= 0")
    if "min_samples" in params:
        spec["min_samples"] = check_int(params["min_samples"], f"{where}.min_samples", 1)
    if "samples" in params:
        spec["samples"] = check_int(params["samples"], f"{where}.samples", 1)
    if scheme == "natural":
        if not isinstance(params["column"], str) or not params["column"]:
            raise ValueError(f"{where}.column: {params['column']!r} must name the column of the files "
                             f"that says whose row it is")
        spec["column"] = params["column"]
    if "shards_per_participant" in params:
        spec["shards_per_participant"] = check_int(params["shards_per_participant"],
                                                  f"{where}.shards_per_participant", 1)
    return spec


def _mapping(raw, where):
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {raw!r}")
    return dict(raw)


def _no_unknown(raw, allowed, where, context):
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} for {context}; allowed: {sorted(allowed)}")


def check_int(value, where: str, minimum: int, maximum: int | None = None) -> int:
    """`value` if it is an int (not a bool) in [minimum, maximum]; else a ValueError naming `where`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum \
            or (maximum is not None and value > maximum):
        allowed = f"an integer >= {minimum}" + (f" and <= {maximum}" if maximum is not None else "")
        raise ValueError(f"{where}: {value!r} must be {allowed}")
    return value


def _optional(value, where, minimum):
    return None if value is None else check_int(value, where, minimum)


def _number(value, where, test, allowed):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not test(value):
        raise ValueError(f"{where}: {value!r} must be a number {allowed}")
    return float(value)
