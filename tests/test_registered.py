"""Many registered participants, few sampled: sampling from a range, the lazy `sampled`
partition (rows a pure function of seed and id) and the `natural` partition (a column names
each row's participant). The million itself: tests/test_scale.py."""

import json

import numpy as np
import pytest

from fedgrow_ray.data import prepare_data
from fedgrow_ray.data.spec import check_data_spec
from fedgrow_ray.data.store import PreparedData
from fedgrow_ray.devices import sample_participants


def test_sampling_from_a_range_is_the_sampling_from_the_list():
    """Guards against the range path (no million-element list) drawing other participants than
    the list path for the same seed and round."""
    for n, count in ((50, 7), (20_000, 20)):
        for round_number in (1, 2):
            assert sample_participants(range(n), round_number, 5, count=count) == \
                sample_participants(list(range(n)), round_number, 5, count=count)


def test_a_sampled_partition_is_a_pure_function_of_seed_and_id(tmp_path):
    """Guards against a lazy partition that depends on the order participants are asked for, on
    the process, or that ignores the seed; and against test splits that do not follow the
    participant's own labels."""
    spec = check_data_spec({"source": "synthetic_text", "train_size": 400, "test_size": 200,
                            "test_per_participant": 10, "partition": {"scheme": "sampled", "samples": 30}})
    folder = prepare_data(spec, "text", 1_000_000, 3, tmp_path, max_positions=16, vocab_size=300)
    assert not (folder / "partition.arrow").exists()  # nothing stored per participant
    a, b = PreparedData.open(folder), PreparedData.open(folder)
    later = b.participant(999_999)
    first = a.participant(999_999)
    assert np.array_equal(first.train.indices, later.train.indices)
    assert np.array_equal(first.test.indices, later.test.indices)
    assert len(first.train) == 30 and len(np.unique(first.train.indices)) == 30 and len(first.test) == 10
    assert not np.array_equal(a.participant(0).train.indices, first.train.indices)
    other = PreparedData.open(prepare_data(spec, "text", 1_000_000, 4, tmp_path, max_positions=16, vocab_size=300))
    assert not np.array_equal(other.participant(999_999).train.indices, first.train.indices)
    # the test split's label mix follows the training rows' (largest remainder over 10)
    train_mix = np.bincount(first.train.labels, minlength=a.num_classes) / len(first.train)
    test_mix = np.bincount(first.test.labels, minlength=a.num_classes) / len(first.test)
    assert np.abs(train_mix - test_mix).max() <= 0.1 + 1e-9


def test_a_natural_partition_gives_each_participant_its_own_rows(tmp_path):
    """Guards against rows given to the wrong participant, lost, or shared, when a column of
    the files names whose row it is."""
    owners = ["u3", "u1", "u2", "u1", "u3", "u3", "u0", "u2", "u9"] * 4
    texts = [f"word{i % 7} filler{i % 3} token{i}" for i in range(len(owners))]
    labels = [i % 2 for i in range(len(owners))]
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": y, "user": u}) + "\n"
                            for t, y, u in zip(texts, labels, owners)))
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in zip(texts[:10], labels[:10])))
    spec = check_data_spec({"source": "files", "files": {"train": str(path), "test": str(test), "text_column": "text"},
                            "partition": {"scheme": "natural", "column": "user"}, "test_per_participant": 4})
    data = PreparedData.open(prepare_data(spec, "text", 4, 0, tmp_path / "cache", max_positions=8, vocab_size=50))
    for pid, user in enumerate(["u0", "u1", "u2", "u3"]):  # sorted owner names; u9 is beyond 4
        rows = data.participant(pid).train.indices
        assert rows.tolist() == [i for i, u in enumerate(owners) if u == user]
        assert len(data.participant(pid).test) == 4
    with pytest.raises(ValueError, match="names 5 participants, fewer than participants=6"):
        prepare_data(spec, "text", 6, 0, tmp_path / "cache", max_positions=8, vocab_size=50)
    with pytest.raises(ValueError, match="'natural' is not allowed with source 'synthetic_text'"):
        check_data_spec({"source": "synthetic_text", "partition": {"scheme": "natural", "column": "user"}})
