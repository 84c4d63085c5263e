"""Fed-Grow's protocols and the baselines on the same participants, data and seeds (no Ray):
what each trains, what each sends, and on what each is evaluated."""

import numpy as np
import pytest
import torch

from conftest import tiny
from fedgrow_ray.experiment import CENTER, Experiment, prepare_scenario_data
from fedgrow_ray.ligo import LiGO
from fedgrow_ray.methods import get_method
from fedgrow_ray.rounds import LocalExecutor, MethodRun, run_experiment

ALL = "methods=[fedgrow, fedavg_scratch, independent_growth, local_small, centralized]"


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
    """Guards against a method whose summary or metrics rows lack (or add) a field the others
    report, which the results table and curves would then read as missing."""
    experiment, summary, rows = all_methods
    fields = {name: set(result) for name, result in summary["methods"].items()}
    assert all(keys == fields["fedgrow"] for keys in fields.values()), fields
    row_fields = {}
    for row in rows:
        row_fields.setdefault(row["method"], set()).update(row)
    # the pooled trainer alone is scored on the global test set (eval.global is off)
    expected = row_fields["fedgrow"] | {"eval_global_accuracy"}
    assert row_fields.pop("centralized") == expected
    assert all(keys == row_fields["fedgrow"] for keys in row_fields.values()), row_fields
    assert {"sampled", "completed", "failed", "aggregated", "bytes_up", "flops", "eval_accuracy",
            "train_loss"} <= row_fields["fedgrow"]
    assert list(summary["methods"]) == ["fedgrow", "fedavg_scratch", "independent_growth",
                                        "local_small", "centralized"]
    for name, result in summary["methods"].items():
        assert 0.0 <= result["accuracy_mean"] <= 1.0, name
        assert result["rounds"] == 2 and result["trainable_params_per_participant"] > 0
        assert result["budget"] == {"kind": "rounds", "limit": 2, "spent": 2}
        assert result["flops_total"] > 0 and result["sim_time_s"] > 0
        for key in ("accuracy", "macro_precision", "majority_accuracy"):  # every participant's own split
            assert len(result[f"per_participant_{key}"]) == 6
        # the majority reference depends on the data only, not on the method
        assert result["per_participant_majority_accuracy"] == summary["methods"]["fedgrow"]["per_participant_majority_accuracy"]
        # eval.global is off: only the pooled trainer is scored on the global test set
        assert (result["global_accuracy_mean"] is None) == (name != "centralized")
    assert {r["method"] for r in rows} == set(summary["methods"])
    for row in rows:
        assert row["flops_total"] >= row["flops"] > 0 and row["sim_clock_s"] > 0
        assert ("eval_global_accuracy" in row) == (row["method"] == "centralized")


def test_communication_is_what_each_method_shares(all_methods):
    """Guards against bytes counted for what a method does not send, or a method sending more than its shared state."""
    experiment, summary, rows = all_methods
    methods = summary["methods"]
    global_bytes = 4 * LiGO.parameter_count(experiment.intermediate, experiment.target)
    target_bytes = 4 * experiment.params(experiment.target)
    # 6 participants, 2 rounds, up and down each round
    assert methods["fedgrow"]["bytes_up_total"] == methods["fedgrow"]["bytes_down_total"] == 2 * 6 * global_bytes
    assert methods["fedavg_scratch"]["bytes_up_total"] == 2 * 6 * target_bytes
    assert methods["fedgrow"]["shared_params"] * 4 == global_bytes < target_bytes
    for name in ("independent_growth", "local_small", "centralized"):
        assert methods[name]["bytes_up_total"] == methods[name]["bytes_down_total"] == 0
    names = summary["shared_tensor_names"]
    assert {n.split(".")[0] for n in names} == {"global_ligo", "model"}  # fedgrow, fedavg_scratch


def test_trainable_parameters_per_participant(all_methods):
    """Guards against trainable-parameter counts that include frozen weights or miss Local-LiGO."""
    experiment, summary, _ = all_methods
    methods = summary["methods"]
    global_ligo = LiGO.parameter_count(experiment.intermediate, experiment.target)
    local = [LiGO.parameter_count(experiment.small_shape(p)[0], experiment.intermediate) for p in range(6)]
    assert methods["fedgrow"]["trainable_params_per_participant"] == pytest.approx(global_ligo + sum(local) / 6)
    assert methods["fedavg_scratch"]["trainable_params_per_participant"] == experiment.params(experiment.target)
    small = [experiment.params(experiment.small_shape(p)[0]) for p in range(6)]
    assert methods["local_small"]["trainable_params_per_participant"] == pytest.approx(sum(small) / 6)


def test_reference_code_protocol_shares_the_averaged_intermediate_model_once(tmp_path):
    """Guards against the averaged intermediate model being re-sent, re-averaged or trained
    after round 1 (the frozen check once compared a clone with itself)."""
    scenario = tiny("protocol=reference-code", "rounds=3")
    experiment = experiment_of(scenario, str(tmp_path))
    run = MethodRun(experiment, "fedgrow", LocalExecutor(scenario, str(experiment.data.path)),
                    lambda r: None, lambda m: None)
    rows = [run.run_round(1, 3)]
    frozen = {k: v.clone() for k, v in run.shared.items() if k.startswith("intermediate.")}
    global_ligo = {k: v.clone() for k, v in run.shared.items() if k.startswith("global_ligo.")}
    rows += [run.run_round(r, 3) for r in (2, 3)]
    global_bytes = 4 * LiGO.parameter_count(experiment.intermediate, experiment.target)
    intermediate_bytes = 4 * experiment.params(experiment.intermediate)
    assert [r["bytes_up"] for r in rows] == [6 * (global_bytes + intermediate_bytes), 6 * global_bytes,
                                             6 * global_bytes]
    assert [r["bytes_down"] for r in rows] == [6 * global_bytes, 6 * (global_bytes + intermediate_bytes),
                                               6 * global_bytes]
    assert any(name.startswith("intermediate.") for name in run.shared_names)
    # The averaged intermediate model of round 1 stays frozen through rounds 2 and 3, while
    # Global-LiGO goes on training on top of it.
    assert frozen and all(torch.equal(run.shared[k], v) for k, v in frozen.items())
    assert any(not torch.equal(run.shared[k], v) for k, v in global_ligo.items())


