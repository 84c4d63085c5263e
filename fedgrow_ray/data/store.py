"""Prepared data on disk and its memory-mapped views.

`prepare_data` builds, once per (data spec, model sizes, number of participants, seed), a folder
in a cache directory holding:
    train.arrow, test.arrow   encoded inputs and labels (Arrow IPC, one record batch each)
    partition.arrow           row i: participant i's train and test indices
    global_test.arrow         the indices of the shared test set
    tokenizer.json            (text, data.tokenizer: train) the word-level tokenizer
    tokenizer/                (text, data.tokenizer: from_checkpoint) the checkpoints' tokenizer
    encodings/<k>/            (from_checkpoint with k+1 distinct tokenizers) the same texts encoded
                              with tokenizer k: train.arrow, test.arrow, tokenizer/ (the root's
                              files are encoding 0)
    meta.json                 classes, family, sizes actually used, the spec; written last
`PreparedData.open` memory-maps it, so every participant hosted on a machine reads the same
pages instead of holding its own copy; pickled, a PreparedData or Shard travels as its path.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from .encode import (
    IMAGE_MODES,
    SPECIAL_TOKENS,
    encode_images,
    encode_texts,
    normalise_pixels,
    train_tokenizer,
)
from .partition import matched_test, partition
from .sources import HUB, column, load_source
from .spec import LAZY_SCHEMES, check_data_spec, check_int, spec_family

FORMAT_VERSION = 1
INPUT_COLUMN = {"text": "input_ids", "image": "pixels"}


def prepare_data(spec, family: str, num_participants: int, seed: int, cache_dir, *,
                 max_positions: int = 128, vocab_size: int = 30522, image_size: int = 32,
                 channels: int = 3, tokenizer_dirs: list | None = None) -> Path:
    """The folder of the prepared data, building it if this cache does not hold it yet.

    Text uses max_positions and vocab_size (a cap: meta.json and PreparedData.vocab_size give the
    size used), images image_size and channels. Safe to call from many processes at once: one
    builds while the others wait, and a folder appears complete or not at all. Preparation is
    deterministic, so machines without a shared cache each build the same data. With
    data.tokenizer: from_checkpoint, texts are encoded with each Hugging Face tokenizer saved in
    `tokenizer_dirs` (distinct tokenizers; vocab_size is then each one's own): one encoding per
    tokenizer, all sharing the partition and the test sets (`PreparedData.open(path, k)`)."""
    spec = check_data_spec(spec)
    if spec_family(spec) != family:
        raise ValueError(f"data.source: {spec['source']!r} holds {spec_family(spec)} data but the "
                         f"model family is {family!r}")
    check_int(num_participants, "num_participants", 1)
    check_int(seed, "seed", 0)
    if family == "text":
        sizes = {"max_positions": check_int(max_positions, "max_positions", 2),
                 "vocab_size": check_int(vocab_size, "vocab_size", len(SPECIAL_TOKENS) + 1)}
        if spec.get("tokenizer") == "from_checkpoint":
            if not tokenizer_dirs:
                raise ValueError("data.tokenizer: from_checkpoint needs the checkpoint folders holding the tokenizers")
            sizes = {"max_positions": sizes["max_positions"],
                     "tokenizers": [tokenizer_fingerprint(folder) for folder in tokenizer_dirs]}
    else:
        sizes = {"image_size": check_int(image_size, "image_size", 1), "channels": channels}
        if channels not in IMAGE_MODES:
            raise ValueError(f"channels={channels!r} is not supported; allowed: {sorted(IMAGE_MODES)}")
    key = {"format": FORMAT_VERSION, "spec": spec, "family": family, "sizes": sizes,
           "num_participants": num_participants, "seed": seed, "files": _files_fingerprint(spec)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    cache_dir = Path(cache_dir).expanduser()
    folder = cache_dir / f"{spec['source']}-{digest}"
    if (folder / "meta.json").is_file():
        return folder
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{folder.name}.lock", "w") as lock:
        # One builder per machine; the others wait here, then find the folder.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "meta.json").is_file():
            _build_atomically(folder, spec, family, sizes, num_participants, seed, tokenizer_dirs)
    return folder


# The files a Hugging Face tokenizer folder may hold (WordPiece: vocab.txt; BPE: vocab.json and
# merges.txt; fast tokenizers: tokenizer.json; and their settings).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "merges.txt", "spiece.model",
                   "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def tokenizer_fingerprint(folder) -> str:
    """A digest of the tokenizer files in a checkpoint folder: equal digests, the same tokenizer."""
    digest = hashlib.sha256()
    found = False
    for name in TOKENIZER_FILES:
        path = Path(folder) / name
        if path.is_file():
            found = True
            digest.update(name.encode())
            digest.update(path.read_bytes())
    if not found:
        raise ValueError(f"{folder} holds no tokenizer (none of {list(TOKENIZER_FILES)}); save one "
                         f"beside the model with tokenizer.save_pretrained")
    return digest.hexdigest()[:16]


def _build_atomically(folder, spec, family, sizes, num_participants, seed, tokenizer_dirs=None):
    scratch = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _build(scratch, spec, family, sizes, num_participants, seed, tokenizer_dirs)
        os.rename(scratch, folder)
    except OSError:
        # A process elsewhere (another machine sharing this cache) renamed its copy first.
        if not (folder / "meta.json").is_file():
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _build(into: Path, spec, family, sizes, num_participants, seed, tokenizer_dirs=None):
    started = time.perf_counter()
    raw = load_source(spec, seed)
    num_classes = len(raw.class_names)
    train_labels = np.asarray(column(raw.train, "label"), dtype=np.int64)
    test_labels = np.asarray(column(raw.test, "label"), dtype=np.int64)
    # Each use of the seed draws from its own stream, default_rng([seed, tag]), so that changing
    # one step (say the partition) leaves the others' draws as they were.
    scheme = spec["partition"]["scheme"]
    if scheme == "natural":
        owners = natural_rows(column(raw.train, "participant"), num_participants)
    elif scheme not in LAZY_SCHEMES:
        parts = partition(train_labels, num_participants, np.random.default_rng([seed, 505]),
                          **spec["partition"])

    if family == "text" and tokenizer_dirs:
        encodings = []
        for k, tokenizer_dir in enumerate(tokenizer_dirs):
            where = into if k == 0 else into / "encodings" / str(k)
            where.mkdir(parents=True, exist_ok=True)
            vocab_size, pad_id = _encode_with_checkpoint_tokenizer(tokenizer_dir, raw, sizes["max_positions"],
                                                                   where, train_labels, test_labels)
            encodings.append({"fingerprint": sizes["tokenizers"][k], "vocab_size": vocab_size,
                              "pad_token_id": pad_id})
        used = {"max_positions": sizes["max_positions"], "vocab_size": encodings[0]["vocab_size"],
                "pad_token_id": encodings[0]["pad_token_id"], "encodings": encodings}
    else:
        if family == "text":
            texts = column(raw.train, "text")
            tokenizer = train_tokenizer(texts, sizes["vocab_size"])
            train_inputs = encode_texts(tokenizer, texts, sizes["max_positions"])
            test_inputs = encode_texts(tokenizer, column(raw.test, "text"), sizes["max_positions"])
            tokenizer.save(str(into / "tokenizer.json"))  # with its padding and truncation
            used = {**sizes, "vocab_size": tokenizer.get_vocab_size()}
        else:
            train_inputs = encode_images(raw.train, sizes["image_size"], sizes["channels"])
            test_inputs = encode_images(raw.test, sizes["image_size"], sizes["channels"])
            used = sizes
        _write_split(into / "train.arrow", family, train_inputs, train_labels)
        _write_split(into / "test.arrow", family, test_inputs, test_labels)

    if scheme == "natural":  # rows grouped by participant: two arrays, nothing per participant
        _write(into / "partition.arrow", {"train": pa.ListArray.from_arrays(
            pa.array(owners[0].astype(np.int32)), pa.array(owners[1]))})
    elif scheme not in LAZY_SCHEMES:
        test_rng = np.random.default_rng([seed, 606])
        test_by_class = [np.flatnonzero(test_labels == k) for k in range(num_classes)]
        tests = [matched_test(train_labels[p], test_by_class, spec["test_per_participant"], test_rng)
                 for p in parts]
        _write(into / "partition.arrow", {"train": _lists(parts), "test": _lists(tests)})
    global_size = spec["global_test_size"]
    global_test = np.arange(len(test_labels))
    if global_size is not None and global_size < len(test_labels):
        global_test = np.sort(np.random.default_rng([seed, 707]).choice(len(test_labels), global_size,
                                                                        replace=False))
    _write(into / "global_test.arrow", {"index": pa.array(global_test.astype(np.int64))})

    meta = {
        "format": FORMAT_VERSION, "family": family, "num_classes": num_classes,
        "class_names": raw.class_names, **used, "num_participants": num_participants, "seed": seed,
        "train_size": len(train_labels), "test_size": len(test_labels),
        "global_test_size": len(global_test), "spec": spec,
        "hub_dataset": HUB[spec["source"]].path if spec["source"] in HUB else None,
        "build_seconds": round(time.perf_counter() - started, 3),
    }
    (into / "meta.json").write_text(json.dumps(meta, indent=1))


def _encode_with_checkpoint_tokenizer(tokenizer_dir, raw, length: int, into: Path,
                                      train_labels, test_labels) -> tuple[int, int]:
    """Encode both splits with the Hugging Face tokenizer saved in `tokenizer_dir`, writing
    train.arrow, test.arrow and the tokenizer into `into`; returns (vocabulary size, padding id)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    if tokenizer.pad_token_id is None:
        raise ValueError(f"the tokenizer in {tokenizer_dir} has no padding token")

    def encode(texts):
        ids = tokenizer(texts, padding="max_length", truncation=True, max_length=length,
                        return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        return np.asarray(ids, dtype=np.int32).reshape(len(texts), length)

    _write_split(into / "train.arrow", "text", encode(column(raw.train, "text")), train_labels,
                 tokenizer.pad_token_id)
    _write_split(into / "test.arrow", "text", encode(column(raw.test, "text")), test_labels,
                 tokenizer.pad_token_id)
    tokenizer.save_pretrained(str(into / "tokenizer"))
    return len(tokenizer), tokenizer.pad_token_id


def natural_rows(owners, num_participants: int) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, rows): participant i (the i-th distinct owner, in sorted order) holds the rows
    rows[offsets[i]:offsets[i + 1]], in file order; owners beyond num_participants are left out."""
    names, codes = np.unique(np.asarray(owners), return_inverse=True)
    if len(names) < num_participants:
        raise ValueError(f"data.partition: the natural column names {len(names)} participants, fewer "
                         f"than participants={num_participants}")
    rows = np.argsort(codes, kind="stable")
    rows = rows[codes[rows] < num_participants].astype(np.int64)
    offsets = np.searchsorted(codes[rows], np.arange(num_participants + 1))
    return offsets, rows


def _files_fingerprint(spec):
    """Size and modification time of the source files, so that editing one rebuilds."""
    if spec["source"] != "files":
        return None
    prints = {}
    for key in ("train", "test"):
        path = spec["files"][key] and Path(spec["files"][key]).expanduser()
        if path and path.exists():
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            stats = [f.stat() for f in files]
            prints[key] = [str(path.resolve()), len(stats), sum(s.st_size for s in stats),
                           max((s.st_mtime_ns for s in stats), default=0)]
    return prints


def _write_split(path: Path, family: str, inputs: np.ndarray, labels: np.ndarray, pad_id: int = 0):
    """Inputs (N, ...) as N fixed-size rows; the row shape (and, for text, the padding id that
    attention masks leave out) go in the schema metadata."""
    rows = pa.FixedSizeListArray.from_arrays(pa.array(inputs.reshape(-1)), int(np.prod(inputs.shape[1:])))
    _write(path, {INPUT_COLUMN[family]: rows, "label": pa.array(labels)},
           {"family": family, "row_shape": json.dumps(inputs.shape[1:]), "pad_id": str(pad_id)})


def _lists(arrays: list[np.ndarray]) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum([len(a) for a in arrays])]).astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(arrays).astype(np.int64)))


def _write(path: Path, columns: dict, metadata: dict | None = None):
    batch = pa.record_batch(columns, metadata=metadata)
    with pa.ipc.new_file(str(path), batch.schema) as writer:
        writer.write_batch(batch)


def _read(path: Path) -> pa.RecordBatch:
    return pa.ipc.open_file(pa.memory_map(str(path))).get_batch(0)


# ---- reading ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Split:
    """One encoded split, memory-mapped: inputs int32 (N, T) token ids or uint8 (N, C, H, W)
    pixels, and int64 labels. Pickles as its path: the receiver maps the file itself."""

    path: Path
    family: str
    inputs: np.ndarray
    labels: np.ndarray
    pad_id: int = 0

    @classmethod
    def open(cls, path) -> "Split":
        batch = _read(path)
        family = batch.schema.metadata[b"family"].decode()
        row_shape = json.loads(batch.schema.metadata[b"row_shape"])
        inputs = batch.column(INPUT_COLUMN[family]).values.to_numpy(zero_copy_only=True)
        return cls(Path(path), family, inputs.reshape(-1, *row_shape),
                   batch.column("label").to_numpy(zero_copy_only=True),
                   int(batch.schema.metadata.get(b"pad_id", b"0")))

    def __reduce__(self):
        return Split.open, (self.path,)


@dataclass(frozen=True)
class Shard:
    """Some rows of a split: a participant's train or test data, the global test set, or all of
    the training data."""

    split: Split
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> np.ndarray:
        return self.split.labels[self.indices]

    def batch(self, positions) -> dict[str, torch.Tensor]:
        """The model inputs and labels of the shard's rows at `positions` (0..len-1)."""
        rows = self.indices[np.asarray(positions, dtype=np.int64)]
        inputs = self.split.inputs[rows]
        labels = torch.from_numpy(self.split.labels[rows])
        if self.split.family == "text":
            input_ids = torch.from_numpy(inputs.astype(np.int64))
            return {"input_ids": input_ids, "attention_mask": (input_ids != self.split.pad_id).long(),
                    "labels": labels}
        return {"pixel_values": normalise_pixels(inputs), "labels": labels}

    def batches(self, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = True):
        """Batches covering the shard once, in an order drawn from `generator` when shuffling;
        the last one may be smaller."""
        order = torch.randperm(len(self), generator=generator).numpy() if shuffle else np.arange(len(self))
        for start in range(0, len(self), batch_size):
            yield self.batch(order[start:start + batch_size])


@dataclass(frozen=True)
class ParticipantData:
    train: Shard
    test: Shard


class PreparedData:
    """A prepared folder, opened cheaply: tables are memory-mapped, nothing is copied until a
    batch is built. `encoding` picks the texts' encoding by one of several checkpoint
    tokenizers (see `encodings`); the partition and test sets are the same in every one."""

    def __init__(self, path: Path, encoding: int = 0):
        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())
        if not 0 <= encoding < len(self.encodings):
            raise IndexError(f"encoding {encoding} does not exist; {self.path.name} holds {len(self.encodings)}")
        self.encoding = encoding
        self.train = Split.open(self.folder / "train.arrow")
        self.test = Split.open(self.folder / "test.arrow")
        self.scheme = self.meta["spec"]["partition"]
        stored = () if self.scheme["scheme"] == "sampled" else \
            ("train",) if self.scheme["scheme"] in LAZY_SCHEMES else ("train", "test")
        if stored:
            parts = _read(self.path / "partition.arrow")
            self._offsets = {k: parts.column(k).offsets.to_numpy() for k in stored}
            self._indices = {k: parts.column(k).values.to_numpy(zero_copy_only=True) for k in stored}
        if self.scheme["scheme"] in LAZY_SCHEMES:  # per class: what a participant's test split draws from
            self._test_by_class = [np.flatnonzero(self.test.labels == k) for k in range(self.num_classes)]
        global_test = _read(self.path / "global_test.arrow").column("index")
        self._global_test = global_test.to_numpy(zero_copy_only=True)

    @classmethod
    def open(cls, path, encoding: int = 0) -> "PreparedData":
        return cls(path, encoding)

    def __reduce__(self):  # pickle as the path, never the mapped tables
        return PreparedData.open, (self.path, self.encoding)

    @property
    def encodings(self) -> list[str]:
        """The fingerprints of the checkpoint tokenizers the texts are encoded with, one per
        encoding (tokenizer_fingerprint); one unnamed encoding otherwise."""
        return [e["fingerprint"] for e in self.meta.get("encodings", [{"fingerprint": None}])]

    @property
    def folder(self) -> Path:
        """Where this encoding's splits and tokenizer lie."""
        return self.path if self.encoding == 0 else self.path / "encodings" / str(self.encoding)

    @property
    def family(self) -> str:
        return self.meta["family"]

    @property
    def num_classes(self) -> int:
        return self.meta["num_classes"]

    @property
    def class_names(self) -> list[str]:
        return self.meta["class_names"]

    @property
    def num_participants(self) -> int:
        return self.meta["num_participants"]

    @property
    def vocab_size(self) -> int | None:
        """The tokenizer's vocabulary size (at most the cap asked for); None for images."""
        if "encodings" in self.meta:
            return self.meta["encodings"][self.encoding]["vocab_size"]
        return self.meta.get("vocab_size")

    @property
    def model_sizes(self) -> dict:
        """The model family's sizes this data fixes (pass to get_family with the rest)."""
        if self.family == "text":
            return {"num_classes": self.num_classes, "vocab_size": self.vocab_size,
                    "max_positions": self.meta["max_positions"]}
        return {"num_classes": self.num_classes, **{k: self.meta[k] for k in ("image_size", "channels")}}

    def participant(self, i: int) -> ParticipantData:
        if not 0 <= i < self.num_participants:
            raise IndexError(f"participant {i} does not exist; there are {self.num_participants}")
        if self.scheme["scheme"] not in LAZY_SCHEMES:
            rows = {k: self._indices[k][self._offsets[k][i]:self._offsets[k][i + 1]] for k in ("train", "test")}
            return ParticipantData(Shard(self.train, rows["train"]), Shard(self.test, rows["test"]))
        # Lazy schemes: a pure function of (seed, participant), computed here on first use
        # (Experiment caches nothing of it per participant: hosts keep only those they hold).
        seed = self.meta["seed"]
        if self.scheme["scheme"] == "sampled":
            count = min(self.scheme["samples"], len(self.train.labels))
            train = np.sort(np.random.default_rng([seed, 505, i]).choice(len(self.train.labels), count,
                                                                         replace=False))
        else:
            train = self._indices["train"][self._offsets["train"][i]:self._offsets["train"][i + 1]]
        test = matched_test(self.train.labels[train], self._test_by_class, self.meta["spec"]["test_per_participant"],
                            np.random.default_rng([seed, 606, i]))
        return ParticipantData(Shard(self.train, train), Shard(self.test, test))

    @property
    def global_test(self) -> Shard:
        return Shard(self.test, self._global_test)

    @property
    def pooled_train(self) -> Shard:
        """All training samples, for a centralised baseline."""
        return Shard(self.train, np.arange(len(self.train.labels)))

    def __repr__(self):
        return (f"PreparedData({self.path.name}: {self.family}, {self.num_classes} classes, "
                f"{self.meta['train_size']} train / {self.meta['test_size']} test, "
                f"{self.num_participants} participants)")
