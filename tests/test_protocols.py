"""Fed-Grow's protocols as named (no Ray): the paper's protocol freezes Local-LiGO after the
local stage; independent_growth is fedgrow minus the aggregation; the shared parameters get a
fresh optimiser each round unless told to keep it."""

import pytest
import torch

from conftest import tiny
from fedgrow_ray.experiment import Experiment, prepare_scenario_data
from fedgrow_ray.methods import get_method
from fedgrow_ray.participant import Participant
from fedgrow_ray.rounds import LocalExecutor


def grown_participant(scenario, cache, method="fedgrow", pid=0):
    """A participant after its setup (pre-training, local stage) for `method`, and the method."""
    experiment = Experiment(scenario, prepare_scenario_data(scenario, cache))
    method = get_method(method, experiment)
    participant = Participant(experiment, pid, "cpu")
    return method, participant, method.setup(participant)


def tensors(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("joint", [None, True])
def test_paper_protocol_trains_no_local_ligo_after_the_local_stage(cache, joint):
    scenario = tiny() if joint is None else tiny("training.joint_local=true")
    assert scenario["protocol"] == "paper" and scenario["training"]["joint_local"] is bool(joint)
    method, participant, state = grown_participant(scenario, cache)
    untrained = tensors(method.new_state(participant).dual.local_ligo)
    after_stage = tensors(state.dual.local_ligo)
    assert not same(untrained, after_stage)  # the local stage trained it
    shared = method.initial_shared()
    for round_number in (1, 2):
        shared, _ = method.train(participant, state, shared, round_number)
    assert same(tensors(state.dual.local_ligo), after_stage) == (not joint)
    in_optimiser = {id(p) for group in state.optimiser.param_groups for p in group["params"]}
    assert any(id(p) in in_optimiser for p in state.dual.local_ligo.parameters()) == bool(joint)


@pytest.mark.parametrize("joint", ["false", "true"])
def test_independent_growth_differs_from_fedgrow_only_by_aggregation(cache, joint):
    # Dropout on: the two methods must draw the same random numbers, not merely the same data.
    scenario = tiny(f"training.joint_local={joint}", "model.dropout=0.1")
    experiment = Experiment(scenario, prepare_scenario_data(scenario, cache))
    executor = LocalExecutor(scenario, str(experiment.data.path))
    fedgrow = get_method("fedgrow", experiment)
    pids = list(range(6))
    # independent_growth first, so that it, not fedgrow, pre-trains the shared small models
    _, failures = executor.train("independent_growth", 1, pids, None)
    results, _ = executor.train("fedgrow", 1, pids, fedgrow.initial_shared())
    assert not failures and len(results) == 6
    private = {p: executor.host.participants[p].method_state["independent_growth"].dual for p in pids}
    for result in results:  # round 1, before aggregation: the very same local updates
        assert same(result["update"], private[result["id"]].global_state()), result["id"]
    aggregated = fedgrow.aggregate(fedgrow.initial_shared(), [(r["update"], r["samples"]) for r in results])
    for pid in pids:  # after aggregation each fedgrow participant starts from what all learned
        assert not same(aggregated, private[pid].global_state())
    results, _ = executor.train("fedgrow", 2, [0], aggregated)
    executor.train("independent_growth", 2, [0], None)
    assert not same(results[0]["update"], private[0].global_state())


def test_every_private_global_ligo_starts_where_fedgrows_shared_one_does(cache):
    scenario = tiny()
    for name in ("independent_growth", "centralized"):
        method, participant, state = grown_participant(scenario, cache, name, pid=1)
        assert same(state.dual.global_state(), get_method("fedgrow", method.experiment).initial_shared())


def test_shared_parameters_get_a_fresh_optimiser_each_round(cache):
    steps = tiny()["training"]["local_steps"]
    updates = {}
    for choice in ("fresh", "keep"):
        scenario = tiny("training.joint_local=true", f"training.shared_optimiser={choice}")
        method, participant, state = grown_participant(scenario, cache)
        shared, _ = method.train(participant, state, method.initial_shared(), 1)
        optimiser = state.optimiser
        shared_params, private = list(state.dual.global_ligo.parameters()), list(state.dual.local_ligo.parameters())
        assert all(p in optimiser.state for p in shared_params + private)
        method.start_round(state)  # what round 2's training starts with
        assert all((p in optimiser.state) == (choice == "keep") for p in shared_params)
        assert all(int(optimiser.state[p]["step"]) == steps for p in private)  # private keep theirs
        updates[choice], _ = method.train(participant, state, shared, 2)
        assert all(int(optimiser.state[p]["step"]) == (steps if choice == "fresh" else 2 * steps)
                   for p in shared_params)
        assert all(int(optimiser.state[p]["step"]) == 2 * steps for p in private)
    assert not same(updates["fresh"], updates["keep"])


def test_fedavg_scratch_starts_each_round_with_a_fresh_optimiser(cache):
    method, participant, state = grown_participant(tiny(), cache, "fedavg_scratch")
    method.train(participant, state, method.initial_shared(), 1)
    assert len(state.optimiser.state) == len(list(state.model.parameters()))
    method.start_round(state)
    assert len(state.optimiser.state) == 0
