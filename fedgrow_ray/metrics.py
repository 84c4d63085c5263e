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


def majority_label(train_labels: np.ndarray) -> int:
    """The most frequent label of a training split (the smallest label on a tie)."""
    return int(np.bincount(np.asarray(train_labels, dtype=np.int64)).argmax())


def majority_accuracy(train_labels: np.ndarray, test_labels: np.ndarray) -> float:
    """Accuracy on `test_labels` of always predicting the majority label of `train_labels`:
    the reference a label-skewed personal split gives for free."""
    if not len(train_labels):
        return float("nan")
    return accuracy(np.asarray(test_labels), np.full(len(test_labels), majority_label(train_labels)))


def state_bytes(state: dict[str, torch.Tensor] | None) -> int:
    """Bytes a participant sends or receives for `state` (tensor payloads, names not counted)."""
    if not state:
        return 0
    return sum(t.numel() * t.element_size() for t in state.values())
