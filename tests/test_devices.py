"""Device profiles, virtual clock, availability, memory and round selection (fedgrow_ray.devices)."""

import math
import statistics

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fedgrow_ray.devices import (
    DeviceProfile,
    SimulatedTime,
    activation_values_per_sample,
    apply_deadline,
    check_devices_spec,
    device_profile,
    device_profiles,
    fit_shape,
    is_available,
    sample_participants,
    simulated_time,
    step_flops,
    training_memory_mb,
)

REFERENCE = DeviceProfile(compute_speed=1.0, upload_mbps=20.0, download_mbps=100.0,
                          availability=1.0, memory_mb=math.inf)


# ---- spec validation -------------------------------------------------------------------------

def test_defaults_filled_and_idempotent():
    spec = check_devices_spec(None)
    assert spec == {
        "reference_gflops": 50.0,
        "compute_speed": {"dist": "constant", "value": 1.0},
        "upload_mbps": {"dist": "constant", "value": 20.0},
        "download_mbps": {"dist": "constant", "value": 100.0},
        "availability": {"dist": "constant", "value": 1.0},
        "memory_mb": {"dist": "constant", "value": math.inf},
        "trace": None,
    }
    assert check_devices_spec(spec) == spec
    assert check_devices_spec({"memory_mb": "inf"})["memory_mb"]["value"] == math.inf
    rich = {"compute_speed": {"dist": "lognormal", "median": 1, "sigma": 0.5},
            "upload_mbps": {"dist": "choice", "values": [1, 10]},
            "availability": {"dist": "uniform", "low": 0.5, "high": 1}}
    assert check_devices_spec(check_devices_spec(rich)) == check_devices_spec(rich)


@pytest.mark.parametrize("raw, fragments", [
    ({"compute_speed": {"dist": "gauss", "median": 1}},
     ["devices.compute_speed.dist", "'gauss'", "lognormal"]),
    ({"compute_speed": {"dist": "lognormal", "median": 1.0, "sigma": -0.5}},
     ["devices.compute_speed.sigma", "-0.5", ">= 0"]),
    ({"compute_speed": {"dist": "lognormal", "median": 1.0}},
     ["devices.compute_speed", "missing", "sigma"]),
    ({"compute_speed": {"dist": "lognormal", "median": 1.0, "sigma": 0.1, "mean": 2}},
     ["devices.compute_speed", "unknown", "mean"]),
    ({"availability": 1.5}, ["devices.availability", "1.5", "[0, 1]"]),
    ({"availability": {"dist": "uniform", "low": 0.2, "high": 1.5}},
     ["devices.availability.high", "1.5", "[0, 1]"]),
    ({"upload_mbps": 0}, ["devices.upload_mbps", "0", "> 0"]),
    ({"upload_mbps": "fast"}, ["devices.upload_mbps", "'fast'", "number"]),
    ({"download_mbps": {"dist": "uniform", "low": 5, "high": 1}},
     ["devices.download_mbps", "low=5", "high=1"]),
    ({"memory_mb": {"dist": "choice", "values": [100, 200], "weights": [1]}},
     ["devices.memory_mb.weights", "as long as values"]),
    ({"memory_mb": {"dist": "choice", "values": []}}, ["devices.memory_mb.values", "non-empty"]),
    ({"compute_speed": {"median": 1}}, ["devices.compute_speed", "dist"]),
    ({"speed": 2}, ["devices", "unknown", "speed", "compute_speed"]),
    ({"reference_gflops": -1}, ["devices.reference_gflops", "-1", "> 0"]),
    ({"trace": "no/such/file.csv"}, ["devices.trace", "no/such/file.csv", "not found"]),
    ({"trace": "profiles.json"}, ["devices.trace", ".json", ".csv"]),
    ("fast", ["devices", "mapping"]),
])
def test_spec_errors_name_the_key(raw, fragments):
    with pytest.raises(ValueError) as info:
        check_devices_spec(raw)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_trace_with_bad_columns(tmp_path):
    (tmp_path / "typo.csv").write_text("compute_speed,uplaod_mbps\n1,2\n")
    with pytest.raises(ValueError, match=r"devices.trace.*unknown column.*uplaod_mbps"):
        check_devices_spec({"trace": "typo.csv"}, base_dir=tmp_path)
    (tmp_path / "hole.csv").write_text("compute_speed,upload_mbps\n1,2\n0.5,\n")
    with pytest.raises(ValueError, match=r"devices.trace.*column 'upload_mbps' row 1 is empty"):
        check_devices_spec({"trace": str(tmp_path / "hole.csv")})
    (tmp_path / "range.csv").write_text("availability\n0.5\n1.2\n")
    with pytest.raises(ValueError, match=r"devices.trace.*'availability' row 1: 1.2.*\[0, 1\]"):
        check_devices_spec({"trace": str(tmp_path / "range.csv")})
    (tmp_path / "empty.csv").write_text("compute_speed\n")
    with pytest.raises(ValueError, match=r"devices.trace.*no rows"):
        check_devices_spec({"trace": str(tmp_path / "empty.csv")})


