"""The few loops every method shares: seeded optimisation steps over a data shard, and
prediction over a shard. Methods differ in what they train, never in how a step is taken."""

from __future__ import annotations

import hashlib
from typing import Callable, Iterator

import numpy as np
import torch


def derive_seed(*parts) -> int:
    """A 63-bit seed from any parts (scenario seed, participant id, method, round, purpose), so
    every unit of work draws from its own stream whatever process runs it and in what order."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def batch_stream(shard, batch_size: int, generator: torch.Generator) -> Iterator[dict]:
    """Shuffled batches from `shard`, epoch after epoch."""
    while True:
        yield from shard.batches(batch_size, generator)


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def make_optimiser(parameters, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)


class Cancelled(Exception):
    """The work was called off (a round's wall-clock timeout): the state it was changing is
    half-way and must be thrown away."""


def train_steps(loss_fn: Callable[[dict], torch.Tensor], optimiser: torch.optim.Optimizer,
                batches: Iterator[dict], steps: int, device="cpu",
                max_grad_norm: float | None = None,
                should_stop: Callable[[], bool] | None = None) -> float:
    """`steps` optimiser steps of `loss_fn` on the next batches; the mean training loss.
    `should_stop` is asked before every step; when it says so, Cancelled is raised."""
    parameters = [p for group in optimiser.param_groups for p in group["params"]]
    total = 0.0
    for _ in range(steps):
        if should_stop is not None and should_stop():
            raise Cancelled
        loss = loss_fn(to_device(next(batches), device))
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
        optimiser.step()
        total += loss.item()
    return total / max(steps, 1)


@torch.no_grad()
def predict(logits_fn: Callable[[dict], torch.Tensor], shard, batch_size: int,
            device="cpu") -> tuple[np.ndarray, np.ndarray]:
    """(labels, predicted labels) over the whole shard, in order."""
    labels, predictions = [], []
    for batch in shard.batches(batch_size, None, shuffle=False):
        batch = to_device(batch, device)
        labels.append(batch.pop("labels").cpu())
        predictions.append(logits_fn(batch).argmax(-1).cpu())
    if not labels:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return torch.cat(labels).numpy(), torch.cat(predictions).numpy()
