"""Classification metrics, and communication accounting in bytes."""

from __future__ import annotations

import numpy as np
import torch


def accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    return float((labels == predictions).mean()) if len(labels) else float("nan")


def macro_precision(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Unweighted mean over classes seen in labels or predictions of TP / (TP + FP); a class
    never predicted counts as precision 0 (scikit-learn's zero_division=0)."""
    classes = np.union1d(labels, predictions)
    if not len(classes):
        return float("nan")
    precisions = []
    for c in classes:
        predicted = predictions == c
        precisions.append(float((labels[predicted] == c).mean()) if predicted.any() else 0.0)
    return float(np.mean(precisions))


def state_bytes(state: dict[str, torch.Tensor] | None) -> int:
    """Bytes a participant sends or receives for `state` (tensor payloads, names not counted)."""
    if not state:
        return 0
    return sum(t.numel() * t.element_size() for t in state.values())
