"""Splitting a training set among participants (iid, Dirichlet label skew, quantity skew,
pathological shards) and giving each participant a test split that follows its own label mix.

Every partitioner takes the training labels, the number of participants and a numpy Generator,
and returns one sorted index array per participant; every sample is assigned exactly once.
"""

from __future__ import annotations

import numpy as np

DIRICHLET_TRIES = 100


def iid(labels, num_participants, rng):
    """Equal-sized random parts (sizes differ by at most one)."""
    _check_enough(labels, num_participants, f"iid: {num_participants} participants")
    return _sorted(np.array_split(rng.permutation(len(labels)), num_participants))


def dirichlet(labels, num_participants, rng, alpha, min_samples):
    """Label skew as in Flower's DirichletPartitioner: each class is split among participants in
    proportions drawn from Dirichlet(alpha); small alpha gives few classes per participant.
    Draws again until every participant has at least `min_samples` samples."""
    _check_enough(labels, num_participants * min_samples,
                  f"dirichlet: {num_participants} participants x min_samples {min_samples}")
    by_class = [np.flatnonzero(labels == k) for k in np.unique(labels)]
    for _ in range(DIRICHLET_TRIES):
        parts = [[] for _ in range(num_participants)]
        for members in by_class:
            members = rng.permutation(members)
            cuts = (np.cumsum(rng.dirichlet(np.full(num_participants, alpha)))[:-1] * len(members))
            for part, piece in zip(parts, np.split(members, cuts.astype(int))):
                part.append(piece)
        parts = [np.concatenate(p) for p in parts]
        if min(len(p) for p in parts) >= min_samples:
            return _sorted(parts)
    raise ValueError(
        f"data.partition: Dirichlet(alpha={alpha}) gave some participant fewer than "
        f"min_samples={min_samples} samples in {DIRICHLET_TRIES} draws ({len(labels)} samples, "
        f"{num_participants} participants); raise alpha, lower min_samples, use more data or "
        f"fewer participants")


def quantity_skew(labels, num_participants, rng, sigma, min_samples):
    """Random labels, unequal sizes: `min_samples` each, the rest shared in proportions drawn from
    a lognormal(0, sigma) (sigma=0: equal shares)."""
    _check_enough(labels, num_participants * min_samples,
                  f"quantity_skew: {num_participants} participants x min_samples {min_samples}")
    weights = rng.lognormal(0.0, sigma, num_participants)
    sizes = min_samples + rng.multinomial(len(labels) - num_participants * min_samples,
                                          weights / weights.sum())
    return _sorted(np.split(rng.permutation(len(labels)), np.cumsum(sizes)[:-1]))


def shards(labels, num_participants, rng, shards_per_participant):
    """Pathological non-IID (McMahan et al.): sort by label, cut into equal shards, give each
    participant `shards_per_participant` random shards, hence about that many classes."""
    count = num_participants * shards_per_participant
    _check_enough(labels, count, f"shards: {num_participants} participants x {shards_per_participant} shards")
    shuffled = rng.permutation(len(labels))
    by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
    pieces = np.array_split(by_label, count)
    owners = rng.permutation(count).reshape(num_participants, shards_per_participant)
    return _sorted([np.concatenate([pieces[j] for j in row]) for row in owners])


PARTITIONERS = {"iid": iid, "dirichlet": dirichlet, "quantity_skew": quantity_skew, "shards": shards}


def partition(labels, num_participants, rng, scheme: str, **params) -> list[np.ndarray]:
    """One sorted index array per participant, by the named scheme."""
    return PARTITIONERS[scheme](np.asarray(labels), num_participants, rng, **params)


def matched_test(train_labels, test_by_class, size, rng) -> np.ndarray:
    """`size` test indices whose label mix follows `train_labels` (largest-remainder quotas per
    class), drawn without replacement where the class has enough test samples.
    `test_by_class[k]` holds the test indices of class k."""
    available = np.array([len(pool) > 0 for pool in test_by_class])
    weights = np.bincount(train_labels, minlength=len(test_by_class)) * available
    if weights.sum() == 0:  # its classes are all missing from the test set: use the others
        weights = available.astype(float)
    quotas = _quotas(weights, size)
    picks = [rng.choice(pool, q, replace=q > len(pool)) for pool, q in zip(test_by_class, quotas) if q]
    return np.sort(np.concatenate(picks))


def _quotas(weights, total):
    exact = weights / weights.sum() * total
    quotas = np.floor(exact).astype(int)
    quotas[np.argsort(quotas - exact, kind="stable")[:total - quotas.sum()]] += 1
    return quotas


def _check_enough(labels, needed, why):
    if len(labels) < needed:
        raise ValueError(f"data.partition: {why} need at least {needed} training samples; the "
                         f"training set has {len(labels)}")


def _sorted(parts):
    # Sorted indices read the memory-mapped tables front to back.
    return [np.sort(p).astype(np.int64) for p in parts]
