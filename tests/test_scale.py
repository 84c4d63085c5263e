"""Many participants on few hosts: spilling to disk and reloading is exact, and how
participants are hosted (actor count, spill on or off) never changes a result."""

from pathlib import Path

import pytest
import torch

from conftest import MEASURED, simulate, tiny
from fedgrow_ray.config import load_scenario
from fedgrow_ray.experiment import Experiment, prepare_scenario_data
from fedgrow_ray.methods import get_method
from fedgrow_ray.participant import ParticipantHost
from fedgrow_ray.rounds import LocalExecutor, run_experiment

ROOT = Path(__file__).resolve().parent.parent


def test_a_spilled_participant_continues_from_its_state(tmp_path, cache):
    # Moments kept across rounds and Local-LiGO trained too: all the optimiser state there is.
    kept = ("training.shared_optimiser=keep", "training.joint_local=true")
    scenario = tiny("hosts.max_resident=1", *kept)
    data = str(prepare_scenario_data(scenario, cache))
    shared = get_method("fedgrow", Experiment(scenario, data)).initial_shared()
    spilling = ParticipantHost(scenario, data, state_dir=str(tmp_path / "a"))
    resident = ParticipantHost(tiny(*kept), data, state_dir=str(tmp_path / "b"))
    for host in (spilling, resident):
        host.train("fedgrow", 1, [0], shared)
        host.train("fedgrow", 1, [1], shared)     # with max_resident=1, participant 0 goes to disk
    assert 0 not in spilling.participants and spilling.stats["spilled"] == 1
    for host in (spilling, resident):
        host.train("fedgrow", 2, [0], shared)     # sampled again: reloaded, and it goes on
    assert spilling.stats["reloaded"] == 1
    mine, theirs = (h.participants[0].method_state["fedgrow"] for h in (spilling, resident))
    for (name, a), (_, b) in zip(mine.dual.named_parameters(), theirs.dual.named_parameters()):
        assert torch.equal(a, b), name
    steps = scenario["training"]["local_steps"]
    assert all(int(s["step"]) == 2 * steps for s in mine.optimiser.state_dict()["state"].values())


def test_spilling_does_not_change_results(tmp_path, cache):
    outcomes = []
    for spill in (None, 1):
        scenario = tiny("rounds=3", f"hosts.max_resident={'null' if spill is None else spill}",
                        "methods=[fedgrow, local_small]")
        data = str(prepare_scenario_data(scenario, cache))
        rows = []
        summary = run_experiment(Experiment(scenario, data),
                                 LocalExecutor(scenario, data, state_dir=str(tmp_path / f"s{spill}")),
                                 rows.append, lambda m: None)
        outcomes.append((summary, rows))
    (a, rows_a), (b, rows_b) = outcomes
    assert a["global_ligo_sha256"] == b["global_ligo_sha256"]
    assert a["methods"]["local_small"]["per_participant_accuracy"] == b["methods"]["local_small"]["per_participant_accuracy"]
    for x, y in zip(rows_a, rows_b):
        assert {k: v for k, v in x.items() if k not in MEASURED} == {k: v for k, v in y.items() if k not in MEASURED}


def test_actor_count_does_not_change_results(ray_session, cache, tmp_path):
    hashes, rows = [], []
    for actors in (1, 3):
        scenario = tiny(f"hosts.actors={actors}", "hosts.num_cpus=0.5", "hosts.max_resident=1")
        summary, metrics, _ = simulate(ray_session, scenario, cache, tmp_path / f"a{actors}")
        hashes.append(summary["global_ligo_sha256"])
        rows.append([{k: v for k, v in r.items() if k not in MEASURED} for r in metrics])
    assert hashes[0] == hashes[1] and rows[0] == rows[1]


def test_stress_scenario_memory_follows_the_pool_not_the_participants(ray_session, cache, tmp_path):
    """scenarios/stress.yaml as shipped (1,000 participants, stragglers on), fewer rounds."""
    scenario = load_scenario(ROOT / "scenarios" / "stress.yaml", ["rounds=4"])
    assert scenario["participants"] == 1000
    summary, metrics, folder = simulate(ray_session, scenario, cache, tmp_path / "stress")
    assert [r["round"] for r in metrics] == [1, 2, 3, 4]
    sampled = {pid for r in folder.load_checkpoint()["sampled"].values() for pid in r}
    asked = sum(r["sampled"] for r in metrics)
    assert len(sampled) < asked  # some participants were sampled again ...
    limit = scenario["hosts"]["max_resident"]
    assert max(r["resident_max"] for r in metrics) == limit  # ... from hosts that were full,
    assert sum(r["spilled"] for r in metrics) > 0 and sum(r["reloaded"] for r in metrics) > 0
    for row in metrics:  # stragglers: every sampled participant is accounted for
        assert row["completed"] > 0 and row["sampled"] == (
            row["completed"] + row["dropped_deadline"] + row["over_selected"] + row["unavailable"]
            + row["excluded_memory"] + row["failed"])
    assert sum(r["dropped_deadline"] for r in metrics) > 0
    assert sum(r["unavailable"] for r in metrics) > 0 and sum(r["excluded_memory"] for r in metrics) > 0
    # Memory follows the hosts: rounds 2-4 bring ~150 more participants than round 1 held, but
    # a host never keeps more than max_resident of them.
    rss = [r["host_rss_mb_max"] for r in metrics]
    assert rss[-1] < rss[0] + 150, rss
    assert summary["methods"]["fedgrow"]["accuracy_mean"] is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_a_gpu_host_holds_one_participant_at_a_time(cache, tmp_path):
    scenario = tiny("participants=6")
    data = str(prepare_scenario_data(scenario, cache))
    shared = get_method("fedgrow", Experiment(scenario, data)).initial_shared()
    host = ParticipantHost(scenario, data, device="cuda", state_dir=str(tmp_path))
    held = []
    for round_number in (1, 2, 3):
        for pid in range(6):
            result, = host.train("fedgrow", round_number, [pid], shared)
            assert result["host_memory"]["gpu_mb"] > 0  # it did run on the GPU
            held.append(torch.cuda.memory_allocated())
    assert max(held) == held[0], held  # nothing accumulates on the GPU between participants
    for participant in host.participants.values():
        assert all(p.device.type == "cpu" for p in participant.small_model.parameters())
