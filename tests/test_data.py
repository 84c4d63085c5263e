"""The data layer: loaders, offline errors, partitioners, synthetic sets, prepared storage and
the spec checker."""

import json
import multiprocessing
import os
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet
import pytest
import torch
from PIL import Image

from fedgrow_ray.data import (DatasetUnavailable, PreparedData, check_data_spec, partition,
                              prepare_data, sources, store)
from fedgrow_ray.data.synthetic import synthetic_image, synthetic_text

TEXTS = ["the cat sat", "a dog ran far", "cats and dogs", "birds fly high", "the dog barked",
         "a cat slept", "birds sing", "dogs dig holes", "cats purr softly", "a bird nested"]
LABELS = ["cat", "dog", "cat", "bird", "dog", "cat", "bird", "dog", "cat", "bird"]


def files_spec(**files):
    return check_data_spec({"source": "files", "files": files})


def load(spec, seed=0):
    return sources.load_source(spec, seed)


# ---- local files ------------------------------------------------------------------------------

def test_parquet_text_with_string_labels_and_a_test_file(tmp_path):
    pyarrow.parquet.write_table(pa.table({"body": TEXTS, "kind": LABELS}), tmp_path / "train.parquet")
    pyarrow.parquet.write_table(pa.table({"body": TEXTS[:3], "kind": LABELS[:3]}), tmp_path / "test.parquet")
    raw = load(files_spec(train=str(tmp_path / "train.parquet"), test=str(tmp_path / "test.parquet"),
                          text_column="body", label_column="kind"))
    assert raw.family == "text" and raw.class_names == ["bird", "cat", "dog"]
    assert raw.train.column_names == ["text", "label"] and len(raw.train) == 10 and len(raw.test) == 3
    assert raw.train[:]["label"] == [raw.class_names.index(name) for name in LABELS]
    assert raw.train[1]["text"] == "a dog ran far"


def test_csv_with_integer_labels(tmp_path):
    rows = "\n".join(f'"{t}",{i % 3}' for i, t in enumerate(TEXTS))
    (tmp_path / "train.csv").write_text("text,label\n" + rows + "\n")
    (tmp_path / "test.csv").write_text("text,label\n" + rows + "\n")
    raw = load(files_spec(train=str(tmp_path / "train.csv"), test=str(tmp_path / "test.csv"),
                          text_column="text"))
    assert raw.class_names == ["0", "1", "2"] and raw.train[:]["label"] == [i % 3 for i in range(10)]


def test_json_lines_without_a_test_file_holds_out_a_seeded_share(tmp_path):
    path = tmp_path / "all.jsonl"
    path.write_text("".join(json.dumps({"t": t, "y": y}) + "\n" for t, y in zip(TEXTS * 4, LABELS * 4)))
    spec = files_spec(train=str(path), text_column="t", label_column="y", test_fraction=0.25)
    raw = load(spec)
    assert (len(raw.train), len(raw.test)) == (30, 10)
    assert set(raw.train[:]["text"]) | set(raw.test[:]["text"]) == set(TEXTS)
    assert load(spec).test[:]["text"] == raw.test[:]["text"]
    assert load(spec, seed=1).test[:]["text"] != raw.test[:]["text"]


def _write_image_folder(root, classes, per_class, size=6):
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (size, size), (40 * k, 10 * i, 200)).save(root / name / f"{i}.png")


