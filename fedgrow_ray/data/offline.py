"""Real datasets that are on this machine without a network, exported as the Parquet files the
`files` source reads (a train and a test file in one folder).

    python -m fedgrow_ray.data.offline digits data/real/digits
    python -m fedgrow_ray.data.offline wordnet data/real/wordnet [--wordnet-dir /usr/share/wordnet]

digits   scikit-learn's copy of the UCI optical handwritten digits (load_digits): 1,797 real 8 x 8
         grayscale scans, 10 classes. Columns `image` (PNG bytes, the 0..16 intensities scaled to
         0..255) and `label` (int 0..9). Needs scikit-learn (`pip install -e ".[offline-data]"`).
wordnet  WordNet 3.0's noun and verb synsets (the Debian package wordnet-base:
         `apt-get install wordnet-base`), each synset's gloss (definition and examples) as `text`,
         labelled (`label`) by its lexicographer file, e.g. noun.animal. Only the `--classes` most
         frequent lexicographer files of data.noun and data.verb are kept (default 8: all of them
         nouns, from noun.artifact with 11,587 synsets down to noun.location with 3,209), each
         subsampled to at most `--per-class` synsets (default 1,000) so the classes are balanced.

Both are split into train.parquet and test.parquet by a seeded stratified split (`--seed`,
`--test-fraction`); info.json records what was written. The export is deterministic, and each
file is written to a temporary name and renamed, so a folder never holds a half-written file.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet
from PIL import Image

# lexnames(5WN): the lexicographer file of number i. WordNet's database files carry only the
# number and the Debian package ships no `lexnames` file, so the list is copied here.
LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)
WORDNET_DIR = "/usr/share/wordnet"
WORDNET_FILES = ("data.noun", "data.verb")  # adjective/adverb files are syntactic, not topical
SPLITS = ("train.parquet", "test.parquet")
EXPORTS = ("digits", "wordnet")


class ExportError(ValueError):
    """Bad arguments or missing inputs: one line for the user, nothing written."""


# ---- digits ------------------------------------------------------------------------------------

def digits_tables(test_fraction: float = 0.2, seed: int = 0) -> tuple[pa.Table, pa.Table, dict]:
    """scikit-learn's 8 x 8 digits as (train, test, info): PNG bytes and integer labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ExportError("digits: scikit-learn is not installed; install it with "
                          "pip install -e \".[offline-data]\" (or pip install scikit-learn)") from None
    digits = load_digits()  # read from the files inside the scikit-learn package
    # Intensities are counts of set pixels in 4 x 4 blocks, 0..16.
    pixels = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    rows = {"image": [_png(p) for p in pixels], "label": labels}
    train, test = _stratified(rows, labels, test_fraction, seed)
    info = {"dataset": "digits", "source": "sklearn.datasets.load_digits (UCI optical recognition "
            "of handwritten digits, test part)", "image_size": 8, "channels": 1,
            "classes": [str(k) for k in range(10)]}
    return train, test, info


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")  # uint8, 2-D: grayscale (mode L)
    return out.getvalue()


# ---- WordNet -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Synset:
    offset: int
    lexname: str
    pos: str
    words: tuple[str, ...]
    gloss: str


def parse_data_line(line: str) -> Synset | None:
    """One line of a WordNet data.* file (wndb(5WN)), or None for the license header lines,
    which start with spaces:
        offset lex_filenum ss_type w_cnt word lex_id [word lex_id...] p_cnt [ptr...] [frames] | gloss
    lex_filenum is two decimal digits, w_cnt two hexadecimal digits."""
    if not line.strip() or line.startswith(" "):
        return None
    head, bar, gloss = line.partition(" | ")
    fields = head.split()
    if not bar or len(fields) < 6:
        raise ValueError(f"not a WordNet data line: {line[:80]!r}")
    count = int(fields[3], 16)
    words = tuple(fields[4 + 2 * i].replace("_", " ") for i in range(count))
    return Synset(int(fields[0]), LEXNAMES[int(fields[1])], fields[2], words, gloss.strip())


def read_synsets(wordnet_dir: str | Path) -> list[Synset]:
    """Every noun and verb synset of a WordNet 3.0 database folder."""
    folder = Path(wordnet_dir).expanduser()
    missing = [name for name in WORDNET_FILES if not (folder / name).is_file()]
    if missing:
        raise ExportError(f"--wordnet-dir: {folder} has no {', '.join(missing)}; install WordNet 3.0 "
                          f"with apt-get install wordnet-base (it puts them in {WORDNET_DIR})")
    synsets = []
    for name in WORDNET_FILES:
        with open(folder / name, encoding="utf-8") as lines:
            synsets.extend(s for s in map(parse_data_line, lines) if s is not None)
    return synsets


def wordnet_tables(wordnet_dir: str | Path = WORDNET_DIR, classes: int = 8, per_class: int | None = 1000,
                   test_fraction: float = 0.2, seed: int = 0) -> tuple[pa.Table, pa.Table, dict]:
    """Glosses of the `classes` most frequent lexicographer files, at most `per_class` each."""
    synsets = read_synsets(wordnet_dir)
    counts = Counter(s.lexname for s in synsets)
    if not 2 <= classes <= len(counts):
        raise ExportError(f"--classes: {classes} must be between 2 and {len(counts)} (the "
                          f"lexicographer files with noun or verb synsets)")
    kept = sorted(counts, key=lambda name: (-counts[name], name))[:classes]
    rng = np.random.default_rng(seed)
    chosen = []
    for name in kept:
        members = [s for s in synsets if s.lexname == name]
        if per_class is not None and len(members) > per_class:
            members = [members[i] for i in np.sort(rng.choice(len(members), per_class, replace=False))]
        chosen.extend(members)
    labels = np.array([kept.index(s.lexname) for s in chosen])
    rows = {"text": [s.gloss for s in chosen], "label": [s.lexname for s in chosen],
            "words": [", ".join(s.words) for s in chosen], "offset": [s.offset for s in chosen],
            "pos": [s.pos for s in chosen]}
    train, test = _stratified(rows, labels, test_fraction, seed)
    info = {"dataset": "wordnet", "source": f"WordNet 3.0 {' and '.join(WORDNET_FILES)} in "
            f"{Path(wordnet_dir).expanduser()}", "classes": sorted(kept),
            "synsets_per_class_available": {name: counts[name] for name in kept},
            "per_class": per_class}
    return train, test, info


