"""Getting a Ray cluster for a run, and checking that the run fits it, before anything is
written: start a local Ray on the loopback interface or join the one at --address (failing in
seconds, in one line, when nothing answers there), then compare the participant hosts the
scenario asks for with the cluster's resources.

Ray's own join retries for minutes against an address where no cluster listens, and a
scenario asking for more CPUs than the cluster has would wait forever for its actors; both
are bad input, reported with exit status 2 like any other.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from pathlib import Path

JOIN_TIMEOUT_S = 30.0   # joining a cluster that answers takes a few seconds
PROBE_TIMEOUT_S = 10.0  # the TCP connection to --address


class ClusterError(ValueError):
    """No usable Ray cluster, or the scenario does not fit it; the message is one line."""


def _on_loopback() -> None:
    """Keep a local Ray on the loopback interface (Ray otherwise binds the machine's address; it
    reads this when it is first imported)."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


def start_or_join(address: str | None, working_dir: Path):
    """A local Ray on 127.0.0.1 (address None), or the cluster at `address` (auto or
    HOST:PORT, checked first with `probe`), which gets `working_dir` as its runtime_env unless
    a Ray job already ships the code. A process already connected (a notebook, a test, a job's
    driver) keeps its Ray. Returns (the ray module, whether this call started or joined it: then
    the caller shuts it down); raises ClusterError in one line when no cluster answers (or
    exits with status 2 when joining hangs)."""
    if not address:
        _on_loopback()
    import json

    import ray

    if ray.is_initialized():
        return ray, False
    if not address:  # a new local instance, never a cluster someone else started on this machine
        ray.init(address="local", include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        return ray, True
    endpoint = None if address == "auto" else address.split("://", 1)[-1]
    runtime_env = {"working_dir": str(working_dir),
                   "excludes": ["runs/", ".venv/", ".git/", "*.pyc", "__pycache__/"]}
    # Run as a Ray job that ships the code itself (ray job submit --working-dir, a RayJob's
    # runtimeEnvYAML): its workers already get that working_dir, and a second one is refused.
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    if (job.get("runtime_env") or {}).get("working_dir"):
        runtime_env = None
    joined = threading.Event()

    def give_up():  # ray.init cannot be interrupted; nothing has been written yet
        if not joined.wait(JOIN_TIMEOUT_S):
            print(f"error: --address {address}: no Ray cluster answered within {JOIN_TIMEOUT_S:.0f} s"
                  + (f" (a TCP connection to {endpoint} succeeded, but it is not a Ray head's GCS port; "
                     f"that is 6379 by default, not the dashboard's 8265)" if endpoint else ""),
                  file=sys.stderr, flush=True)
            os._exit(2)

    threading.Thread(target=give_up, daemon=True).start()
    try:
        ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ClusterError(f"--address {address}: could not join a Ray cluster there "
                           f"({type(err).__name__}: {(str(err).splitlines() or [''])[0]})") from None
    finally:
        joined.set()
    return ray, True


def start_while_importing(modules, working_dir: Path):
    """start_or_join(None, working_dir), on this thread (Ray sets its signal handlers on the
    main thread only), while a second thread imports `modules`: on 2 CPUs each takes seconds,
    mostly in other processes (Ray's) or in one core's Python (the imports), so side by side
    they take little more than the longer. An import that fails there fails again, with its
    traceback, where the code imports it. Returns what start_or_join returns."""
    import importlib

    _on_loopback()
    import ray  # first, here: the threads then never import the same module at once

    def load():
        for name in modules:
            try:
                importlib.import_module(name)
            except BaseException:  # noqa: BLE001 - raised again by the import that needs it
                pass

    loader = threading.Thread(target=load, name="fedgrow-imports", daemon=True)
    loader.start()
    try:
        return start_or_join(None, working_dir)
    finally:
        loader.join()


def probe(address: str) -> None:
    """For HOST:PORT (or ray://HOST:PORT): a TCP connection, so that an address where nothing
    listens fails at once, before any work; `auto` is left to Ray, which finds the address
    itself (or says at once that there is none)."""
    if address == "auto":
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--address {address!r} is not allowed; expected auto or HOST:PORT "
                           f"(the head's GCS address, e.g. 127.0.0.1:6379)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S).close()
    except OSError as err:
        if isinstance(err, socket.timeout):
            reason = f"no answer within {PROBE_TIMEOUT_S:.0f} s"
        else:
            reason = err.strerror or type(err).__name__
        raise ClusterError(f"--address {address}: no Ray cluster there (tried a TCP connection to "
                           f"{host}:{port}: {reason}); start one with `ray start --head` or give "
                           f"the head's address") from None


def check_resources(scenario: dict, nodes: list[dict]) -> int:
    """Before the run folder is created: the participant hosts the scenario asks for (hosts.*)
    fit the cluster's nodes (placement.alive_nodes; each node counted on its own: two nodes with
    1.5 CPUs hold two 1-CPU hosts, not three), and every faults.kill_host names one of them.
    Returns the number of hosts; raises ClusterError naming the key, with the per-node numbers."""
    from .placement import describe_nodes, host_resources, node_capacity, pool_size

    hosts = scenario["hosts"]
    options = host_resources(scenario, sum(n["resources"].get("GPU", 0) for n in nodes))
    size = pool_size(scenario, nodes)
    how = f"hosts.actors={hosts['actors']}" if hosts["actors"] is not None else \
        f"one host per hosts.num_cpus={hosts['num_cpus']:g} CPUs"
    if size > sum(node_capacity(options, n["resources"]) for n in nodes) and not hosts["autoscaling"]:
        # Name the quota that binds: the resource whose per-node quotas hold the fewest hosts.
        held = {}
        for key, resource, per_actor, unit, name in (
                ("num_cpus", "CPU", options["num_cpus"], 1, "CPUs"),
                ("num_gpus", "GPU", options["num_gpus"], 1, "GPUs"),
                ("memory_mb", "memory", options.get("memory", 0), 2**20, "MiB of memory")):
            if per_actor:
                alone = {"num_cpus": 0, "num_gpus": 0}
                alone[resource_key(resource)] = per_actor
                held[key] = (sum(node_capacity(alone, n["resources"]) for n in nodes), per_actor / unit, name)
        key = min(held, key=lambda k: held[k][0])
        fit, per_actor, name = held[key]
        raise ClusterError(
            f"scenario key 'hosts.{key}': {per_actor:g} per host x {size} participant hosts ({how}) is "
            f"{size * per_actor:g} {name}, more than the nodes hold ({fit} such hosts: "
            f"{describe_nodes(options, nodes)}); lower hosts.{key} or hosts.actors")
    for i, fault in enumerate(scenario["faults"]["kill_host"]):
        if fault["host"] >= size:
            raise ClusterError(f"scenario key 'faults.kill_host[{i}].host': {fault['host']} does not "
                               f"exist; this cluster runs {size} participant hosts ({how}), numbered "
                               f"0 to {size - 1}")
    return size


def resource_key(resource: str) -> str:
    """The host_resources option that asks for a Ray resource."""
    return {"CPU": "num_cpus", "GPU": "num_gpus", "memory": "memory"}[resource]