def test_image_folder_and_prepared_images(tmp_path):
    _write_image_folder(tmp_path / "train", ["daisy", "rose", "tulip"], 4)
    _write_image_folder(tmp_path / "test", ["daisy", "rose", "tulip"], 2)
    spec = {"source": "files", "files": {"train": str(tmp_path / "train"), "test": str(tmp_path / "test")},
            "partition": {"scheme": "iid"}, "test_per_participant": 3}
    raw = load(check_data_spec(spec))
    assert raw.family == "image" and raw.class_names == ["daisy", "rose", "tulip"]
    assert raw.train[:]["label"] == [0] * 4 + [1] * 4 + [2] * 4 and len(raw.test) == 6
    data = PreparedData.open(prepare_data(spec, "image", 2, 0, tmp_path / "cache", image_size=8))
    batch = data.pooled_train.batch([0, 4])
    assert batch["pixel_values"].shape == (2, 3, 8, 8) and batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].tolist() == [0, 1]
    # Channel 2 is 200 everywhere: (200 / 255 - 0.5) / 0.5
    assert torch.allclose(batch["pixel_values"][:, 2], torch.tensor(200 / 127.5 - 1))


def test_parquet_with_image_bytes_column(tmp_path):
    def png(value):
        path = tmp_path / "tmp.png"
        Image.new("L", (4, 4), value).save(path)
        return path.read_bytes()

    table = pa.table({"picture": [png(v) for v in (0, 80, 160, 240)], "label": [0, 1, 0, 1]})
    pyarrow.parquet.write_table(table, tmp_path / "images.parquet")
    spec = {"source": "files", "partition": {"scheme": "iid"},
            "files": {"train": str(tmp_path / "images.parquet"), "image_column": "picture",
                      "test_fraction": 0.5}}
    data = PreparedData.open(prepare_data(spec, "image", 1, 0, tmp_path / "cache", image_size=4, channels=1))
    pixels = data.pooled_train.batch(range(2))["pixel_values"]
    assert pixels.shape == (2, 1, 4, 4) and data.class_names == ["0", "1"]


@pytest.mark.parametrize("content, files, message", [
    (None, {"text_column": "text"}, "does not exist"),
    ("", {"text_column": "text"}, "is empty"),
    ("text,label\n", {"text_column": "text"}, "has no rows"),
    ("text,label\na,0\nb,1\n", {"text_column": "body"},
     "column 'body' is not in"),
    ("text,label\na,0\nb,1\n", {"text_column": "text", "label_column": "y"},
     "data.files.label_column: column 'y'"),
    ("text,label\na,0.5\nb,1\n", {"text_column": "text"}, "non-integer labels"),
    ("text,label\na,-1\nb,1\n", {"text_column": "text"}, "out of range"),
])
def test_file_errors_are_clear(tmp_path, content, files, message):
    path = tmp_path / "train.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        load(files_spec(train=str(path), test=str(path), **files))
    if "is not in" in message:
        assert "columns present: ['text', 'label']" in str(err.value)


def test_labels_outside_num_classes_and_unseen_test_labels(tmp_path):
    (tmp_path / "a.csv").write_text("text,label\na,0\nb,3\n")
    spec = check_data_spec({"source": "files", "num_classes": 3,
                            "files": {"train": str(tmp_path / "a.csv"), "test": str(tmp_path / "a.csv"),
                                      "text_column": "text"}})
    with pytest.raises(ValueError, match=r"out of range \[3\]; expected 0..2"):
        load(spec)
    (tmp_path / "b.csv").write_text("text,label\na,x\nb,y\n")
    (tmp_path / "c.csv").write_text("text,label\na,x\nb,z\n")
    with pytest.raises(ValueError, match=r"labels \['z'\] that the training data never uses"):
        load(files_spec(train=str(tmp_path / "b.csv"), test=str(tmp_path / "c.csv"), text_column="text"))


# ---- named public datasets -------------------------------------------------------------------

