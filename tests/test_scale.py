"""Many participants on few hosts: spilling to disk and reloading is exact, and how
participants are hosted (actor count, spill on or off) never changes a result."""

import torch

from conftest import MEASURED, simulate, tiny
from fedgrow_ray.experiment import Experiment, prepare_scenario_data
from fedgrow_ray.methods import get_method
from fedgrow_ray.participant import ParticipantHost
from fedgrow_ray.rounds import LocalExecutor, run_experiment


def test_a_spilled_participant_continues_from_its_state(tmp_path, cache):
    scenario = tiny("hosts.max_resident=1")
    data = str(prepare_scenario_data(scenario, cache))
    shared = get_method("fedgrow", Experiment(scenario, data)).initial_shared()
    spilling = ParticipantHost(scenario, data, state_dir=str(tmp_path / "a"))
    resident = ParticipantHost(tiny(), data, state_dir=str(tmp_path / "b"))
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