# ---- profiles --------------------------------------------------------------------------------

SPREAD = {
    "compute_speed": {"dist": "lognormal", "median": 1.0, "sigma": 0.5},
    "upload_mbps": {"dist": "uniform", "low": 1, "high": 50},
    "download_mbps": {"dist": "choice", "values": [10, 100, 1000], "weights": [1, 2, 1]},
    "availability": {"dist": "lognormal", "median": 0.8, "sigma": 0.3},
    "memory_mb": {"dist": "choice", "values": [256, 1024, "inf"]},
}


def test_profiles_deterministic_and_independent_of_population():
    spec = check_devices_spec(SPREAD)
    small = device_profiles(spec, 10, seed=3)
    large = device_profiles(spec, 1000, seed=3)
    assert small == device_profiles(spec, 10, seed=3)
    assert small[7] == large[7] == device_profile(spec, 7, seed=3)
    assert large[:10] == small
    assert device_profiles(spec, 10, seed=4) != small
    assert all(0.0 <= p.availability <= 1.0 for p in large)
    assert {p.memory_mb for p in large} == {256.0, 1024.0, math.inf}
    assert {p.download_mbps for p in large} == {10.0, 100.0, 1000.0}
    assert all(1 <= p.upload_mbps <= 50 for p in large)


def test_one_field_change_keeps_other_fields():
    base = device_profiles(check_devices_spec(SPREAD), 20, seed=0)
    changed = device_profiles(check_devices_spec({**SPREAD, "upload_mbps": 5}), 20, seed=0)
    assert [p.compute_speed for p in base] == [p.compute_speed for p in changed]
    assert {p.upload_mbps for p in changed} == {5.0}


def test_lognormal_median_and_uniform_range():
    spec = check_devices_spec({"compute_speed": {"dist": "lognormal", "median": 2.0, "sigma": 0.5},
                               "upload_mbps": {"dist": "uniform", "low": 10, "high": 30}})
    profiles = device_profiles(spec, 5000, seed=11)
    speeds = [p.compute_speed for p in profiles]
    assert statistics.median(speeds) == pytest.approx(2.0, rel=0.05)
    logs = [math.log(s) for s in speeds]
    assert statistics.stdev(logs) == pytest.approx(0.5, rel=0.05)
    uploads = [p.upload_mbps for p in profiles]
    assert statistics.mean(uploads) == pytest.approx(20.0, rel=0.03)


def test_trace_csv_and_parquet_row_by_row(tmp_path):
    rows = {"compute_speed": [0.25, 1.0, 4.0], "memory_mb": [300.0, math.inf, 2048.0]}
    (tmp_path / "trace.csv").write_text(
        "compute_speed,memory_mb\n" + "".join(f"{c},{m}\n" for c, m in zip(*rows.values())))
    pq.write_table(pa.table(rows), tmp_path / "trace.parquet")
    for name in ("trace.csv", "trace.parquet"):
        spec = check_devices_spec({"trace": name, "upload_mbps": 7}, base_dir=tmp_path)
        assert spec["trace"] == str(tmp_path / name)
        profiles = device_profiles(spec, 7, seed=0)
        assert [p.compute_speed for p in profiles] == [0.25, 1.0, 4.0, 0.25, 1.0, 4.0, 0.25]
        assert [p.memory_mb for p in profiles[:3]] == [300.0, math.inf, 2048.0]
        # columns the trace lacks come from the distributions
        assert {p.upload_mbps for p in profiles} == {7.0}
        assert {p.download_mbps for p in profiles} == {100.0}


# ---- availability ----------------------------------------------------------------------------

def test_availability_frequency_and_determinism():
    profile = DeviceProfile(1.0, 20.0, 100.0, availability=0.3)
    draws = [is_available(profile, 5, r, seed=1) for r in range(4000)]
    assert sum(draws) / len(draws) == pytest.approx(0.3, abs=0.03)
    assert draws == [is_available(profile, 5, r, seed=1) for r in range(4000)]
    assert draws != [is_available(profile, 6, r, seed=1) for r in range(4000)]
    always = DeviceProfile(1.0, 20.0, 100.0, availability=1.0)
    never = DeviceProfile(1.0, 20.0, 100.0, availability=0.0)
    assert all(is_available(always, 0, r, 0) for r in range(100))
    assert not any(is_available(never, 0, r, 0) for r in range(100))


# ---- virtual clock and memory ----------------------------------------------------------------

def test_step_flops_formula():
    # 6 * 1000 * (16 * 2) + 12 * 2 * 16 * 8 * (16 * 2)
    assert step_flops(1000, 16, 2, width=8, layers=2, seq_len=16) == 192000 + 98304
    with pytest.raises(ValueError, match="batch_size"):
        step_flops(1000, 16, -1, 8, 2, 16)