@pytest.fixture
def offline_empty_cache(tmp_path, monkeypatch):
    import datasets.config
    import huggingface_hub.constants
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf" / "datasets"))
    # datasets reads these once at import: point its resolved settings at the empty cache too.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf" / "datasets")
    monkeypatch.setattr(datasets.config, "HF_CACHE_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))


@pytest.mark.parametrize("name, hub_id", [("ag_news", "fancyzhx/ag_news"), ("cifar10", "uoft-cs/cifar10")])
def test_named_dataset_offline_fails_with_one_clear_error(offline_empty_cache, tmp_path, name, hub_id):
    with pytest.raises(DatasetUnavailable) as err:
        prepare_data({"source": name}, "text" if name == "ag_news" else "image", 2, 0, tmp_path / "cache")
    message = str(err.value)
    assert isinstance(err.value, ValueError) and err.value.__cause__ is None
    assert f"dataset {name!r}" in message and "not available offline" in message and "\n" not in message
    assert f"python -c \"import datasets; datasets.load_dataset('{hub_id}')\"" in message
    assert "~/.cache/huggingface" in message and "source: files" in message
    assert not list((tmp_path / "cache").glob(f"{name}-*"))


def test_named_dataset_columns_are_mapped(monkeypatch):
    import datasets
    features = datasets.Features({"img": datasets.Image(),
                                  "fine_label": datasets.ClassLabel(names=["apple", "bee"]),
                                  "coarse_label": datasets.Value("int64")})
    images = [Image.new("RGB", (2, 2))] * 3
    stored = datasets.Dataset.from_dict({"img": images, "fine_label": [1, 0, 1], "coarse_label": [0, 0, 0]},
                                        features)
    monkeypatch.setattr(datasets, "load_dataset", lambda path, split: {"uoft-cs/cifar100": stored}[path])
    raw = sources.load_hub("cifar100")
    assert raw.class_names == ["apple", "bee"] and raw.train.column_names == ["image", "label"]
    assert raw.train[:]["label"] == [1, 0, 1]


# ---- partitioners ----------------------------------------------------------------------------

SCHEMES = [("iid", {}), ("dirichlet", {"alpha": 0.3, "min_samples": 2}),
           ("quantity_skew", {"sigma": 1.0, "min_samples": 2}), ("shards", {"shards_per_participant": 2})]
LABELS_10 = np.random.default_rng(0).integers(10, size=5000)


@pytest.mark.parametrize("scheme, params", SCHEMES)
def test_every_sample_is_assigned_exactly_once(scheme, params):
    parts = partition(LABELS_10, 20, np.random.default_rng(1), scheme, **params)
    assert len(parts) == 20 and min(len(p) for p in parts) >= 1
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(LABELS_10)))
    again = partition(LABELS_10, 20, np.random.default_rng(1), scheme, **params)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def _max_class_fraction(parts, labels):
    return np.mean([np.bincount(labels[p], minlength=10).max() / len(p) for p in parts])


def test_dirichlet_alpha_controls_label_skew():
    skewed = partition(LABELS_10, 20, np.random.default_rng(0), "dirichlet", alpha=0.1, min_samples=2)
    uniform = partition(LABELS_10, 20, np.random.default_rng(0), "dirichlet", alpha=1000.0, min_samples=2)
    assert _max_class_fraction(skewed, LABELS_10) > 0.5
    assert _max_class_fraction(uniform, LABELS_10) < 0.15
    overall = np.bincount(LABELS_10) / len(LABELS_10)
    for p in uniform:
        assert np.abs(np.bincount(LABELS_10[p], minlength=10) / len(p) - overall).max() < 0.06
    assert min(len(p) for p in skewed) >= 2


def test_dirichlet_that_cannot_meet_min_samples_says_so():
    with pytest.raises(ValueError, match="fewer than min_samples=30"):
        partition(LABELS_10[:600], 20, np.random.default_rng(0), "dirichlet", alpha=0.05, min_samples=30)


def test_shards_give_few_classes_and_quantity_skew_unequal_sizes():
    parts = partition(LABELS_10, 20, np.random.default_rng(0), "shards", shards_per_participant=2)
    assert max(len(np.unique(LABELS_10[p])) for p in parts) <= 4
    assert np.mean([len(np.unique(LABELS_10[p])) for p in parts]) <= 3
    sizes = [len(p) for p in partition(LABELS_10, 20, np.random.default_rng(0), "quantity_skew",
                                       sigma=1.0, min_samples=2)]
    assert max(sizes) > 3 * min(sizes) and min(sizes) >= 2


