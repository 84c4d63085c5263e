"""What happens to participants' updates between the participant and the sum, wherever the
sum is taken: the simulated faults of the way there (`faults.bad_update`, `faults.drop_upload`,
both drawn from the seed), validation (`Method.check`, with `server.max_update_norm`), and, for a
FedAvg-family method, the reduction on the host.

Two paths share this code. Per participant: every update travels to the driver, which screens
and aggregates them (robust aggregators, secure aggregation, DP and plugin aggregators need the
individual updates). On the hosts (`reduces_on_hosts`): each host screens the updates of the
participants it ran and keeps the accepted ones; per participant only metadata (samples, loss,
upload bytes, outcome) goes to the driver. Once the round's answers are in, the driver asks each
host for the weighted partial sum (`aggregation.weighted_partial_sum`, in participant order) of
the participants IT accepted, so it receives hosts x update size instead of participants x update
size, and a participant written off at the round's wall-clock timeout takes only its own work
with it, never the finished work of others on its host.
"""

from __future__ import annotations

import numpy as np

from .aggregation import weighted_partial_sum
from .metrics import state_bytes
from .training import derive_seed


def corrupt_update(update: dict, kind: str) -> dict:
    """A broken copy of an update: what validation must catch (faults.bad_update)."""
    update = {k: v.clone() for k, v in update.items()}
    name = sorted(update)[0]
    if kind in ("nan", "inf"):
        update[name].view(-1)[0] = float(kind)
    elif kind == "shape":
        update[name] = update[name].reshape(-1)[:-1].clone()
    elif kind == "name":
        update[name + ".renamed"] = update.pop(name)
    elif kind == "huge":
        update[name] = update[name] * 1e6
    return update


def reduces_on_hosts(method, scenario: dict, server_privacy) -> bool:
    """Whether a method's updates can be summed where they are made: it shares, its aggregate
    is the built-in sample-weighted mean (not overridden by a plugin method), no privacy
    mechanism needs the individual updates, and hosts.reduce is on."""
    from .methods.base import Method

    return (scenario["hosts"]["reduce"] and method.shares and server_privacy is None
            and scenario["server"]["aggregator"] == "fedavg"
            and type(method).aggregate is Method.aggregate)


class UpdateScreen:
    """The faults and checks one method's updates go through in one round; the same on a host
    and on the driver, since every draw derives from (seed, participant, stream, round)."""

    def __init__(self, scenario: dict, seed: int, method):
        self.scenario, self.seed, self.method = scenario, seed, method

    def corrupt(self, results: list[dict], round_number: int) -> None:
        """Fault injection: participants that send a broken update (faults.bad_update)."""
        for fault in self.scenario["faults"]["bad_update"]:
            if fault["round"] != round_number or fault["method"] not in (None, self.method.name):
                continue
            for result in results:
                if result["id"] == fault["participant"] and result["update"]:
                    result["update"] = corrupt_update(result["update"], fault["kind"])

    def lost(self, results: list[dict], round_number: int) -> list[dict]:
        """Fault injection: uploads lost on the way, each with probability faults.drop_upload."""
        p = self.scenario["faults"]["drop_upload"]
        if not p:
            return []
        draw = lambda pid: np.random.default_rng(  # noqa: E731
            derive_seed(self.seed, pid, self.method.stream, round_number, "drop-upload")).random()
        return [r for r in results if r["update"] is not None and draw(r["id"]) < p]

    def problem(self, update: dict, shared: dict) -> str | None:
        return self.method.check(update, shared, self.scenario["server"]["max_update_norm"])


def screen_on_host(results: list[dict], screen: UpdateScreen, shared: dict, round_number: int
                   ) -> tuple[list[dict], dict[int, tuple[dict, int]]]:
    """The host's side of one round for the participants it ran (`results` of
    ParticipantHost.train): each result without its update, plus `outcome` (accepted | rejected |
    lost), `reason` (for rejected), `upload_bytes` and `names` (the tensor names that left it);
    and the accepted updates with their sample counts, by participant, for `partial_sum`."""
    results = sorted(results, key=lambda r: r["id"])
    screen.corrupt(results, round_number)
    lost = {r["id"] for r in screen.lost(results, round_number)}
    accepted, answer = {}, []
    for result in results:
        update = result.pop("update")
        meta = {**result, "upload_bytes": state_bytes(update), "names": sorted(update or ())}
        if update is None:
            meta["outcome"] = None
        elif result["id"] in lost:
            meta["outcome"] = "lost"
        else:
            problem = screen.problem(update, shared)
            meta.update(outcome="rejected", reason=problem) if problem else meta.update(outcome="accepted")
            if not problem:
                accepted[result["id"]] = (update, result["samples"])
        answer.append(meta)
    return answer, accepted


def partial_sum(accepted: list[tuple[dict, int]]) -> dict | None:
    """The weighted partial sum of some accepted (update, samples), with their dtypes; None for
    none."""
    if not accepted:
        return None
    sums, total = weighted_partial_sum(accepted)
    return {"sums": sums, "samples": total,
            "dtypes": {name: tensor.dtype for name, tensor in accepted[0][0].items()}}
