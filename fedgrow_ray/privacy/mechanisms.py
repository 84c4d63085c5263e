"""Where the privacy mechanisms are applied to a method that shares state (fedgrow's
Global-LiGO, fedavg_scratch's model):

- `ParticipantPrivacy.leaving`, on the participant's host as its update leaves it: the update
  delta clipped to C, local or distributed noise added, and with secure aggregation masked, so
  the host returns only a masked integer vector per tensor.
- `ServerPrivacy`, on the driver: checks that what arrives is masked, unmasks the sum (with
  dropout recovery), adds central noise, takes the fixed-denominator mean, counts the
  protocol's bytes, and keeps the accountant's history (part of the checkpoint).

Without privacy.dp and privacy.secure_aggregation neither does anything. Every random draw
derives from (seed, participant, method stream, round, purpose), so a run is deterministic and
resumes exactly.
"""

from __future__ import annotations

import functools
import math
import time

import torch

from ..training import derive_seed
from . import dp as dpf
from . import secure_aggregation as sa

# .accountant (dp-accounting, with scipy: half a second) is imported by the runs that use DP only.

MASKED_DTYPE = torch.int64  # ring elements travel as int64 tensors (counted at 4 bytes each)


def expected_count(scenario: dict) -> int:
    """The participants a round is meant to keep (the DP mean's fixed denominator)."""
    n, sampling = scenario["participants"], scenario["sampling"]
    if sampling["count"] is not None:
        return int(sampling["count"])
    if sampling["fraction"] is not None:
        return max(1, math.floor(sampling["fraction"] * n + 0.5))
    return n


@functools.lru_cache(maxsize=16)
def _calibrated(target: float, delta: float, rounds: int, population: int, sample: int, local: bool) -> float:
    from .accountant import noise_for_epsilon

    return noise_for_epsilon(target, delta, rounds, population, sample, local)


def noise_multiplier(scenario: dict) -> float | None:
    """sigma: given, or computed for privacy.dp.target_epsilon over `rounds` rounds of the
    expected sample (None without DP)."""
    dp = scenario["privacy"]["dp"]
    if dp is None:
        return None
    if dp["noise_multiplier"] is not None:
        return dp["noise_multiplier"]
    return _calibrated(dp["target_epsilon"], dp["delta"], scenario["rounds"], scenario["participants"],
                       expected_count(scenario), dp["noise"] == "local")


def active(scenario: dict) -> bool:
    privacy = scenario["privacy"]
    return privacy["dp"] is not None or privacy["secure_aggregation"] is not None


class ParticipantPrivacy:
    """The participant side (see the module notes)."""

    def __init__(self, scenario: dict):
        self.scenario = scenario
        self.dp = scenario["privacy"]["dp"]
        self.secagg = scenario["privacy"]["secure_aggregation"]
        self.sigma = noise_multiplier(scenario)

    def leaving(self, pid: int, stream: str, round_number: int, update: dict, received: dict,
                cohort: list[int] | None) -> dict:
        """What participant `pid` sends for its trained `update` of the `received` state."""
        if self.dp is None and self.secagg is None:
            return update
        delta = dpf.delta_of(update, {name: received[name] for name in update})
        seed = self.scenario["seed"]
        if self.dp is not None:
            delta, _ = dpf.clip(delta, self.dp["clip"])
            std = {"central": 0.0, "local": self.sigma * self.dp["clip"],
                   "distributed": self.sigma * self.dp["clip"] / math.sqrt(expected_count(self.scenario))
                   }[self.dp["noise"]]
            if std:
                generator = torch.Generator().manual_seed(derive_seed(seed, pid, stream, round_number, "dp-noise"))
                delta = dpf.add(delta, dpf.gaussian(delta, std, generator))
        if self.secagg is None:  # the full new values, as without privacy
            return {name: (received[name].to(torch.float64) + d).to(received[name].dtype)
                    for name, d in delta.items()}
        if cohort is None or pid not in cohort:
            raise ValueError(f"secure aggregation: participant {pid} was given no cohort containing it")
        masked = sa.mask(sa.flatten(delta), pid, cohort, seed, round_number, stream,
                         self.secagg["fractional_bits"])
        return sa.unflatten(masked, sa.layout(delta))


