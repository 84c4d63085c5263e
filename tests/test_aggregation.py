"""Server-side aggregation (fedgrow_ray.aggregation)."""

import pytest
import torch

from fedgrow_ray.aggregation import (
    AGGREGATORS,
    check_update,
    coordinate_median,
    fedavg,
    finish_partial_sums,
    get_aggregator,
    trimmed_mean,
    weighted_partial_sum,
)


def _u(w, b):
    return {"w": torch.tensor(w, dtype=torch.float32), "b": torch.tensor(b, dtype=torch.float32)}


def test_fedavg_exact_hand_computed():
    updates = [(_u([[1.0, 2.0], [3.0, 4.0]], [0.0]), 1),
               (_u([[5.0, 6.0], [7.0, 8.0]], [4.0]), 3)]
    result = fedavg(updates)
    # (1 * [1,2,3,4] + 3 * [5,6,7,8]) / 4 = [4, 5, 6, 7]; b = 12 / 4 = 3
    assert torch.equal(result["w"], torch.tensor([[4.0, 5.0], [6.0, 7.0]]))
    assert torch.equal(result["b"], torch.tensor([3.0]))
    assert result["w"].dtype == torch.float32
    # inputs untouched
    assert torch.equal(updates[0][0]["w"], torch.tensor([[1.0, 2.0], [3.0, 4.0]]))


def test_fedavg_equal_weights_is_mean_and_keeps_dtype():
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(5, 3, generator=gen, dtype=torch.float64) for _ in range(4)]
    result = fedavg([({"x": t}, 10) for t in tensors])
    torch.testing.assert_close(result["x"], torch.stack(tensors).mean(0), rtol=1e-15, atol=1e-15)
    half = fedavg([({"x": t.to(torch.bfloat16)}, 1) for t in tensors])
    assert half["x"].dtype == torch.bfloat16


def test_fedavg_zero_weight_update_is_ignored():
    result = fedavg([(_u([1.0], [1.0]), 2), (_u([100.0], [100.0]), 0)])
    assert torch.equal(result["w"], torch.tensor([1.0]))


def test_partial_sums_combine_to_fedavg():
    gen = torch.Generator().manual_seed(1)
    updates = [({"w": torch.randn(4, 6, generator=gen), "b": torch.randn(6, generator=gen)},
                int(n)) for n in torch.randint(1, 50, (11,), generator=gen)]
    direct = fedavg(updates)
    # one partial sum: bit-for-bit what fedavg does
    dtypes = {k: v.dtype for k, v in updates[0][0].items()}
    one = finish_partial_sums([weighted_partial_sum(updates)], dtypes)
    assert all(torch.equal(direct[k], one[k]) for k in direct)
    # three actors pre-reduce their hosted participants: equal up to float64 rounding
    partials = [weighted_partial_sum(updates[:3]), weighted_partial_sum(updates[3:8]),
                weighted_partial_sum(updates[8:])]
    sums, total = weighted_partial_sum(updates)
    assert total == sum(t for _, t in partials) == sum(n for _, n in updates)
    assert all(s.dtype == torch.float64 for s in sums.values())
    combined = finish_partial_sums(partials)
    reference = finish_partial_sums([(sums, total)])
    for k in direct:
        assert combined[k].dtype == torch.float64
        torch.testing.assert_close(combined[k], reference[k], rtol=1e-14, atol=1e-15)
        torch.testing.assert_close(combined[k].float(), direct[k], rtol=1e-6, atol=1e-7)


def test_median_and_trimmed_mean_known_values():
    values = [[1.0, -5.0], [2.0, 0.0], [3.0, 5.0], [4.0, 10.0], [1000.0, 1e9]]
    updates = [({"x": torch.tensor(v)}, 1) for v in values]
    assert torch.equal(coordinate_median(updates)["x"], torch.tensor([3.0, 5.0]))
    # even count: mean of the two middle values
    assert torch.equal(coordinate_median(updates[:4])["x"], torch.tensor([2.5, 2.5]))
    # drop 1 each side of 5: mean of the middle three
    assert torch.equal(trimmed_mean(updates, 0.2)["x"], torch.tensor([3.0, 5.0]))
    assert torch.equal(trimmed_mean(updates[:4], 0.25)["x"], torch.tensor([2.5, 2.5]))
    # trim 0 is the plain mean
    torch.testing.assert_close(trimmed_mean(updates[:4], 0.0)["x"], torch.tensor([2.5, 2.5]))


