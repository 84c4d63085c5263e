"""Where a run's DriverActor and ParticipantActors are scheduled: the one thing that differs
between a run alone and a run inside a sweep.

A run alone (`ClusterPlacement`) takes the cluster as it finds it: the driver on the node
launch.py runs on (so the run folder it writes is the one launch.py shows), the hosts spread over
the nodes (`hosts.placement: spread`) or left to Ray's default scheduling (`pack`), as many as the
cluster's CPUs hold unless `hosts.actors` says. A run inside a sweep (`TrialPlacement`) takes the
placement group Ray Tune reserved for its trial (`trial_bundles`): the driver beside the trial's
own process, host i in bundle i, so concurrent runs never wait on each other's CPUs. Everything
else (DriverActor, RayExecutor, the rounds) is the same code for both.
"""

from __future__ import annotations

import math

import ray
from ray.util.scheduling_strategies import (NodeAffinitySchedulingStrategy,
                                            PlacementGroupSchedulingStrategy)

def pool_size(scenario: dict, num_cpus_available: float) -> int:
    """hosts.actors, or as many actors as the cluster's CPUs hold (at most one per participant)."""
    hosts = scenario["hosts"]
    if hosts["actors"] is not None:
        return min(hosts["actors"], scenario["participants"])
    return max(1, min(scenario["participants"], math.floor(num_cpus_available / hosts["num_cpus"])))


def host_resources(scenario: dict, cluster_gpus: float, log=None) -> dict:
    """Ray options of one participant host: its CPUs, GPUs (none where the cluster has none),
    memory, and restarts."""
    hosts = scenario["hosts"]
    num_gpus = hosts["num_gpus"]
    if num_gpus and not cluster_gpus:
        if log:
            log(f"hosts.num_gpus={num_gpus} but the cluster has no GPU: participants run on CPU "
                f"(num_gpus set to 0)")
        num_gpus = 0
    # Ray restarts a dead host without limit; the executor re-sends the lost calls itself
    # (bounded per participant: actors/pool.py MAX_RETRIES), naming the state versions they start from.
    options = {"num_cpus": hosts["num_cpus"], "num_gpus": num_gpus,
               "max_restarts": -1, "max_task_retries": 0}
    if hosts["memory_mb"]:
        options["memory"] = int(hosts["memory_mb"] * 2**20)
    return options


class ClusterPlacement:
    """A run alone: the driver on `driver_node`, the hosts over the whole cluster."""

    def __init__(self, driver_node: str):
        self.driver_node = driver_node

    @classmethod
    def here(cls) -> "ClusterPlacement":
        return cls(ray.get_runtime_context().get_node_id())

    def driver_options(self) -> dict:
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=self.driver_node, soft=False)}

    def hosts(self, scenario: dict, log) -> list[dict]:
        from .cluster import check_resources  # launch.py ran it already, before the run folder

        resources = ray.cluster_resources()
        options = host_resources(scenario, resources.get("GPU", 0), log)
        size = check_resources(scenario, resources)
        # spread: hosts on as many nodes as possible; pack: Ray's default, filling nodes
        strategy = "SPREAD" if scenario["hosts"]["placement"] == "spread" else "DEFAULT"
        return [{**options, "scheduling_strategy": strategy} for _ in range(size)]


def sweep_hosts(scenario: dict) -> int:
    """Participant hosts of one run in a sweep: hosts.actors, else one, so that N runs share N
    CPUs side by side instead of each claiming the whole cluster."""
    return min(scenario["hosts"]["actors"] or 1, scenario["participants"])


def trial_bundles(scenario: dict, cluster_gpus: float) -> tuple[list[dict], str]:
    """The placement group of a run's trial: (bundles, strategy). The first bundle is the trial's
    own process, where the driver also runs; both need no CPU of their own (the driver waits on
    its hosts), so that bundle is empty and a run costs exactly its hosts. Then one bundle per
    host, spread over nodes or packed as hosts.placement says."""
    options = host_resources(scenario, cluster_gpus)
    bundle = {"CPU": options["num_cpus"], "GPU": options["num_gpus"], "memory": options.get("memory", 0)}
    bundle = {k: v for k, v in bundle.items() if v}
    strategy = "SPREAD" if scenario["hosts"]["placement"] == "spread" else "PACK"
    return [{}] + [dict(bundle) for _ in range(sweep_hosts(scenario))], strategy


class TrialPlacement:
    """A run inside a sweep: everything in the trial's placement group. Tune leaves an empty first
    bundle out of the group and runs the trial's process at bundle 0 without resources; the
    driver goes there too, and host i takes bundle i."""

    def __init__(self, group, cluster_gpus: float):
        self.group, self.cluster_gpus = group, cluster_gpus

    def _in_bundle(self, index: int):
        return PlacementGroupSchedulingStrategy(placement_group=self.group, placement_group_bundle_index=index,
                                                placement_group_capture_child_tasks=False)

    def driver_options(self) -> dict:
        return {"scheduling_strategy": self._in_bundle(0)}

    def hosts(self, scenario: dict, log) -> list[dict]:
        options = host_resources(scenario, self.cluster_gpus, log)
        return [{**options, "scheduling_strategy": self._in_bundle(i)}
                for i in range(len(self.group.bundle_specs))]