def test_participant_test_splits_follow_their_train_labels(tmp_path):
    spec = {"source": "synthetic_text", "train_size": 2000, "test_size": 600, "num_classes": 5,
            "partition": {"scheme": "dirichlet", "alpha": 0.3}, "test_per_participant": 50}
    data = PreparedData.open(prepare_data(spec, "text", 8, 0, tmp_path, max_positions=16, vocab_size=200))
    for i in range(8):
        part = data.participant(i)
        train = np.bincount(part.train.labels, minlength=5) / len(part.train)
        test = np.bincount(part.test.labels, minlength=5) / len(part.test)
        assert len(part.test) == 50 and np.abs(train - test).max() <= 0.03
        assert len(np.unique(part.test.indices)) == 50  # no repeats where the classes have enough


# ---- synthetic sets --------------------------------------------------------------------------

@pytest.mark.parametrize("generate", [synthetic_text, synthetic_image])
def test_synthetic_sets_are_seeded_and_balanced(generate):
    train, test, names = generate(num_classes=5, train_size=600, test_size=100, seed=3)
    column = "text" if generate is synthetic_text else "image"
    again, _, _ = generate(num_classes=5, train_size=600, test_size=100, seed=3)
    other, _, _ = generate(num_classes=5, train_size=600, test_size=100, seed=4)
    assert len(names) == 5 and (len(train), len(test)) == (600, 100)
    assert train[:20][column] == again[:20][column] and train[:20][column] != other[:20][column]
    counts = np.bincount(sources.column(train, "label"), minlength=5)
    assert counts.min() > 0.7 * counts.mean()


def test_synthetic_text_is_not_given_away_by_one_word():
    train, _, _ = synthetic_text(train_size=3000, test_size=10, seed=0)
    labels = np.array(train[:]["label"])
    sentences = [set(t[:-1].split()) for t in train[:]["text"]]
    best = 0.0
    for word in set().union(*sentences):
        present = np.array([word in s for s in sentences])
        if present.mean() >= 0.05:  # a word that could carry a class by itself
            best = max(best, np.bincount(labels[present]).max() / present.sum())
    assert best < 0.8


def test_synthetic_image_is_not_given_away_by_its_colour():
    train, test, _ = synthetic_image(train_size=2000, test_size=500, seed=0)

    def colours(split):
        pixels = np.asarray(sources.column(split.with_format("numpy"), "image"), dtype=np.float32)
        return pixels.mean(axis=(1, 2)), np.array(sources.column(split, "label"))

    x, y = colours(train)
    centroids = np.stack([x[y == k].mean(axis=0) for k in range(4)])
    tx, ty = colours(test)
    nearest = np.argmin(((tx[:, None] - centroids) ** 2).sum(-1), axis=1)
    assert (nearest == ty).mean() < 0.4


@pytest.mark.slow
@pytest.mark.parametrize("source, lr, steps, floor", [("synthetic_text", 1e-3, 300, 0.7),
                                                      ("synthetic_image", 5e-4, 500, 0.55)])
