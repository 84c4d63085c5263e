"""The pool of participant hosts: sized per node (the smallest of each node's CPU, GPU and memory
quotas), reserved with a placement group, and failing fast with the per-node numbers when it
cannot fit."""

import time

import pytest

from actors.cluster import ClusterError, check_resources
from actors.placement import ClusterPlacement, pool_size
from conftest import tiny

GIB = 2**30


def nodes(*resources):
    return [{"id": f"{i:08x}" + "0" * 48, "resources": r} for i, r in enumerate(resources)]


def test_each_node_is_counted_on_its_own():
    """Guards against sizing the pool from the cluster's totals: two nodes with 1.5 CPUs hold
    two 1-CPU hosts, not three (Ray would wait forever for the third)."""
    two = nodes({"CPU": 1.5, "memory": 8 * GIB}, {"CPU": 1.5, "memory": 8 * GIB})
    assert pool_size(tiny("hosts.actors=null", "participants=9"), two) == 2
    with pytest.raises(ClusterError) as caught:
        check_resources(tiny("hosts.actors=3", "participants=9"), two)
    message = str(caught.value)
    assert message.startswith("scenario key 'hosts.num_cpus': 1 per host x 3 participant hosts")
    assert "(2 such hosts: node 00000000: 1.5 CPU, 0 GPU, 8.0 GiB -> 1 hosts; node 00000001" in message


def test_the_smallest_quota_of_each_node_binds():
    """Guards against a pool sized by CPUs alone when GPUs or memory hold fewer hosts per node."""
    gpu_nodes = nodes({"CPU": 16, "GPU": 1, "memory": 64 * GIB}, {"CPU": 16, "GPU": 2, "memory": 64 * GIB})
    assert pool_size(tiny("hosts.actors=null", "participants=50", "hosts.num_gpus=0.25"), gpu_nodes) == 12
    small = nodes({"CPU": 16, "memory": 4 * GIB})
    assert pool_size(tiny("hosts.actors=null", "participants=50", "hosts.memory_mb=1024"), small) == 4
    with pytest.raises(ClusterError, match="scenario key 'hosts.memory_mb': 1024 per host x 5"):
        check_resources(tiny("hosts.actors=5", "participants=50", "hosts.memory_mb=1024"), small)
    # an autoscaling cluster may still grow: the reservation waits instead
    assert check_resources(tiny("hosts.actors=5", "participants=50", "hosts.memory_mb=1024",
                                "hosts.autoscaling=true"), small) == 5


def test_a_pool_that_cannot_be_reserved_fails_within_seconds(ray_session):
    """Guards against a run that waits forever for hosts the cluster cannot give it now (here its
    CPUs are held by another placement group), or fails without the per-node numbers."""
    from ray.util.placement_group import placement_group, remove_placement_group

    blocker = placement_group([{"CPU": 2}])
    assert blocker.wait(timeout_seconds=60)
    try:
        reserved = ClusterPlacement.here()
        start = time.monotonic()
        with pytest.raises(RuntimeError) as caught:
            reserved.hosts(tiny("hosts.actors=2", "hosts.reserve_timeout_s=2"), print)
        took = time.monotonic() - start
        assert took < 10, took
        message = str(caught.value)
        assert "could not reserve 2 participant hosts" in message and "hosts.reserve_timeout_s=2" in message
        assert "2 CPU" in message and "-> 2 hosts" in message  # what the node has and would hold
        assert reserved.group is None  # the request was withdrawn
    finally:
        remove_placement_group(blocker)
    reserved = ClusterPlacement.here()  # once the CPUs are free, the same request is granted
    assert len(reserved.hosts(tiny("hosts.actors=2"), print)) == 2
    reserved.release()
