"""Differential privacy on the shared update (DP-FedAvg, McMahan et al., 2018), as pure
functions of tensors.

A participant's contribution is its update delta: the shared state it trained minus the one it
received, all tensors together as one vector. `clip` scales it to L2 norm at most C, so one
participant moves the sum by at most C (2C when swapped for another: see accountant.py). The
server's estimate is

    new shared = received + (sum of clipped deltas + N(0, (sigma C)^2 I)) / expected count

with the fixed denominator `expected count` (the participants a round is meant to keep), not
the number that arrived: dividing by a data-dependent count would leak it. Contributions are
weighted equally: weighting by sample counts would let one participant's weight, and with it
the sensitivity, grow without bound. Where the Gaussian noise is drawn is the `noise` mode:
central (the driver, once, on the sum), local (each participant on its own delta, std sigma C)
or distributed (each participant std sigma C / sqrt(expected count) before secure aggregation
masks it, so that the sum of a full cohort carries std sigma C).

Arithmetic is float64; the results are cast to each tensor's dtype.
"""

from __future__ import annotations

import math

import torch

Update = dict[str, torch.Tensor]


def delta_of(update: Update, received: Update) -> Update:
    """update - received, per tensor, in float64."""
    return {name: update[name].to(torch.float64) - received[name].to(torch.float64) for name in received}


def global_norm(tensors: Update) -> float:
    return math.sqrt(sum(float(t.to(torch.float64).square().sum()) for t in tensors.values()))


def clip(delta: Update, bound: float) -> tuple[Update, float]:
    """(delta scaled to global L2 norm <= bound, its norm before clipping)."""
    norm = global_norm(delta)
    scale = min(1.0, bound / norm) if norm > 0 else 1.0
    return {name: t.to(torch.float64) * scale for name, t in delta.items()}, norm


def gaussian(like: Update, std: float, generator: torch.Generator) -> Update:
    """Independent N(0, std^2) per coordinate, shaped like `like`, drawn in name order."""
    return {name: torch.randn(like[name].shape, generator=generator, dtype=torch.float64) * std
            for name in sorted(like)}


def add(a: Update, b: Update) -> Update:
    return {name: a[name] + b[name] for name in a}


def apply_mean(received: Update, delta_sum: Update, noise: Update | None, expected_count: int) -> Update:
    """received + (delta_sum [+ noise]) / expected_count, cast to each received tensor's dtype."""
    result = {}
    for name, base in received.items():
        total = delta_sum[name] if noise is None else delta_sum[name] + noise[name]
        result[name] = (base.to(torch.float64) + total / expected_count).to(base.dtype)
    return result
