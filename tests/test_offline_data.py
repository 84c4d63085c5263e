"""Real offline data: the digits and WordNet exporters, the files they write as the `files`
source reads them, and the shipped real-data scenarios' paths."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet
import pytest
import torch

import launch
from fedgrow_ray.config import load_scenario
from fedgrow_ray.data import PreparedData, check_data_spec, prepare_data, sources
from fedgrow_ray.data.offline import LEXNAMES, main, parse_data_line

ROOT = Path(__file__).resolve().parent.parent
WORDNET = Path("/usr/share/wordnet")
needs_wordnet = pytest.mark.skipif(not (WORDNET / "data.noun").is_file(),
                                   reason="WordNet 3.0 is not installed (apt-get install wordnet-base)")


def export(*args) -> int:
    return main([str(a) for a in args])


def digits_spec(folder, **extra):
    return check_data_spec({"source": "files", "files": {
        "train": str(folder / "train.parquet"), "test": str(folder / "test.parquet"),
        "image_column": "image"}, **extra})


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    pytest.importorskip("sklearn")
    folder = tmp_path_factory.mktemp("digits")
    assert export("digits", folder) == 0
    return folder


# ---- digits ----------------------------------------------------------------------------------

def test_digits_export_is_every_real_digit_read_by_the_files_source(digits):
    """Guards against an export that loses, duplicates, rescales wrongly or mislabels images, or
    that the files source cannot read back (PNG bytes in a Parquet column)."""
    from sklearn.datasets import load_digits
    raw = sources.load_source(digits_spec(digits), seed=0)
    assert (len(raw.train), len(raw.test)) == (1437, 360) and raw.family == "image"
    assert raw.class_names == [str(k) for k in range(10)]
    train_counts = np.bincount(sources.column(raw.train, "label"), minlength=10)
    test_counts = np.bincount(sources.column(raw.test, "label"), minlength=10)
    # Stratified: every class split 80/20 (to the sample), none left out of either file.
    assert np.abs(test_counts - 0.2 * (train_counts + test_counts)).max() <= 1 and test_counts.min() >= 34
    decoded = Counter()
    for split in (raw.train, raw.test):
        for row in split:
            image = row["image"]
            assert image.mode == "L" and image.size == (8, 8)
            decoded[(np.asarray(image).tobytes(), row["label"])] += 1
    original = load_digits()
    expected = Counter((np.rint(x * 255 / 16).astype(np.uint8).tobytes(), int(y))
                       for x, y in zip(original.images, original.target))
    assert decoded == expected  # every digit once, with its label, 0..16 scaled to 0..255
    pixels = np.frombuffer(b"".join(k for k, _ in decoded), dtype=np.uint8)
    assert pixels.min() == 0 and pixels.max() == 255
    info = json.loads((digits / "info.json").read_text())
    assert info["train_rows"] == 1437 and sum(info["test_label_counts"].values()) == 360


def test_digits_export_is_deterministic_and_seeded(digits, tmp_path):
    """Guards against an unseeded split (runs of a sweep would see different test sets)."""
    assert export("digits", tmp_path / "again") == 0 and export("digits", tmp_path / "other", "--seed", 1) == 0
    labels = {name: pyarrow.parquet.read_table(folder / "test.parquet").to_pydict()
              for name, folder in (("first", digits), ("again", tmp_path / "again"),
                                   ("other", tmp_path / "other"))}
    assert labels["first"] == labels["again"] and labels["first"] != labels["other"]
    assert not [p for p in (tmp_path / "again").iterdir() if p.name.startswith(".")]  # no temp left


def test_prepared_digits_are_partitioned_among_participants(digits, tmp_path):
    """Guards against the prepared real images not reaching participants as 1 x 8 x 8 pixels, or a
    partition that drops, repeats or does not skew the training rows."""
    data = PreparedData.open(prepare_data(digits_spec(digits, test_per_participant=60), "image", 10, 0,
                                          tmp_path, image_size=8, channels=1))
    assert data.train.inputs.shape == (1437, 1, 8, 8) and data.train.inputs.dtype == np.uint8
    assert data.num_classes == 10 and len(data.global_test) == 360
    rows = np.concatenate([data.participant(i).train.indices for i in range(10)])
    assert np.array_equal(np.sort(rows), np.arange(1437))
    shares = [np.bincount(data.participant(i).train.labels, minlength=10).max() / len(data.participant(i).train)
              for i in range(10)]
    assert max(shares) > 0.3  # Dirichlet(0.5): someone's largest class is well above 1/10
    batch = data.participant(0).test.batch(np.arange(4))
    assert batch["pixel_values"].shape == (4, 1, 8, 8) and batch["pixel_values"].abs().max() <= 1


def test_a_small_vit_learns_the_real_digits_through_the_data_path(digits, tmp_path):
    """Guards against real images that reach the model scrambled (wrong channel, size or label
    order): a 1-layer ViT of width 64 on 2 x 2 patches, 150 AdamW steps, is well above chance
    (0.1; it reaches about 0.8)."""
    from fedgrow_ray.models import Shape, get_family
    data = PreparedData.open(prepare_data(digits_spec(digits), "image", 1, 0, tmp_path,
                                          image_size=8, channels=1))
    family = get_family("image", **data.model_sizes, patch_size=2, dropout=0.0)
    model = family.build(Shape(width=64, layers=1, heads=4), seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    generator, step, threads = torch.Generator().manual_seed(0), 0, torch.get_num_threads()
    torch.set_num_threads(1)  # 2 s of CPU; more threads on a busy machine only wait for each other
    try:
        while step < 150:
            for batch in data.pooled_train.batches(32, generator):
                optimizer.zero_grad()
                model(**batch).loss.backward()
                optimizer.step()
                step += 1
                if step == 150:
                    break
        model.eval()
        with torch.no_grad():
            correct = sum((model(**b).logits.argmax(-1) == b["labels"]).sum().item()
                          for b in data.global_test.batches(120, shuffle=False))
    finally:
        torch.set_num_threads(threads)
    assert correct / len(data.global_test) > 0.5


# ---- WordNet ---------------------------------------------------------------------------------

# Lines copied from WordNet 3.0's data.noun and data.verb (wndb(5WN)); the second has ten words
# (w_cnt is hexadecimal: 0a), the third verb frames after its pointers.
NOUN = ("01313888 05 n 01 recombinant 0 002 @ 00006484 n 0000 @ 00004475 n 0000 | a cell or "
        "organism in which genetic recombination has occurred  \n")
TEN_WORDS = ("00736375 04 n 0a mischief 0 mischief-making 0 mischievousness 0 deviltry 1 devilry 1 "
             "devilment 0 rascality 0 roguery 0 roguishness 0 shenanigan 0 010 @ 00735936 n 0000 + "
             "01224964 a 0902 + 01787973 v 060d + 01787973 v 050d + 01787973 v 040d + 01162633 a "
             "0301 + 01162633 a 0101 ~ 00736786 n 0000 ~ 00736894 n 0000 ~ 01249816 n 0000 | "
             "reckless or malicious behavior that causes discomfort or annoyance in others  \n")
VERB = ("00121214 30 v 02 alternate 0 take_turns 0 003 @ 02367381 v 0000 + 01010684 n 0101 ~ "
        "00121387 v 0000 01 + 02 00 | do something in turns; \"We take turns on the night shift\"  \n")
HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  \n"


def test_wordnet_data_lines_parse_to_gloss_and_lexicographer_file():
    """Guards against misreading the data.* format: the lexicographer file number is decimal,
    the word count hexadecimal, the gloss everything after ' | ', and license lines are skipped."""
    noun = parse_data_line(NOUN)
    assert (noun.offset, noun.lexname, noun.pos, noun.words) == (1313888, "noun.animal", "n", ("recombinant",))
    assert noun.gloss == "a cell or organism in which genetic recombination has occurred"
    ten = parse_data_line(TEN_WORDS)
    assert ten.lexname == "noun.act" and len(ten.words) == 10 and ten.words[-1] == "shenanigan"
    verb = parse_data_line(VERB)
    assert verb.lexname == "verb.change" and verb.words == ("alternate", "take turns")
    assert verb.gloss == 'do something in turns; "We take turns on the night shift"'
    assert parse_data_line(HEADER) is None and parse_data_line("\n") is None
    assert len(LEXNAMES) == 45 and LEXNAMES[44] == "adj.ppl"
    with pytest.raises(ValueError, match="not a WordNet data line"):
        parse_data_line("00001740 03 n 01 entity 0 000 without a gloss\n")


@needs_wordnet
def test_wordnet_export_on_the_real_files_is_read_by_the_files_source(tmp_path):
    """Guards against an export of the real WordNet that is unbalanced, keeps the wrong classes,
    or that the files source cannot read as text with string labels."""
    pytest.importorskip("sklearn")
    assert export("wordnet", tmp_path, "--per-class", 50, "--classes", 8) == 0
    spec = check_data_spec({"source": "files", "files": {
        "train": str(tmp_path / "train.parquet"), "test": str(tmp_path / "test.parquet"),
        "text_column": "text"}})
    raw = sources.load_source(spec, seed=0)
    # The eight largest noun/verb lexicographer files of WordNet 3.0, sorted (class names).
    assert raw.class_names == ["noun.act", "noun.animal", "noun.artifact", "noun.communication",
                               "noun.location", "noun.person", "noun.plant", "noun.state"]
    assert (len(raw.train), len(raw.test)) == (320, 80)
    assert np.bincount(sources.column(raw.train, "label")).tolist() == [40] * 8
    texts = sources.column(raw.train, "text")
    assert all(isinstance(t, str) and t for t in texts) and len(set(texts)) > 300
    assert np.mean([len(t.split()) for t in texts]) > 6  # glosses, not single words
    table = pyarrow.parquet.read_table(tmp_path / "train.parquet")
    assert {"text", "label", "words", "offset", "pos"} <= set(table.column_names)


# ---- bad input and missing files -------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["digits", "{out}", "--classes", "3"], "--classes: only for wordnet"),
    (["digits", "{out}", "--test-fraction", "1.5"], "1.5 must be a number in (0, 1)"),
    (["digits", "{out}", "--test-fraction", "half"], "invalid number value: 'half'"),
    (["mnist", "{out}"], "invalid choice: 'mnist'"),
    (["wordnet", "{out}", "--per-class", "1"], "cannot split 8 rows so that every class is in both"),
    (["wordnet", "{out}", "--wordnet-dir", "{tmp}"], "apt-get install wordnet-base"),
    (["wordnet", "{out}", "--classes", "99"], "--classes: 99 must be between 2 and"),
])
def test_bad_export_arguments_give_one_line_and_write_nothing(tmp_path, capsys, args, message):
    """Guards against a traceback, a usage block or a half-made folder on bad arguments."""
    if args[0] == "wordnet" and "--wordnet-dir" not in args and not (WORDNET / "data.noun").is_file():
        pytest.skip("WordNet 3.0 is not installed (apt-get install wordnet-base)")
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        raise SystemExit(main([a.format(out=out, tmp=tmp_path) for a in args]))
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("error: ")
    assert not out.exists()


@pytest.mark.parametrize("scenario", sorted(p.name for p in (ROOT / "scenarios").glob("real_*.yaml")))
def test_real_scenarios_name_exported_files_from_the_current_folder(scenario, tmp_path, monkeypatch,
                                                                    capsys):
    """Guards against a real-data scenario whose relative path is not read from the folder
    launch.py runs in, or whose missing file is not explained by the command that makes it."""
    monkeypatch.chdir(tmp_path)
    loaded = load_scenario(ROOT / "scenarios" / scenario)
    files = loaded["data"]["files"]
    dataset = Path(files["train"]).parent.name
    assert files["train"] == str(tmp_path / "data" / "real" / dataset / "train.parquet")
    assert files["test"] == str(tmp_path / "data" / "real" / dataset / "test.parquet")
    code = launch.main([str(ROOT / "scenarios" / scenario), "--out", str(tmp_path / "run"),
                        "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "does not exist" in err
    assert f"python -m fedgrow_ray.data.offline {dataset} {tmp_path / 'data' / 'real' / dataset}" in err
    assert not (tmp_path / "run").exists()
