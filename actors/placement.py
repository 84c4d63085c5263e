"""Where a run's DriverActor and ParticipantActors are scheduled: the one thing that differs
between a run alone and a run inside a sweep.

A run alone (`ClusterPlacement`) takes the cluster as it finds it: the driver on the node
launch.py runs on (so the run folder it writes is the one launch.py shows), the hosts spread over
the nodes (`hosts.placement: spread`) or packed (`pack`) in a placement group it reserves, as many
as the nodes hold (each node counted on its own) unless `hosts.actors` says. A run inside a sweep (`TrialPlacement`) takes the
placement group Ray Tune reserved for its trial (`trial_bundles`): the driver beside the trial's
own process, host i in bundle i, so concurrent runs never wait on each other's CPUs. Everything
else (DriverActor, RayExecutor, the rounds) is the same code for both.
"""

from __future__ import annotations

import math

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import (NodeAffinitySchedulingStrategy,
                                            PlacementGroupSchedulingStrategy)

def alive_nodes() -> list[dict]:
    """Each alive node of the cluster: {"id", "resources"} (its totals, as Ray counts them)."""
    return [{"id": n["NodeID"], "resources": n["Resources"]} for n in ray.nodes() if n["Alive"]]


def node_capacity(options: dict, resources: dict) -> int:
    """How many hosts with Ray `options` (host_resources) one node's `resources` hold: the
    smallest of its CPU, GPU and memory quotas."""
    capacity = math.inf
    for resource, need in (("CPU", options["num_cpus"]), ("GPU", options["num_gpus"]),
                           ("memory", options.get("memory", 0))):
        if need:
            capacity = min(capacity, math.floor(resources.get(resource, 0) / need + 1e-9))
    return 0 if capacity == math.inf else int(capacity)


def pool_size(scenario: dict, nodes: list[dict]) -> int:
    """hosts.actors, or as many hosts as the nodes hold, each node counted on its own (at most
    one per participant, at least one)."""
    hosts = scenario["hosts"]
    if hosts["actors"] is not None:
        return min(hosts["actors"], scenario["participants"])
    gpus = sum(n["resources"].get("GPU", 0) for n in nodes)
    options = host_resources(scenario, gpus)
    return max(1, min(scenario["participants"], sum(node_capacity(options, n["resources"]) for n in nodes)))


def describe_nodes(options: dict, nodes: list[dict]) -> str:
    """Per node: what it has and how many hosts that holds (the numbers of a pool that does
    not fit)."""
    parts = []
    for node in nodes:
        r = node["resources"]
        parts.append(f"node {node['id'][:8]}: {r.get('CPU', 0):g} CPU, {r.get('GPU', 0):g} GPU, "
                     f"{r.get('memory', 0) / 2**30:.1f} GiB -> {node_capacity(options, r)} hosts")
    return "; ".join(parts) or "no node alive"


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
    """A run alone: the driver on `driver_node`, the hosts in a placement group of one bundle
    per host (hosts.placement: spread -> SPREAD, pack -> PACK), reserved before any host starts,
    so an autoscaling cluster grows to fit it and a pool that cannot fit fails with the
    per-node numbers instead of hanging. The group is removed with `release` at the end."""

    def __init__(self, driver_node: str):
        self.driver_node = driver_node
        self.group, self.options, self.size = None, None, 0

    @classmethod
    def here(cls) -> "ClusterPlacement":
        return cls(ray.get_runtime_context().get_node_id())

    def driver_options(self) -> dict:
        return {"scheduling_strategy": NodeAffinitySchedulingStrategy(node_id=self.driver_node, soft=False)}

    def hosts(self, scenario: dict, log) -> list[dict]:
        """Ray options of each host, in the group `reserve` made (reserving it if not yet)."""
        if self.group is None:
            self.reserve(scenario, log)
        return [{**self.options, "scheduling_strategy": PlacementGroupSchedulingStrategy(
                    placement_group=self.group, placement_group_bundle_index=i,
                    placement_group_capture_child_tasks=False)} for i in range(self.size)]

    def reserve(self, scenario: dict, log) -> None:
        """The hosts' placement group, reserved by the process that follows the run (run_on_ray),
        which removes it at the end even when the driver actor dies: a group lives as long as
        the Ray job that made it, not the actor."""
        from .cluster import check_resources  # launch.py ran it already, before the run folder

        nodes = alive_nodes()
        options = host_resources(scenario, sum(n["resources"].get("GPU", 0) for n in nodes), log)
        if scenario["hosts"]["autoscaling"]:  # nodes may still come: the reservation waits for them
            size = pool_size(scenario, nodes)
        else:
            size = check_resources(scenario, nodes)
        bundle = {"CPU": options["num_cpus"], "GPU": options["num_gpus"], "memory": options.get("memory", 0)}
        bundle = {k: v for k, v in bundle.items() if v}
        strategy = "SPREAD" if scenario["hosts"]["placement"] == "spread" else "PACK"
        self.group = placement_group([dict(bundle) for _ in range(size)], strategy=strategy)
        timeout = scenario["hosts"]["reserve_timeout_s"]
        if not self.group.wait(timeout_seconds=timeout):
            self.release()
            raise RuntimeError(
                f"could not reserve {size} participant hosts of {bundle} ({strategy}) within "
                f"hosts.reserve_timeout_s={timeout:g} s; the nodes hold: {describe_nodes(options, alive_nodes())} "
                f"(available now: {ray.available_resources()}). Lower hosts.actors, hosts.num_cpus or "
                f"hosts.memory_mb, or free the cluster")
        log(f"reserved {size} participant hosts ({strategy}): {describe_nodes(options, nodes)}")
        self.options, self.size = options, size

    def release(self) -> None:
        """Hand the reservation back (its actors end with it)."""
        if self.group is not None:
            remove_placement_group(self.group)
            self.group = None


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

    def reserve(self, scenario: dict, log) -> None:
        """Tune reserved the trial's group."""

    def release(self) -> None:
        """Tune removes the trial's group."""

    def hosts(self, scenario: dict, log) -> list[dict]:
        options = host_resources(scenario, self.cluster_gpus, log)
        return [{**options, "scheduling_strategy": self._in_bundle(i)}
                for i in range(len(self.group.bundle_specs))]