def test_synthetic_sets_are_learnable_but_not_trivial(tmp_path, source, lr, steps, floor):
    """A tiny transformer (width 64, 2 layers) climbs well above chance within a few hundred
    AdamW steps, yet is far from perfect after one pass over the 4000 training samples."""
    from fedgrow_ray.models import Shape, get_family
    name = source.removeprefix("synthetic_")
    data = PreparedData.open(prepare_data({"source": source, "partition": {"scheme": "iid"}}, name, 1, 0,
                                          tmp_path, max_positions=48, vocab_size=4000))
    family = get_family(name, **data.model_sizes, **({"patch_size": 4} if name == "image" else {}))
    torch.manual_seed(0)  # dropout
    model = family.build(Shape(width=64, layers=2, heads=4), seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)

    def accuracy():
        model.eval()
        with torch.no_grad():
            correct = sum((model(**b).logits.argmax(-1) == b["labels"]).sum().item()
                          for b in data.global_test.batches(250, shuffle=False))
        model.train()
        return correct / len(data.global_test)

    step, one_pass, accuracies = 0, len(data.pooled_train) // 32, {}
    while step < steps:
        for batch in data.pooled_train.batches(32, generator):
            optimizer.zero_grad()
            model(**batch).loss.backward()
            optimizer.step()
            step += 1
            if step in (one_pass, steps):
                accuracies[step] = accuracy()
            if step == steps:
                break
    assert accuracies[one_pass] < 0.9 and accuracies[steps] > floor, accuracies


# ---- prepared data ---------------------------------------------------------------------------

SMALL_TEXT = {"source": "synthetic_text", "train_size": 400, "test_size": 100,
              "partition": {"scheme": "iid"}, "test_per_participant": 20, "global_test_size": 50}


def test_prepare_builds_once_then_reuses(tmp_path, monkeypatch):
    path = prepare_data(SMALL_TEXT, "text", 4, 0, tmp_path, max_positions=24, vocab_size=300)
    stamp = (path / "meta.json").stat().st_mtime_ns
    monkeypatch.setattr(store, "_build", lambda *a: pytest.fail("rebuilt"))
    assert prepare_data(SMALL_TEXT, "text", 4, 0, tmp_path, max_positions=24, vocab_size=300) == path
    assert (path / "meta.json").stat().st_mtime_ns == stamp
    monkeypatch.undo()
    assert prepare_data(SMALL_TEXT, "text", 4, 1, tmp_path, max_positions=24, vocab_size=300) != path
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2


def test_prepared_text_reads_memory_mapped_with_the_right_types(tmp_path):
    path = prepare_data(SMALL_TEXT, "text", 4, 0, tmp_path, max_positions=24, vocab_size=300)
    allocated = pa.total_allocated_bytes()
    data = PreparedData.open(path)
    assert pa.total_allocated_bytes() == allocated  # the tables stay in the mapped file
    assert not data.train.inputs.flags.owndata and data.train.inputs.dtype == np.int32
    assert data.family == "text" and data.num_classes == 4 and data.num_participants == 4
    assert data.vocab_size <= 300 and data.model_sizes == {"num_classes": 4, "vocab_size": data.vocab_size,
                                                           "max_positions": 24}
    assert len(data.pooled_train) == 400 and len(data.global_test) == 50
    assert sum(len(data.participant(i).train) for i in range(4)) == 400
    shard = data.participant(2).train
    batch = shard.batch([0, 1, 2])
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape == (3, 24)
    assert (batch["input_ids"][:, 0] == 2).all()  # [CLS]
    assert torch.equal(batch["attention_mask"], (batch["input_ids"] != 0).long())
    assert batch["labels"].tolist() == shard.labels[:3].tolist()
    with pytest.raises(IndexError):
        data.participant(4)
    assert len(pickle.dumps(data)) < 1000 and len(pickle.dumps(shard)) < 8 * len(shard) + 1000
    assert torch.equal(pickle.loads(pickle.dumps(shard)).batch([0, 1, 2])["input_ids"], batch["input_ids"])