class ServerPrivacy:
    """The driver side for one method (see the module notes). `history` (per aggregated round:
    sample size, effective noise multiplier) and `taken_part` (rounds each participant sent
    in) are what the accountant needs; both are in the checkpoint (snapshot / restore)."""

    def __init__(self, scenario: dict, stream: str):
        self.scenario, self.stream = scenario, stream
        self.dp = scenario["privacy"]["dp"]
        self.secagg = scenario["privacy"]["secure_aggregation"]
        self.sigma = noise_multiplier(scenario)
        self.expected = expected_count(scenario)
        self.history: list[tuple[int, float]] = []
        self.taken_part: dict[int, int] = {}

    def snapshot(self) -> dict:
        return {"history": [list(h) for h in self.history], "taken_part": dict(self.taken_part)}

    def restore(self, saved: dict) -> None:
        self.history = [tuple(h) for h in saved["history"]]
        self.taken_part = {int(k): v for k, v in saved["taken_part"].items()}

    @property
    def masked(self) -> bool:
        return self.secagg is not None

    def check_arrival(self, update: dict) -> None:
        """Guard where updates arrive: under secure aggregation nothing but masked ring
        elements may reach the driver."""
        if self.masked and any(t.dtype != MASKED_DTYPE or t.is_floating_point() for t in update.values()):
            raise RuntimeError("secure aggregation: an unmasked update reached the driver")

    def upload_bytes(self, update: dict) -> int:
        """Bytes of one participant's upload: masked inputs at the ring's width."""
        if self.masked:
            return sum(t.numel() for t in update.values()) * sa.RING_BITS // 8
        return sum(t.numel() * t.element_size() for t in update.values())

    def aggregate(self, received: dict, arrivals: list[tuple[int, dict]], round_number: int,
                  sample_size: int, cohort: list[int], released: list[int]) -> tuple[dict | None, dict]:
        """The new shared state from `arrivals` ([(participant, update)], in id order), and
        what the round cost: {"bytes_up", "bytes_down" (the protocol's extra messages),
        "secagg_s" (wall time of unmasking), "problem" (why nothing was aggregated)}.
        `released` are the participants whose update left them (for local accounting)."""
        for pid in released:
            self.taken_part[pid] = self.taken_part.get(pid, 0) + 1
        extra = {"bytes_up": 0, "bytes_down": 0, "secagg_s": 0.0, "problem": None}
        names = sorted(received)
        if self.masked:
            start = time.perf_counter()
            up, down = sa.protocol_bytes(len(cohort), len(arrivals))
            extra["bytes_up"], extra["bytes_down"] = up, down
            threshold = sa.threshold_of(len(cohort), self.secagg["threshold"])
            try:
                total, _ = sa.unmask({pid: sa.flatten(u) for pid, u in arrivals}, cohort,
                                     self.scenario["seed"], round_number, self.stream, threshold)
            except sa.TooFewSurvivors as err:
                extra["problem"] = f"secure aggregation failed: {err}"
                extra["secagg_s"] = time.perf_counter() - start
                return None, extra
            delta_sum = sa.unflatten(sa.decode(total, self.secagg["fractional_bits"]),
                                     sa.layout(received))
            extra["secagg_s"] = time.perf_counter() - start
        else:
            delta_sum = {name: torch.zeros(received[name].shape, dtype=torch.float64) for name in names}
            for _, update in arrivals:
                delta = dpf.delta_of(update, received)
                if self.dp is not None and self.dp["noise"] == "central":
                    delta, _ = dpf.clip(delta, self.dp["clip"])  # enforced here too (idempotent)
                delta_sum = dpf.add(delta_sum, delta)
        if self.dp is None:  # secure aggregation alone: the plain mean of the arrivals
            return dpf.apply_mean(received, delta_sum, None, len(arrivals)), extra
        noise = None
        effective = self.sigma
        if self.dp["noise"] == "central":
            generator = torch.Generator().manual_seed(
                derive_seed(self.scenario["seed"], self.stream, round_number, "dp-central-noise"))
            noise = dpf.gaussian(delta_sum, self.sigma * self.dp["clip"], generator)
        elif self.dp["noise"] == "distributed":  # the noise in the sum is the arrivals' shares
            effective = self.sigma * math.sqrt(len(arrivals) / self.expected)
        else:  # local: the sum of the arrivals' independent noises
            effective = self.sigma * math.sqrt(len(arrivals))
        self.history.append((sample_size, effective))
        return dpf.apply_mean(received, delta_sum, noise, self.expected), extra

    def epsilon(self) -> float | None:
        """Epsilon spent so far (None without DP): the central guarantee of the released
        states, or with local noise the worst participant's guarantee against the server."""
        if self.dp is None:
            return None
        from .accountant import central_epsilon, local_epsilon

        if self.dp["noise"] == "local":
            return local_epsilon(max(self.taken_part.values(), default=0), self.sigma, self.dp["delta"])
        return central_epsilon(self.history, self.scenario["participants"], self.dp["delta"])