def test_centralized_is_one_trainer_on_pooled_data_with_the_federations_compute(tmp_path):
    """Guards against the pooled trainer seeing less data, a smaller shape or other compute than the federation."""
    scenario = tiny("methods=[centralized]", "rounds=1")
    experiment = experiment_of(scenario, str(tmp_path))
    executor = LocalExecutor(scenario, str(experiment.data.path))
    run = MethodRun(experiment, "centralized", executor, lambda r: None, lambda m: None)
    row = run.run_round(1, 1)
    center = executor.host.participants[CENTER]
    assert len(center.data.train) == len(experiment.data.pooled_train) == sum(
        len(experiment.data.participant(p).train) for p in range(6))
    assert center.shape == max(experiment.ladder, key=experiment.params)
    assert (row["sampled"], row["completed"], row["eval_participants"]) == (1, 1, 6)
    assert run.method.steps_per_round() == 6 * scenario["training"]["local_steps"]
    assert set(executor.host.participants) == {CENTER}  # participants only lent their data
    # Pre-training and local stage: the participants' FLOPs, in the pooled trainer's steps.
    pretrain = sum(10 * experiment.step_flops(experiment.small_shape(p)[0]) for p in range(6))
    assert experiment.pretrain_steps(CENTER) == round(pretrain / experiment.step_flops(center.shape)) == 43
    stage = sum(3 * experiment.local_stage_step_flops(experiment.small_shape(p)[0]) for p in range(6))
    assert experiment.local_stage_steps(CENTER) == round(stage / experiment.local_stage_step_flops(center.shape))
    fedgrow = get_method("fedgrow", experiment)
    federation = sum(fedgrow.setup_flops(p) for p in range(6))
    setup = run.method.setup_flops(CENTER)
    assert abs(setup - federation) <= experiment.local_stage_step_flops(center.shape)  # rounding only
    assert row["flops"] == pytest.approx(setup + run.method.round_flops(None) + run.finish_cost()["flops"])
    # Scored on the global test set, and on each participant's split after a personal fine-tune.
    assert 0 <= row["eval_global_accuracy"] <= 1 and 0 <= row["eval_accuracy"] <= 1
    base = run.method.standalone_model(center, center.method_state["centralized"], None)
    personal = [run.method.personal_model(center, base, experiment.participant_data(p).train, p) for p in (0, 1)]
    moved = [any(not torch.equal(a, b) for a, b in zip(base.parameters(), m.parameters())) for m in personal]
    assert all(moved) and any(not torch.equal(a, b) for a, b in zip(*(m.parameters() for m in personal)))


def test_global_evaluation_and_the_majority_reference(tmp_path):
    """Guards against a majority-class reference or global accuracy computed on the wrong split."""
    scenario = tiny("methods=[fedgrow, local_small]", "rounds=1", "eval.global=true",
                    "data.partition={scheme: dirichlet, alpha: 0.3}")
    experiment = experiment_of(scenario, str(tmp_path))
    rows = []
    summary = run_experiment(experiment, LocalExecutor(scenario, str(experiment.data.path)),
                             rows.append, lambda m: None)
    for name, result in summary["methods"].items():
        per_participant = result["per_participant_global_accuracy"]
        assert len(per_participant) == 6 and all(0 <= v <= 1 for v in per_participant.values())
        assert result["global_accuracy_mean"] == pytest.approx(np.mean(list(per_participant.values())))
        assert all(0 <= v <= 1 for v in result["per_participant_macro_precision"].values())
        assert 0 <= result["majority_accuracy_mean"] <= 1
    assert all(0 <= r["eval_global_accuracy"] <= 1 and 0 <= r["eval_majority_accuracy"] <= 1 for r in rows)
    # By hand for participant 2: its training split's most frequent label, on its test split.
    data = experiment.data.participant(2)
    train, test = list(data.train.labels), list(data.test.labels)
    majority = max(sorted(set(train)), key=train.count)
    expected = sum(label == majority for label in test) / len(test)
    assert summary["methods"]["fedgrow"]["per_participant_majority_accuracy"][2] == pytest.approx(expected)
    assert expected > 1 / experiment.data.num_classes  # label skew: above chance


def test_independent_growth_keeps_every_global_ligo_private(tmp_path):
    """Guards against independent_growth sending or sharing its Global-LiGO."""
    scenario = tiny("methods=[independent_growth]", "rounds=1")
    experiment = experiment_of(scenario, str(tmp_path))
    executor = LocalExecutor(scenario, str(experiment.data.path))
    row = MethodRun(experiment, "independent_growth", executor, lambda r: None, lambda m: None).run_round(1, 1)
    assert row["bytes_up"] == row["bytes_down"] == 0 and row["aggregated"] == 0
    operators = [executor.host.participants[p].method_state["independent_growth"].dual.global_ligo for p in (0, 1)]
    assert not torch.equal(operators[0].width_residual, operators[1].width_residual)