def test_batches_cover_a_shard_once(tmp_path):
    path = prepare_data(SMALL_TEXT, "text", 3, 0, tmp_path, max_positions=16, vocab_size=100)
    data = PreparedData.open(path)
    shard = data.participant(0).train
    rows = {tuple(r) for r in shard.split.inputs[shard.indices]}
    seen, sizes = [], []
    for batch in shard.batches(16, torch.Generator().manual_seed(0)):
        seen += [tuple(r) for r in batch["input_ids"].int().tolist()]
        sizes.append(len(batch["labels"]))
    assert len(seen) == len(shard) and set(seen) <= rows
    assert sizes[:-1] == [16] * (len(sizes) - 1) and 0 < sizes[-1] <= 16
    first = next(shard.batches(8, torch.Generator().manual_seed(5)))["input_ids"]
    assert torch.equal(first, next(shard.batches(8, torch.Generator().manual_seed(5)))["input_ids"])
    unshuffled = next(shard.batches(4, shuffle=False))["labels"]
    assert unshuffled.tolist() == shard.labels[:4].tolist()


def test_prepared_synthetic_images(tmp_path):
    spec = {"source": "synthetic_image", "train_size": 200, "test_size": 50, "test_per_participant": 10}
    data = PreparedData.open(prepare_data(spec, "image", 2, 0, tmp_path, image_size=16))
    assert data.train.inputs.shape == (200, 3, 16, 16) and data.train.inputs.dtype == np.uint8
    batch = data.participant(1).test.batch([0, 1])
    assert batch["pixel_values"].shape == (2, 3, 16, 16) and batch["pixel_values"].abs().max() <= 1
    assert json.loads((Path(data.path) / "meta.json").read_text())["spec"]["partition"]["alpha"] == 0.5


def _prepare_in_child(cache_dir, queue):
    queue.put(str(prepare_data(SMALL_TEXT, "text", 4, 0, cache_dir, max_positions=24, vocab_size=300)))