# ---- shared ------------------------------------------------------------------------------------

def _stratified(rows: dict, labels: np.ndarray, test_fraction: float, seed: int):
    """Train and test tables, every class split in the same proportion (scikit-learn's
    stratified split, seeded); rows keep their original order within each table."""
    from sklearn.model_selection import train_test_split
    try:
        train, test = train_test_split(np.arange(len(labels)), test_size=test_fraction,
                                       stratify=labels, random_state=seed)
    except ValueError as err:  # too few rows of a class for both files
        raise ExportError(f"--test-fraction {test_fraction}: cannot split {len(labels)} rows so "
                          f"that every class is in both files: {err}") from None
    table = pa.table(rows)
    return table.take(np.sort(train)), table.take(np.sort(test))


def write_export(out_dir: str | Path, train: pa.Table, test: pa.Table, info: dict) -> Path:
    """train.parquet, test.parquet and info.json in out_dir: each written in full to a temporary
    name first, then all renamed, so a failure leaves the folder as it was."""
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise ExportError(f"OUT_DIR: {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    info = {**info, "train_rows": train.num_rows, "test_rows": test.num_rows,
            "train_label_counts": _label_counts(train), "test_label_counts": _label_counts(test)}
    staged = []
    try:
        for name, write in (("train.parquet", lambda f: pyarrow.parquet.write_table(train, f)),
                            ("test.parquet", lambda f: pyarrow.parquet.write_table(test, f)),
                            ("info.json", lambda f: Path(f).write_text(json.dumps(info, indent=1)))):
            handle, temp = tempfile.mkstemp(prefix=f".{name}.", dir=out)
            os.close(handle)
            os.chmod(temp, 0o666 & ~_umask())  # mkstemp's 0600 would stay after the rename
            staged.append((temp, out / name))
            write(temp)
        for temp, final in staged:
            os.replace(temp, final)
    finally:
        for temp, _ in staged:
            if os.path.exists(temp):
                os.unlink(temp)
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _label_counts(table: pa.Table) -> dict:
    counts = Counter(table.column("label").to_pylist())
    return {str(k): counts[k] for k in sorted(counts)}


def missing_file_hint(path: str | Path) -> str:
    """How to make a missing file that one of these exports writes (`<folder named after the
    dataset>/train.parquet|test.parquet`), or ""."""
    path = Path(path)
    if path.name in SPLITS and path.parent.name in EXPORTS:
        return (f"; it is made by exporting offline data: python -m fedgrow_ray.data.offline "
                f"{path.parent.name} {path.parent}")
    return ""


# ---- command line ------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit status 2, not argparse's usage block
        print(f"error: {message} (see python -m fedgrow_ray.data.offline --help)", file=sys.stderr)
        sys.exit(2)


def _fraction(text):
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be a number in (0, 1)")
    return value


_fraction.__name__ = "number"  # argparse names it in "invalid number value: 'x'"


def _at_least(minimum):
    def parse(text):
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text} must be an integer >= {minimum}")
        return value
    parse.__name__ = "integer"
    return parse


def main(argv=None) -> int:
    parser = _Parser(prog="python -m fedgrow_ray.data.offline",
                     description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", choices=sorted(EXPORTS))
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder for train.parquet, test.parquet, info.json")
    parser.add_argument("--seed", type=_at_least(0), default=0, help="of the split and subsampling (default 0)")
    parser.add_argument("--test-fraction", type=_fraction, default=0.2, help="share of each class held out (0.2)")
    wordnet = {"wordnet_dir": WORDNET_DIR, "classes": 8, "per_class": 1000}
    parser.add_argument("--wordnet-dir", help=f"wordnet: WordNet 3.0 database ({WORDNET_DIR})")
    parser.add_argument("--classes", type=_at_least(2),
                        help="wordnet: keep the N most frequent lexicographer files (default 8)")
    parser.add_argument("--per-class", type=_at_least(1),
                        help="wordnet: at most this many synsets per class (default 1000)")
    args = parser.parse_args(argv)
    given = [f"--{key.replace('_', '-')}" for key in wordnet if getattr(args, key) is not None]
    if args.dataset != "wordnet" and given:
        parser.error(f"{', '.join(given)}: only for wordnet, not {args.dataset}")
    wordnet = {key: default if getattr(args, key) is None else getattr(args, key)
               for key, default in wordnet.items()}
    try:
        if args.dataset == "digits":
            train, test, info = digits_tables(args.test_fraction, args.seed)
        else:
            train, test, info = wordnet_tables(**wordnet, test_fraction=args.test_fraction,
                                               seed=args.seed)
        info = {**info, "seed": args.seed, "test_fraction": args.test_fraction}
        out = write_export(args.out_dir, train, test, info)
    except (ExportError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out / 'train.parquet'} ({train.num_rows} rows) and {out / 'test.parquet'} "
          f"({test.num_rows} rows), {len(info['classes'])} classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