def test_robust_to_one_huge_outlier():
    honest = [({"x": torch.full((3,), 1.0 + 0.01 * i)}, 10) for i in range(9)]
    poisoned = honest + [({"x": torch.full((3,), 1e12)}, 10)]
    assert fedavg(poisoned)["x"].max() > 1e10
    assert coordinate_median(poisoned)["x"].sub(1.04).abs().max() < 0.02
    assert trimmed_mean(poisoned, 0.1)["x"].sub(1.04).abs().max() < 0.02


def test_aggregator_registry_and_argument_errors():
    updates = [(_u([1.0], [2.0]), 1), (_u([3.0], [4.0]), 1)]
    assert set(AGGREGATORS) == {"fedavg", "median", "trimmed_mean"}
    for name in AGGREGATORS:
        assert torch.equal(get_aggregator(name)(updates)["w"], torch.tensor([2.0]))
    with pytest.raises(ValueError, match="unknown; allowed"):
        get_aggregator("krum")
    with pytest.raises(ValueError, match="no updates"):
        fedavg([])
    with pytest.raises(ValueError, match="trim_fraction=0.5"):
        trimmed_mean(updates, 0.5)
    with pytest.raises(ValueError, match="trim_fraction=-0.1"):
        trimmed_mean(updates, -0.1)
    with pytest.raises(ValueError, match="total samples is 0"):
        fedavg([(_u([1.0], [2.0]), 0)])
    with pytest.raises(ValueError, match="samples=-1"):
        fedavg([(_u([1.0], [2.0]), -1)])
    with pytest.raises(ValueError, match=r"updates\[1\]\['w'\] has shape \(2,\)"):
        fedavg([(_u([1.0], [2.0]), 1), (_u([1.0, 2.0], [2.0]), 1)])
    with pytest.raises(ValueError, match=r"updates\[1\] names differ.*missing \['b'\]"):
        fedavg([(_u([1.0], [2.0]), 1), ({"w": torch.ones(1)}, 1)])


def test_check_update():
    reference = _u([[0.0, 0.0]], [0.0])
    assert check_update(_u([[3.0, 4.0]], [0.0]), reference, max_norm=5.0) is None
    assert check_update(_u([[3.0, 4.0]], [0.0]), reference, max_norm=None) is None

    reason = check_update(_u([[float("nan"), 0.0]], [0.0]), reference, None)
    assert "w" in reason and "NaN" in reason
    reason = check_update(_u([[0.0, 0.0]], [float("inf")]), reference, None)
    assert reason.startswith("b ") and "Inf" in reason
    reason = check_update({"w": torch.zeros(1, 2)}, reference, None)
    assert "missing" in reason and "'b'" in reason
    reason = check_update({**_u([[0.0, 0.0]], [0.0]), "extra": torch.zeros(1)}, reference, None)
    assert "unexpected" in reason and "'extra'" in reason
    reason = check_update(_u([[0.0, 0.0, 0.0]], [0.0]), reference, None)
    assert reason == "w has shape (1, 3), expected (1, 2)"
    reason = check_update({"w": torch.zeros(1, 2, dtype=torch.float64), "b": torch.zeros(1)},
                          reference, None)
    assert "w" in reason and "torch.float64" in reason and "torch.float32" in reason
    # global L2 over both tensors: sqrt(3^2 + 4^2 + 12^2) = 13
    reason = check_update(_u([[3.0, 4.0]], [12.0]), reference, max_norm=12.5)
    assert "13" in reason and "12.5" in reason
    assert check_update(_u([[3.0, 4.0]], [12.0]), reference, max_norm=13.0) is None