def test_concurrent_prepares_end_with_one_valid_folder(tmp_path):
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [context.Process(target=_prepare_in_child, args=(tmp_path, queue)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    paths = {queue.get(timeout=5) for _ in children}
    assert len(paths) == 1
    folders = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert [str(p) for p in folders] == list(paths)  # no scratch folders left
    assert len(PreparedData.open(folders[0]).pooled_train) == 400


def test_losing_a_rename_race_keeps_the_winner(tmp_path):
    spec = check_data_spec(SMALL_TEXT)
    sizes = {"max_positions": 24, "vocab_size": 300}
    winner = tmp_path / "synthetic_text-x"
    winner.mkdir()
    (winner / "meta.json").write_text("{}")
    store._build_atomically(winner, spec, "text", sizes, 2, 0)
    assert os.listdir(tmp_path) == ["synthetic_text-x"] and os.listdir(winner) == ["meta.json"]


# ---- the spec --------------------------------------------------------------------------------

def test_spec_defaults_are_filled_and_checking_is_idempotent():
    spec = check_data_spec({"source": "synthetic_image"})
    assert spec == {"source": "synthetic_image", "num_classes": 4, "train_size": 4000, "test_size": 1000,
                    "label_noise": 0.05, "max_train_samples": None,
                    "partition": {"scheme": "dirichlet", "alpha": 0.5, "min_samples": 2},
                    "test_per_participant": 100, "global_test_size": None}
    assert check_data_spec(spec) == spec
    files = check_data_spec({"source": "files", "files": {"train": "x.csv", "text_column": "t"}})
    assert files["files"] == {"train": "x.csv", "test": None, "format": "csv", "test_fraction": 0.2,
                              "text_column": "t", "image_column": None, "label_column": "label"}
    assert check_data_spec(files) == files
    folder = check_data_spec({"source": "files", "files": {"train": "flowers/train"}})
    assert folder["files"]["format"] == "imagefolder" and check_data_spec(folder) == folder


@pytest.mark.parametrize("raw, message", [
    ("cifar10", "data: expected a mapping"),
    ({}, "data.source: None is unknown; allowed: ["),
    ({"source": "mnistt"}, "data.source: 'mnistt' is unknown; allowed: ['20newsgroups', 'ag_news', "),
    ({"source": "ag_news", "num_classes": 4}, "data: unknown key(s) ['num_classes'] for source 'ag_news'"),
    ({"source": "synthetic_text", "num_classes": 1}, "data.num_classes: 1 must be an integer >= 2"),
    ({"source": "synthetic_image", "num_classes": 11},
     "data.num_classes: 11 must be an integer >= 2 and <= 10"),
    ({"source": "synthetic_text", "train_size": 10.5}, "data.train_size: 10.5 must be an integer >= 1"),
    ({"source": "synthetic_text", "label_noise": 1}, "data.label_noise: 1 must be a number in [0, 1)"),
    ({"source": "synthetic_text", "partition": {"scheme": "dirichlet", "alpha": -1}},
     "data.partition.alpha: -1 must be a number > 0"),
    ({"source": "synthetic_text", "partition": {"scheme": "pathological"}},
     "data.partition.scheme: 'pathological' is unknown; allowed: ['iid', 'dirichlet', 'quantity_skew', "
     "'shards', 'sampled', 'natural']"),
    ({"source": "synthetic_text", "partition": {"scheme": "iid", "alpha": 0.5}},
     "data.partition: unknown key(s) ['alpha'] for scheme 'iid'"),
    ({"source": "synthetic_text", "partition": {"scheme": "shards", "shards_per_participant": 0}},
     "data.partition.shards_per_participant: 0 must be an integer >= 1"),
    ({"source": "synthetic_text", "partition": {"scheme": "quantity_skew", "sigma": "wide"}},
     "data.partition.sigma: 'wide' must be a number >= 0"),
    ({"source": "synthetic_text", "test_per_participant": 0}, "data.test_per_participant: 0 must be"),
    ({"source": "synthetic_text", "global_test_size": -5}, "data.global_test_size: -5 must be"),
    ({"source": "synthetic_text", "max_train_samples": True}, "data.max_train_samples: True must be"),
    ({"source": "synthetic_text", "files": {"train": "a.csv"}}, "data: unknown key(s) ['files']"),
    ({"source": "files"}, "data.files.train: None must be the path"),
    ({"source": "files", "files": {"train": "a.xlsx"}},
     "data.files.format: cannot tell the format of 'a.xlsx'"),
    ({"source": "files", "files": {"train": "a.csv", "format": "excel"}},
     "data.files.format: 'excel' is unknown"),
    ({"source": "files", "files": {"train": "a.csv"}},
     "data.files: name exactly one of text_column or image_column"),
    ({"source": "files", "files": {"train": "a.csv", "text_column": "t", "image_column": "i"}},
     "name exactly one of text_column or image_column"),
    ({"source": "files", "files": {"train": "a.csv", "text_column": "t", "test_fraction": 1.5}},
     "data.files.test_fraction: 1.5 must be a number in (0, 1)"),
    ({"source": "files", "files": {"train": "pics", "label_column": "y"}},
     "data.files: unknown key(s) ['label_column'] for format 'imagefolder'"),
    ({"source": "files", "files": {"train": "a.csv", "text_column": "t", "tset": "b.csv"}},
     "data.files: unknown key(s) ['tset']"),
])
def test_bad_specs_name_the_key(raw, message):
    with pytest.raises(ValueError) as err:
        check_data_spec(raw)
    assert message in str(err.value)


def test_prepare_checks_its_arguments_before_any_work(tmp_path):
    cases = [
        (({"source": "synthetic_image"}, "text", 2, 0), "holds image data but the model family is 'text'"),
        (({"source": "synthetic_text"}, "text", 0, 0), "num_participants: 0 must be an integer >= 1"),
        (({"source": "synthetic_text"}, "text", 2, -1), "seed: -1 must be"),
        (({"source": "synthetic_text", "train_size": 10}, "text", 20, 0),
         r"dirichlet: 20 participants x min_samples 2 need at least 40 training samples; the "
         r"training set has 10"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            prepare_data(*args, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="channels=2 is not supported"):
        prepare_data({"source": "synthetic_image"}, "image", 2, 0, tmp_path, channels=2)
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]
