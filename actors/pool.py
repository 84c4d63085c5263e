"""The pool of ParticipantActors and the Ray executor the round loop runs participants on.

Participants stick to one actor for the whole run (assigned round-robin by id), so their
private state never moves. The round's shared state is put in the object store once and its
reference passed to every call; ray.wait with the round timeout is a wall-clock safety net
only (simulated time decides who is late, in fedgrow_ray.rounds).
"""

from __future__ import annotations

import math
import time

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from .participant import ParticipantActor


def pool_size(scenario: dict, num_cpus_available: float) -> int:
    """hosts.actors, or as many actors as the cluster's CPUs hold (at most one per participant)."""
    hosts = scenario["hosts"]
    if hosts["actors"] is not None:
        return min(hosts["actors"], scenario["participants"])
    return max(1, min(scenario["participants"], math.floor(num_cpus_available / hosts["num_cpus"])))


def actor_options(scenario: dict, cluster_gpus: float, log) -> dict:
    hosts = scenario["hosts"]
    num_gpus = hosts["num_gpus"]
    if num_gpus and not cluster_gpus:
        log(f"hosts.num_gpus={num_gpus} but the cluster has no GPU: participants run on CPU "
            f"(num_gpus set to 0)")
        num_gpus = 0
    options = {"num_cpus": hosts["num_cpus"], "num_gpus": num_gpus}
    if hosts["memory_mb"]:
        options["memory"] = int(hosts["memory_mb"] * 2**20)
    return options


class RayExecutor:
    def __init__(self, scenario: dict, cache_dir: str, log, start_timeout_s: float = 300.0):
        resources = ray.cluster_resources()
        self.scenario, self.log = scenario, log
        self.timeout_s = scenario["hosts"]["round_timeout_s"]
        options = actor_options(scenario, resources.get("GPU", 0), log)
        size = pool_size(scenario, resources.get("CPU", 1))
        self.actors = [ParticipantActor.options(**options).remote(
                           scenario, cache_dir, i, options["num_gpus"] > 0) for i in range(size)]
        try:
            self.info = ray.get([a.info.remote() for a in self.actors], timeout=start_timeout_s)
        except GetTimeoutError:
            raise RuntimeError(
                f"could not start {size} participant hosts ({options}) within {start_timeout_s:.0f} s; "
                f"the cluster offers {resources}. Lower hosts.actors, hosts.num_cpus or "
                f"hosts.memory_mb.") from None
        log(f"{size} participant hosts started: " + ", ".join(
            f"#{i['index']} node {i['node_id'][:8]} {i['device']} threads={i['threads']}" for i in self.info))
        self.used_nodes: set[str] = set()

    @property
    def nodes_used(self) -> int:
        return len(self.used_nodes)

    def host_of(self, pid: int) -> int:
        return pid % len(self.actors)

    def _gather(self, calls: dict, on_done=None) -> tuple[list[dict], dict[int, str]]:
        """Wait for one call per participant; a dead host or a timeout is a failure, counted."""
        results, failures = [], {}
        pending = list(calls)
        deadline = time.monotonic() + self.timeout_s
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not done:
                for ref in pending:
                    failures[calls[ref]] = f"no answer within hosts.round_timeout_s={self.timeout_s:.0f} s"
                break
            ref = done[0]
            pid = calls[ref]
            try:
                results += ray.get(ref)
                self.used_nodes.add(self.info[self.host_of(pid)]["node_id"])
            except RayActorError as err:
                failures[pid] = f"host #{self.host_of(pid)} died: {err}"
            except RayTaskError as err:
                failures[pid] = f"error on host #{self.host_of(pid)}: {err.cause!r}"
            if on_done:
                on_done(len(results))
        return results, failures

    def train(self, method, round_number, pids, shared, sleep_s=None, on_done=None):
        shared_ref = [ray.put(shared)] if shared is not None else [None]
        calls = {self.actors[self.host_of(pid)].train.remote(
                     method, round_number, [pid], shared_ref, sleep_s): pid for pid in pids}
        return self._gather(calls, on_done)

    def evaluate(self, method, pids, shared, final):
        shared_ref = [ray.put(shared)] if shared is not None else [None]
        calls = {self.actors[self.host_of(pid)].evaluate.remote(method, [pid], shared_ref, final): pid
                 for pid in pids}
        return self._gather(calls)

    def release(self, method):
        ray.get([a.release.remote(method) for a in self.actors])
