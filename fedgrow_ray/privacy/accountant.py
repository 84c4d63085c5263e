"""The privacy spent, by Google's dp-accounting library (its RDP accountant); no formula here.

What is accounted: participant-level DP of the shared state the server releases each round
(DP-FedAvg, McMahan et al., 2018). A participant's whole training data is the unit.

The simulator samples a fixed number of participants per round, uniformly without replacement
(devices.sample_participants), and the population (scenario `participants`) is public. The
accountant for that is sampling without replacement under the replace-one relation (Wang,
Balle and Kasiviswanathan, AISTATS 2019: dp-accounting's SampledWithoutReplacementDpEvent);
the Poisson accountant assumes each participant joins independently with probability q, which
is not what is done, and its add/remove relation would let the population size itself change.
Under replace-one, swapping one participant's update for another's moves the sum of clipped
updates by up to 2C, so noise of std sigma * C is a noise multiplier of sigma / 2 relative to
that sensitivity: the events below carry sigma / 2. With every participant in every round
(q = 1) the event is the plain Gaussian mechanism composed over rounds.

Each round is one event with that round's sample size and its effective noise multiplier (with
distributed noise, the noise actually in the sum depends on how many contributions arrived);
the history is part of the driver's checkpoint, so a resumed run spends exactly the same.

Local noise (privacy.dp.noise: local) protects each update against the server itself: the
participant's releases are Gaussian mechanisms with no amplification by sampling (the server
knows who it asked), composed over the rounds it took part in; the worst participant counts.
"""

from __future__ import annotations

import functools
from collections import Counter

import dp_accounting
from dp_accounting import rdp

REPLACE_ONE = dp_accounting.NeighboringRelation.REPLACE_ONE


def _event(population: int, sample_size: int, noise_multiplier: float):
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier / 2)  # replace-one: sensitivity 2C
    if sample_size >= population:
        return gaussian
    return dp_accounting.SampledWithoutReplacementDpEvent(population, sample_size, gaussian)


def central_epsilon(history: list[tuple[int, float]], population: int, delta: float) -> float:
    """Epsilon at `delta` after the rounds in `history`, each (sample size, noise multiplier
    sigma, std of the noise in the sum / C). Rounds of the same event are composed together
    (the accountant's cost is per distinct event, not per round)."""
    events = Counter((int(size), float(sigma)) for size, sigma in history if size > 0)
    return _epsilon(tuple(sorted(events.items())), population, delta)


@functools.lru_cache(maxsize=256)
def _epsilon(events: tuple, population: int, delta: float) -> float:
    accountant = rdp.RdpAccountant(neighboring_relation=REPLACE_ONE)
    for (sample_size, sigma), count in events:
        accountant.compose(_event(population, sample_size, sigma), count)
    return float(accountant.get_epsilon(delta))


def local_epsilon(rounds_taken_part: int, sigma: float, delta: float) -> float:
    """Epsilon at `delta` of one participant's own updates, each with noise of std sigma * C,
    over the rounds it took part in."""
    accountant = rdp.RdpAccountant(neighboring_relation=REPLACE_ONE)
    if rounds_taken_part:
        accountant.compose(dp_accounting.GaussianDpEvent(sigma / 2), rounds_taken_part)
    return float(accountant.get_epsilon(delta))


def noise_for_epsilon(target_epsilon: float, delta: float, rounds: int, population: int,
                      sample_size: int, local: bool = False) -> float:
    """The smallest sigma that spends at most `target_epsilon` at `delta` over `rounds` rounds
    of `sample_size` of `population` (dp-accounting's calibrate_dp_mechanism: bisection on
    its own accountant); with `local`, a participant's own releases over every round."""
    def event(sigma):
        if local:
            return dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(sigma / 2), rounds)
        return dp_accounting.SelfComposedDpEvent(_event(population, sample_size, sigma), rounds)

    return float(dp_accounting.calibrate_dp_mechanism(
        lambda: rdp.RdpAccountant(neighboring_relation=REPLACE_ONE), event, target_epsilon, delta,
        dp_accounting.mechanism_calibration.LowerEndpointAndGuess(1e-3, 1.0), tol=1e-4))
