"""Reduction on the hosts (fedgrow_ray.reduction): each host sends one weighted partial sum of its
participants' screened updates, and the run is the same as when every update travels to the
driver."""

import json

import pytest

from conftest import MEASURED, simulate, tiny
from fedgrow_ray.experiment import Experiment, prepare_scenario_data
from fedgrow_ray.methods import get_method
from fedgrow_ray.participant import ParticipantHost
from fedgrow_ray.reduction import reduces_on_hosts
from fedgrow_ray.rounds import LocalExecutor, run_experiment

# Two FedAvg-family methods, with a broken update (rejected on the host) and lost uploads
# (drawn on the host), so screening before the sum is exercised as well as the sum.
SCREENED = ("methods=[fedgrow, fedavg_scratch]", "rounds=2", "faults.drop_upload=0.2",
            "faults.bad_update=[{participant: 1, round: 1, kind: nan}]")


def results(rows):
    return [{k: v for k, v in row.items() if k not in MEASURED} for row in json.loads(json.dumps(rows))]


def in_process(scenario, cache):
    data = prepare_scenario_data(scenario, cache)
    rows, events = [], []
    summary = run_experiment(Experiment(scenario, data), LocalExecutor(scenario, str(data)), rows.append,
                             events.append)
    return summary, rows, events


def test_which_methods_reduce_on_hosts(cache):
    """Guards against host-side sums for an aggregation that needs individual updates (robust
    aggregators, secure aggregation, DP) or for a method that sends nothing."""
    def reduces(*overrides, method="fedgrow"):
        scenario = tiny(*overrides)
        experiment = Experiment(scenario, prepare_scenario_data(scenario, cache))
        privacy = object() if "privacy" in " ".join(overrides) else None  # MethodRun's ServerPrivacy
        return reduces_on_hosts(get_method(method, experiment), scenario, privacy)

    assert reduces() and reduces(method="fedavg_scratch")
    assert not reduces("hosts.reduce=false")
    assert not reduces("server.aggregator=median") and not reduces("server.aggregator=trimmed_mean")
    assert not reduces("privacy.secure_aggregation={threshold: 0.5}")
    assert not reduces(method="independent_growth") and not reduces(method="local_small")


def test_a_host_answer_holds_one_partial_sum_and_no_update(cache):
    """Guards against a host answer that still carries per-participant updates, a partial sum
    of a rejected update, or of a participant the driver did not accept (written off at the
    timeout while another on its host finished)."""
    scenario = tiny("faults.bad_update=[{participant: 1, round: 1, kind: inf}]")
    data = str(prepare_scenario_data(scenario, cache))
    host = ParticipantHost(scenario, data)
    shared = host.method("fedgrow").initial_shared()
    results = host.train_held("fedgrow", 1, [2, 0, 1], shared)
    assert [r["id"] for r in results] == [0, 1, 2]
    assert all("update" not in r for r in results)
    assert [r["outcome"] for r in results] == ["accepted", "rejected", "accepted"]
    assert "non-finite" in results[1]["reason"]
    samples = [r["samples"] for r in results]
    answer = host.partial_sum("fedgrow", 1, [0])  # participant 2's answer never reached the driver
    assert answer["missing"] == [] and answer["partial"]["samples"] == samples[0]
    assert set(answer["partial"]["sums"]) == set(shared)
    assert host.held_updates == {}  # the round's updates are dropped once summed
    again = ParticipantHost(scenario, data)  # a restarted host: it holds nothing yet
    assert again.partial_sum("fedgrow", 1, [0, 2]) == {"partial": None, "missing": [0, 2]}
    again.train_held("fedgrow", 1, [0, 2], shared)
    both = again.partial_sum("fedgrow", 1, [0, 2])
    assert both["partial"]["samples"] == samples[0] + samples[2]


def test_reduced_and_per_participant_runs_are_identical_in_process(cache):
    """Guards against the host path aggregating, counting or charging differently from the
    per-participant path (one host: the same sums in the same order)."""
    reduced, rows_reduced, events_reduced = in_process(tiny(*SCREENED), cache)
    plain, rows_plain, events_plain = in_process(tiny(*SCREENED, "hosts.reduce=false"), cache)
    for name in ("fedgrow", "fedavg_scratch"):
        assert reduced["methods"][name]["shared_sha256"] == plain["methods"][name]["shared_sha256"]
    assert results(rows_reduced) == results(rows_plain)
    assert sum(r["rejected"] for r in rows_reduced) >= 1 and sum(r["failed"] for r in rows_reduced) > 0
    assert events_reduced == events_plain  # the same rejections and lost uploads, logged alike
    for a, b in zip(rows_reduced, rows_plain):
        assert a["driver_bytes_in"] < b["driver_bytes_in"]


@pytest.mark.slow  # two Ray runs of two methods: 2-3 minutes on the busy 2-CPU machine
def test_reduced_on_three_hosts_is_the_per_participant_result(ray_session, cache, tmp_path):
    """Guards against partial sums from several hosts (other grouping of the float64 sums, other
    arrival order) giving another shared state than the per-participant path, for fedgrow and
    fedavg_scratch; and against the driver still receiving one update per participant."""
    outcomes = {}
    for reduce in ("true", "false"):
        scenario = tiny(*SCREENED, "participants=9", "hosts.actors=3", "hosts.num_cpus=0.5",
                        f"hosts.reduce={reduce}")
        summary, rows, _ = simulate(ray_session, scenario, cache, tmp_path / reduce)
        outcomes[reduce] = summary, rows
    (reduced, rows_reduced), (plain, rows_plain) = outcomes["true"], outcomes["false"]
    for name in ("fedgrow", "fedavg_scratch"):
        assert reduced["methods"][name]["shared_sha256"] == plain["methods"][name]["shared_sha256"], name
    assert results(rows_reduced) == results(rows_plain)
    for a, b in zip(rows_reduced, rows_plain):
        # at most one float64 partial sum per host against one update per participant
        assert a["driver_bytes_in"] <= 3 * 2 * b["driver_bytes_in"] / max(1, b["completed"])
