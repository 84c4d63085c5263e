"""The few loops every method shares: seeded optimisation steps over a data shard, and
prediction over a shard. Methods differ in what they train, never in how a step is taken.

How a step is taken is set by three scenario keys, the same for every method:
training.precision (fp32, or bf16 / fp16 autocast over fp32 master weights, with a loss
scaler for fp16), training.micro_batch_size (gradient accumulation over slices of the batch)
and activation checkpointing (chosen per participant from its memory budget)."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Callable, Iterator

import numpy as np
import torch

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


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


def autocast(precision: str, device) -> contextlib.AbstractContextManager:
    """The autocast region of `precision` on `device` (nothing for fp32): matmuls and attention
    run in bf16 / fp16 while the trained parameters stay fp32 (their master copies)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[precision])


def precision_problem(precision: str, device_type: str) -> str | None:
    """Why torch cannot run `precision` on `device_type` here, or None."""
    if precision == "fp32":
        return None
    try:
        with torch.autocast(device_type, dtype=_DTYPES[precision]):
            a = torch.ones(2, 2, device=device_type)
            if (a @ a).dtype != _DTYPES[precision]:
                return f"torch {torch.__version__} does not autocast matmuls to {precision} on {device_type}"
        if precision == "fp16":
            torch.amp.GradScaler(device_type)
    except (RuntimeError, ValueError, AssertionError) as err:
        return f"torch {torch.__version__} cannot run {precision} on {device_type} ({str(err).splitlines()[0]})"
    return None


class Cancelled(Exception):
    """The work was called off (a round's wall-clock timeout): the state it was changing is
    half-way and must be thrown away."""


def micro_batches(batch: dict, size: int | None) -> list[dict]:
    """`batch` cut into consecutive slices of at most `size` samples (the whole batch when
    `size` is None or not smaller)."""
    n = len(batch["labels"])
    if size is None or size >= n:
        return [batch]
    return [{k: v[start:start + size] for k, v in batch.items()} for start in range(0, n, size)]


def backward_batch(loss_fn: Callable, batch: dict, micro_batch_size: int | None = None,
                   weights: Callable[[], dict] | None = None, precision: str = "fp32",
                   scaler=None, device="cpu") -> float:
    """Gradients of `batch`'s mean loss accumulated into the parameters; returns that loss.

    The batch is run in slices of `micro_batch_size`, each slice's mean loss weighted by its
    share of the batch, so the gradient is the full batch's up to float rounding (the loss is
    a mean over samples). `weights`, when given, builds tensors the loss depends on (a grown
    model's parameters) once for the whole step: `loss_fn(batch, built)`. With several slices
    they are run on detached copies whose gradients are pushed back through `weights` once,
    so weight generation is neither repeated nor kept alive once per slice."""
    chunks = micro_batches(batch, micro_batch_size)
    n = len(batch["labels"])
    scale = (lambda loss: scaler.scale(loss)) if scaler is not None else (lambda loss: loss)
    with autocast(precision, device):
        built = weights() if weights is not None else None
    if len(chunks) == 1:
        with autocast(precision, device):
            loss = loss_fn(batch, built) if weights is not None else loss_fn(batch)
        scale(loss).backward()
        return loss.item()
    leaves = None
    if built is not None:
        leaves = {k: v.detach().requires_grad_(v.requires_grad) for k, v in built.items()}
    total = 0.0
    for chunk in chunks:
        share = len(chunk["labels"]) / n
        with autocast(precision, device):
            loss = (loss_fn(chunk, leaves) if weights is not None else loss_fn(chunk)) * share
        scale(loss).backward()
        total += loss.item()
    if built is not None:
        pairs = [(built[k], leaves[k].grad) for k in built if leaves[k].grad is not None]
        if pairs:
            torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
    return total


def train_steps(loss_fn: Callable, optimiser: torch.optim.Optimizer,
                batches: Iterator[dict], steps: int, device="cpu",
                max_grad_norm: float | None = None,
                should_stop: Callable[[], bool] | None = None,
                micro_batch_size: int | None = None, weights: Callable[[], dict] | None = None,
                precision: str = "fp32") -> float:
    """`steps` optimiser steps of `loss_fn` on the next batches; the mean training loss.
    `should_stop` is asked before every step; when it says so, Cancelled is raised. See
    `backward_batch` for micro_batch_size, weights and precision; fp16 scales the loss
    (torch.amp.GradScaler) so small gradients do not flush to zero, and skips a step whose
    gradients overflowed."""
    parameters = [p for group in optimiser.param_groups for p in group["params"]]
    scaler = torch.amp.GradScaler(torch.device(device).type) if precision == "fp16" else None
    total = 0.0
    for _ in range(steps):
        if should_stop is not None and should_stop():
            raise Cancelled
        batch = to_device(next(batches), device)
        optimiser.zero_grad(set_to_none=True)
        total += backward_batch(loss_fn, batch, micro_batch_size, weights, precision, scaler, device)
        if scaler is not None:
            scaler.unscale_(optimiser)
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, max_grad_norm)
        if scaler is not None:
            scaler.step(optimiser)
            scaler.update()
        else:
            optimiser.step()
    return total / max(steps, 1)


@torch.inference_mode()
def predict(logits_fn: Callable[[dict], torch.Tensor], shard, batch_size: int,
            device="cpu", precision: str = "fp32") -> tuple[np.ndarray, np.ndarray]:
    """(labels, predicted labels) over the whole shard, in order, with no autograd bookkeeping
    (inference mode)."""
    labels, predictions = [], []
    for batch in shard.batches(batch_size, None, shuffle=False):
        batch = to_device(batch, device)
        labels.append(batch.pop("labels").cpu())
        with autocast(precision, device):
            predictions.append(logits_fn(batch).argmax(-1).cpu())
    if not labels:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return torch.cat(labels).numpy(), torch.cat(predictions).numpy()
