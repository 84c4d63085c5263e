"""Server-side aggregation as pure functions, in the style of Flower's strategies.

An update is a dict name -> torch.Tensor (every update has the same names and shapes) paired
with the number of samples it was trained on. Aggregators take a list of (update, samples)
pairs and return a new dict; they never modify their inputs. All arithmetic is done in
float64 and the result is cast back to each tensor's input dtype (an integer tensor is
truncated back). Sums run in the order of the caller's list, so the caller passes updates
sorted by participant id and a run is bit-for-bit reproducible.

    fedavg             mean weighted by samples (McMahan et al., 2017)
    median             unweighted coordinate-wise median (Yin et al., 2018)
    trimmed_mean       unweighted coordinate-wise mean after dropping the trim_fraction largest
                       and smallest values (Yin et al., 2018)

An actor hosting many participants can pre-reduce with `weighted_partial_sum` and send one
partial sum; the driver finishes with `finish_partial_sums`, which is exactly what `fedavg`
does with a single partial sum. Median and trimmed mean cannot be pre-reduced this way.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable

import torch

Update = dict[str, torch.Tensor]
PartialSum = tuple[dict[str, torch.Tensor], int]


def fedavg(updates: list[tuple[Update, int]]) -> Update:
    """The sample-weighted mean: sum_i samples_i * update_i / sum_i samples_i."""
    dtypes = _check_updates(updates, "fedavg", need_samples=True)
    return finish_partial_sums([weighted_partial_sum(updates)], dtypes)


def weighted_partial_sum(updates: list[tuple[Update, int]]) -> PartialSum:
    """(dict of float64 sums of tensor * samples, total samples), summed in list order."""
    _check_updates(updates, "weighted_partial_sum", need_samples=False)
    sums = {}
    for name, first in updates[0][0].items():
        total = torch.zeros(first.shape, dtype=torch.float64, device=first.device)
        for update, samples in updates:
            total.add_(update[name].to(torch.float64), alpha=int(samples))
        sums[name] = total
    return sums, sum(int(samples) for _, samples in updates)


def finish_partial_sums(partials: list[PartialSum],
                        dtypes: dict[str, torch.dtype] | torch.dtype | None = None) -> Update:
    """The weighted mean from partial sums (added in list order), cast to `dtypes` (one dtype,
    or one per name; None keeps float64)."""
    if not partials:
        raise ValueError("finish_partial_sums: no partial sums given")
    names = list(partials[0][0])
    for i, (sums, total) in enumerate(partials):
        if set(sums) != set(names):
            raise ValueError(f"finish_partial_sums: partial sum {i} has names "
                             f"{sorted(sums)}, expected {sorted(names)}")
        if isinstance(total, bool) or not isinstance(total, numbers.Integral) or total < 0:
            raise ValueError(f"finish_partial_sums: partial sum {i} has total samples "
                             f"{total!r}; expected an integer >= 0")
    total = sum(int(t) for _, t in partials)
    if total == 0:
        raise ValueError("finish_partial_sums: total samples is 0; cannot weight the mean")
    result = {}
    for name in names:
        acc = partials[0][0][name].to(torch.float64).clone()
        for sums, _ in partials[1:]:
            acc.add_(sums[name].to(torch.float64))
        dtype = dtypes.get(name) if isinstance(dtypes, dict) else dtypes
        mean = acc / total
        result[name] = mean if dtype is None else mean.to(dtype)
    return result


def coordinate_median(updates: list[tuple[Update, int]]) -> Update:
    """The unweighted element-wise median (the mean of the two middle values for an even
    number of updates). Sample counts are ignored. Memory: one float64 copy per update of the
    tensor being reduced."""
    dtypes = _check_updates(updates, "median", need_samples=False)
    n = len(updates)
    result = {}
    for name, dtype in dtypes.items():
        ordered = _sorted_stack(updates, name)
        if n % 2:
            middle = ordered[n // 2]
        else:
            middle = (ordered[n // 2 - 1] + ordered[n // 2]) / 2
        result[name] = middle.to(dtype)
    return result


def trimmed_mean(updates: list[tuple[Update, int]], trim_fraction: float = 0.1) -> Update:
    """The unweighted element-wise mean after dropping floor(trim_fraction * n) of the largest
    and as many of the smallest values per coordinate. trim_fraction in [0, 0.5); 0 is the
    plain mean. Sample counts are ignored."""
    if isinstance(trim_fraction, bool) or not isinstance(trim_fraction, (int, float)) \
            or not 0 <= trim_fraction < 0.5:
        raise ValueError(f"trimmed_mean: trim_fraction={trim_fraction!r} must be in [0, 0.5)")
    dtypes = _check_updates(updates, "trimmed_mean", need_samples=False)
    n = len(updates)
    drop = math.floor(trim_fraction * n)
    result = {}
    for name, dtype in dtypes.items():
        kept = _sorted_stack(updates, name)[drop:n - drop]
        result[name] = kept.mean(dim=0).to(dtype)
    return result


AGGREGATORS: dict[str, Callable[..., Update]] = {
    "fedavg": fedavg,
    "median": coordinate_median,
    "trimmed_mean": trimmed_mean,
}


def get_aggregator(name: str) -> Callable[..., Update]:
    """The aggregator called `name`, or named by an import path (fedgrow_ray.plugins: a
    function, or a class whose instance is called); called as aggregator(updates, **options)."""
    from .plugins import is_import_path, load

    if is_import_path(name):
        found = load(name, "aggregator")
        return found() if isinstance(found, type) else found
    if name not in AGGREGATORS:
        raise ValueError(f"aggregator {name!r} is unknown; allowed: {sorted(AGGREGATORS)}")
    return AGGREGATORS[name]


def check_update(update: Update, reference: Update, max_norm: float | None = None) -> str | None:
    """None if `update` can be aggregated with `reference` (the state sent to the participant),
    else the reason it must be rejected: wrong names, a non-tensor, wrong shape or dtype,
    non-finite values, or a global L2 norm of (update - reference) above `max_norm`."""
    if max_norm is not None and (isinstance(max_norm, bool) or not isinstance(max_norm, (int, float))
                                 or not max_norm > 0):
        raise ValueError(f"check_update: max_norm={max_norm!r} must be a number > 0 or None")
    if not isinstance(update, dict):
        return f"update is a {type(update).__name__}, expected a dict of tensors"
    missing = sorted(set(reference) - set(update))
    unexpected = sorted(set(update) - set(reference))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensor(s) {missing}")
        if unexpected:
            parts.append(f"unexpected tensor(s) {unexpected}")
        return "; ".join(parts)
    for name, expected in reference.items():
        got = update[name]
        if not isinstance(got, torch.Tensor):
            return f"{name} is a {type(got).__name__}, expected a tensor"
        if got.shape != expected.shape:
            return f"{name} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
        if got.dtype != expected.dtype:
            return f"{name} has dtype {got.dtype}, expected {expected.dtype}"
        if (got.is_floating_point() or got.is_complex()) and not bool(torch.isfinite(got).all()):
            bad = int((~torch.isfinite(got)).sum())
            kinds = []
            if bool(torch.isnan(got).any()):
                kinds.append("NaN")
            if bool(torch.isinf(got).any()):
                kinds.append("Inf")
            return f"{name} has {bad} non-finite value(s) ({', '.join(kinds)})"
    if max_norm is not None:
        squared = sum(float((update[name].to(torch.float64) - reference[name].to(torch.float64))
                            .square().sum()) for name in reference)
        norm = math.sqrt(squared)
        if norm > max_norm:
            return f"update norm {norm:.6g} (L2 of update - reference) exceeds max_norm {max_norm:g}"
    return None


# ---- internals -------------------------------------------------------------------------------

def _check_updates(updates, who: str, need_samples: bool) -> dict[str, torch.dtype]:
    """Raise a clear error for an empty list, bad sample counts or mismatched updates; return
    each tensor's dtype (taken from the first update)."""
    if not isinstance(updates, (list, tuple)) or not updates:
        raise ValueError(f"{who}: no updates given; expected a non-empty list of (update, samples)")
    for i, item in enumerate(updates):
        if not isinstance(item, (list, tuple)) or len(item) != 2 or not isinstance(item[0], dict):
            raise ValueError(f"{who}: updates[{i}] must be an (update dict, samples) pair")
        samples = item[1]
        if isinstance(samples, bool) or not isinstance(samples, numbers.Integral) or samples < 0:
            raise ValueError(f"{who}: updates[{i}] has samples={samples!r}; expected an integer >= 0")
    if need_samples and sum(samples for _, samples in updates) == 0:
        raise ValueError(f"{who}: total samples is 0; cannot weight the mean")
    first = updates[0][0]
    if not first:
        raise ValueError(f"{who}: updates[0] has no tensors")
    for i, (update, _) in enumerate(updates):
        if set(update) != set(first):
            missing = sorted(set(first) - set(update))
            unexpected = sorted(set(update) - set(first))
            raise ValueError(f"{who}: updates[{i}] names differ from updates[0]: missing "
                             f"{missing}, unexpected {unexpected}")
        for name, tensor in update.items():
            if not isinstance(tensor, torch.Tensor):
                raise ValueError(f"{who}: updates[{i}][{name!r}] is a {type(tensor).__name__}, "
                                 f"expected a tensor")
            if tensor.shape != first[name].shape:
                raise ValueError(f"{who}: updates[{i}][{name!r}] has shape {tuple(tensor.shape)}, "
                                 f"updates[0] has {tuple(first[name].shape)}")
    return {name: tensor.dtype for name, tensor in first.items()}


def _sorted_stack(updates, name: str) -> torch.Tensor:
    return torch.stack([u[name].to(torch.float64) for u, _ in updates]).sort(dim=0).values
