"""Fed-Grow's protocols and the baselines on the same participants, data and seeds (no Ray):
what each trains, what each sends, and on what each is evaluated."""

import pytest
import torch

from conftest import tiny
from fedgrow_ray.experiment import CENTER, Experiment, prepare_scenario_data
from fedgrow_ray.ligo import LiGO
from fedgrow_ray.rounds import LocalExecutor, MethodRun, run_experiment

ALL = "methods=[fedgrow, fedavg_scratch, independent_growth, local_small, centralized_ligo]"


def experiment_of(scenario, cache):
    return Experiment(scenario, prepare_scenario_data(scenario, cache))


@pytest.fixture(scope="module")
def all_methods(tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("cache"))
    scenario = tiny(ALL, "rounds=2")
    experiment = experiment_of(scenario, cache)
    rows = []
    summary = run_experiment(experiment, LocalExecutor(scenario, str(experiment.data.path)),
                             rows.append, lambda m: None)
    return experiment, summary, rows


def test_every_method_reports_the_same_fields(all_methods):
    experiment, summary, rows = all_methods
    assert list(summary["methods"]) == ["fedgrow", "fedavg_scratch", "independent_growth",
                                        "local_small", "centralized_ligo"]
    for name, result in summary["methods"].items():
        assert 0.0 <= result["accuracy_mean"] <= 1.0, name
        assert result["rounds"] == 2 and result["trainable_params_per_participant"] > 0
        assert len(result["per_participant_accuracy"]) == 6  # every participant's own test split
    assert {r["method"] for r in rows} == set(summary["methods"])


def test_communication_is_what_each_method_shares(all_methods):
    experiment, summary, rows = all_methods
    methods = summary["methods"]
    global_bytes = 4 * LiGO.parameter_count(experiment.intermediate, experiment.target)
    target_bytes = 4 * experiment.params(experiment.target)
    # 6 participants, 2 rounds, up and down each round
    assert methods["fedgrow"]["bytes_up_total"] == methods["fedgrow"]["bytes_down_total"] == 2 * 6 * global_bytes
    assert methods["fedavg_scratch"]["bytes_up_total"] == 2 * 6 * target_bytes
    assert methods["fedgrow"]["shared_params"] * 4 == global_bytes < target_bytes
    for name in ("independent_growth", "local_small", "centralized_ligo"):
        assert methods[name]["bytes_up_total"] == methods[name]["bytes_down_total"] == 0
    names = summary["shared_tensor_names"]
    assert {n.split(".")[0] for n in names} == {"global_ligo", "model"}  # fedgrow, fedavg_scratch


def test_trainable_parameters_per_participant(all_methods):
    experiment, summary, _ = all_methods
    methods = summary["methods"]
    global_ligo = LiGO.parameter_count(experiment.intermediate, experiment.target)
    local = [LiGO.parameter_count(experiment.small_shape(p)[0], experiment.intermediate) for p in range(6)]
    assert methods["fedgrow"]["trainable_params_per_participant"] == pytest.approx(global_ligo + sum(local) / 6)
    assert methods["fedavg_scratch"]["trainable_params_per_participant"] == experiment.params(experiment.target)
    small = [experiment.params(experiment.small_shape(p)[0]) for p in range(6)]
    assert methods["local_small"]["trainable_params_per_participant"] == pytest.approx(sum(small) / 6)


def test_reference_code_protocol_shares_the_averaged_intermediate_model_once(tmp_path):
    scenario = tiny("protocol=reference-code", "rounds=3")
    experiment = experiment_of(scenario, str(tmp_path))
    run = MethodRun(experiment, "fedgrow", LocalExecutor(scenario, str(experiment.data.path)),
                    lambda r: None, lambda m: None)
    rows = [run.run_round(r, 3) for r in (1, 2, 3)]
    global_bytes = 4 * LiGO.parameter_count(experiment.intermediate, experiment.target)
    intermediate_bytes = 4 * experiment.params(experiment.intermediate)
    assert [r["bytes_up"] for r in rows] == [6 * (global_bytes + intermediate_bytes), 6 * global_bytes,
                                             6 * global_bytes]
    assert [r["bytes_down"] for r in rows] == [6 * global_bytes, 6 * (global_bytes + intermediate_bytes),
                                               6 * global_bytes]
    assert any(name.startswith("intermediate.") for name in run.shared_names)
    frozen = {k: v.clone() for k, v in run.shared.items() if k.startswith("intermediate.")}
    assert frozen and all(torch.equal(run.shared[k], v) for k, v in frozen.items())


def test_centralized_ligo_trains_one_model_on_pooled_data(tmp_path):
    scenario = tiny("methods=[centralized_ligo]", "rounds=1")
    experiment = experiment_of(scenario, str(tmp_path))
    executor = LocalExecutor(scenario, str(experiment.data.path))
    run = MethodRun(experiment, "centralized_ligo", executor, lambda r: None, lambda m: None)
    row = run.run_round(1, 1)
    center = executor.host.participants[CENTER]
    assert len(center.data.train) == len(experiment.data.pooled_train) == sum(
        len(experiment.data.participant(p).train) for p in range(6))
    assert center.shape == max(experiment.ladder, key=experiment.params)
    assert (row["sampled"], row["completed"], row["eval_participants"]) == (1, 1, 6)
    assert run.method.steps_per_round() == 6 * scenario["training"]["local_steps"]
    assert set(executor.host.participants) == {CENTER}  # participants only lent their test splits


def test_independent_growth_keeps_every_global_ligo_private(tmp_path):
    scenario = tiny("methods=[independent_growth]", "rounds=1")
    experiment = experiment_of(scenario, str(tmp_path))
    executor = LocalExecutor(scenario, str(experiment.data.path))
    row = MethodRun(experiment, "independent_growth", executor, lambda r: None, lambda m: None).run_round(1, 1)
    assert row["bytes_up"] == row["bytes_down"] == 0 and row["aggregated"] == 0
    operators = [executor.host.participants[p].method_state["independent_growth"].dual.global_ligo for p in (0, 1)]
    assert not torch.equal(operators[0].width_residual, operators[1].width_residual)