def test_simulated_time_exact():
    slow = DeviceProfile(compute_speed=0.5, upload_mbps=8.0, download_mbps=80.0, availability=1.0)
    t = simulated_time(slow, flops=1e12, bytes_up=2_000_000, bytes_down=5_000_000,
                       reference_gflops=50)
    # 1e12 / (0.5 * 50e9) = 40 s; 16e6 bits / 8e6 = 2 s; 40e6 bits / 80e6 = 0.5 s
    assert t == SimulatedTime(download_s=0.5, compute_s=40.0, upload_s=2.0)
    assert t.total_s == 42.5
    fast = simulated_time(REFERENCE, 0, 0, 0, 50)
    assert fast.total_s == 0.0


def test_training_memory_estimate():
    # 4 * 1_000_000 + 12 * 250_000 + 4 * 65_536 * 8 bytes = 4e6 + 3e6 + 2_097_152 bytes
    mb = training_memory_mb(1_000_000, 250_000, activations_per_sample=65_536, batch_size=8)
    assert mb == (7_000_000 + 2_097_152) / 2 ** 20
    with pytest.raises(ValueError, match="trainable_params"):
        training_memory_mb(10, 20, 0, 1)
    assert activation_values_per_sample(8, 2, 2, 4, ffn=32) == 2 * (4 * (64 + 64) + 2 * 2 * 16)


def test_fit_shape():
    small_device = DeviceProfile(1.0, 20.0, 100.0, 1.0, memory_mb=500)
    candidates = [("256x4", 1800.0), ("128x4", 520.0), ("128x2", 480.0), ("64x2", 200.0)]
    name, reason = fit_shape(small_device, candidates)
    assert name == "128x2" and "480" in reason and "500" in reason
    tiny = DeviceProfile(1.0, 20.0, 100.0, 1.0, memory_mb=150)
    name, reason = fit_shape(tiny, candidates)
    assert name is None
    assert reason == "memory budget 150 MiB < 200 MiB needed by the smallest shape 64x2"
    assert fit_shape(REFERENCE, candidates)[0] == "256x4"


# ---- selection and deadline ------------------------------------------------------------------

def test_sample_participants():
    ids = list(range(100))
    chosen = sample_participants(ids, round_number=3, seed=0, fraction=0.1, count=None)
    assert len(chosen) == 10 and chosen == sorted(chosen) and set(chosen) <= set(ids)
    assert chosen == sample_participants(ids[::-1], 3, 0, fraction=0.1, count=None)
    assert chosen != sample_participants(ids, 4, 0, fraction=0.1, count=None)
    assert len(sample_participants(ids, 3, 0, None, count=10, over_selection=1.3)) == 13
    assert len(sample_participants(ids, 3, 0, None, count=7, over_selection=1.3)) == 10  # ceil 9.1
    assert sample_participants(ids, 3, 0, None, count=90, over_selection=1.3) == ids
    assert sample_participants(ids, 3, 0, None, None) == ids
    assert len(sample_participants(ids, 3, 0, fraction=0.001, count=None)) == 1
    assert sample_participants([], 0, 0, None, None) == []
    with pytest.raises(ValueError, match="not both"):
        sample_participants(ids, 0, 0, fraction=0.1, count=5)
    with pytest.raises(ValueError, match="over_selection"):
        sample_participants(ids, 0, 0, None, 5, over_selection=0.5)
    with pytest.raises(ValueError, match="fraction"):
        sample_participants(ids, 0, 0, fraction=1.5, count=None)


def _t(total):
    return SimulatedTime(download_s=0.0, compute_s=total, upload_s=0.0)


def test_apply_deadline_hand_built():
    times = {4: _t(3.0), 1: _t(12.0), 2: _t(5.0), 9: _t(5.0), 3: _t(10.0)}
    kept, late, round_time = apply_deadline(times, deadline_s=10.0, keep_first=None)
    assert kept == [2, 3, 4, 9] and late == [1] and round_time == 10.0   # 10.0 is in time
    # over-selection: keep the 2 earliest; 2 and 9 tie at 5.0, id 2 wins
    kept, late, round_time = apply_deadline(times, deadline_s=10.0, keep_first=2)
    assert kept == [2, 4] and late == [1, 3, 9] and round_time == 5.0
    # fewer than keep_first in time: wait until the deadline
    kept, late, round_time = apply_deadline(times, deadline_s=4.0, keep_first=3)
    assert kept == [4] and late == [1, 2, 3, 9] and round_time == 4.0
    # everyone in time and no one over: the last arrival ends the round
    kept, late, round_time = apply_deadline(times, deadline_s=None, keep_first=None)
    assert kept == [1, 2, 3, 4, 9] and late == [] and round_time == 12.0
    kept, late, round_time = apply_deadline(times, deadline_s=100.0, keep_first=10)
    assert kept == [1, 2, 3, 4, 9] and round_time == 12.0
    # nobody in time
    kept, late, round_time = apply_deadline(times, deadline_s=1.0, keep_first=None)
    assert kept == [] and late == [1, 2, 3, 4, 9] and round_time == 1.0
    assert apply_deadline({}, 5.0, None) == ([], [], 0.0)
