"""What a method costs and where a budget stops it (no Ray): FLOPs and simulated time include
pre-training, the local stage and LiGO generation; budget.bytes / flops / sim_time_s stop each
method at the last round within them; a run resumed from a checkpoint ends exactly as one that
never stopped."""

import os

import pytest

import launch
from conftest import MEASURED, tiny
from fedgrow_ray.config import ScenarioError
from fedgrow_ray.experiment import Experiment, prepare_scenario_data
from fedgrow_ray.ligo import LiGO
from fedgrow_ray.outputs import RunFolder, results_table
from fedgrow_ray.rounds import LocalExecutor, run_experiment

ALL = "methods=[fedgrow, fedavg_scratch, independent_growth, local_small, centralized]"


def run(scenario, cache):
    experiment = Experiment(scenario, prepare_scenario_data(scenario, cache))
    rows, log = [], []
    summary = run_experiment(experiment, LocalExecutor(scenario, str(experiment.data.path)),
                             rows.append, log.append)
    return experiment, summary, rows, log


def of(rows, method):
    return [r for r in rows if r["method"] == method]


def fedgrow_setup_flops(exp, pid):
    """pretrain_steps x step(S) + local_stage_steps x (step(I) + 3 gen(S -> I)), by hand."""
    small, t = exp.small_shape(pid)[0], exp.training
    return (t["pretrain_steps"] * exp.step_flops(small)
            + t["local_stage_steps"] * (exp.step_flops(exp.intermediate)
                                        + 3 * LiGO.generation_flops(exp.family, small, exp.intermediate)))


def fedgrow_round_flops(exp, pid):
    """local_steps x (step(T) + 3 gen(I -> T)) + gen(S -> I) once (Local-LiGO frozen)."""
    small = exp.small_shape(pid)[0]
    return (exp.training["local_steps"] * (exp.step_flops(exp.target)
                                           + 3 * LiGO.generation_flops(exp.family, exp.intermediate, exp.target))
            + LiGO.generation_flops(exp.family, small, exp.intermediate))


def test_flops_and_simulated_time_follow_the_cost_model(cache):
    exp, summary, rows, _ = run(tiny(ALL, "rounds=2"), cache)
    pids, t = range(6), exp.training
    fedgrow = of(rows, "fedgrow")
    assert fedgrow[0]["flops"] == pytest.approx(sum(fedgrow_setup_flops(exp, p) + fedgrow_round_flops(exp, p)
                                                    for p in pids), rel=1e-12)
    assert fedgrow[1]["flops"] == pytest.approx(sum(fedgrow_round_flops(exp, p) for p in pids), rel=1e-12)
    assert summary["methods"]["fedgrow"]["flops_total"] == fedgrow[1]["flops_total"] == pytest.approx(
        fedgrow[0]["flops"] + fedgrow[1]["flops"])
    independent = of(rows, "independent_growth")
    assert [r["flops"] for r in independent] == [r["flops"] for r in fedgrow]
    local = of(rows, "local_small")
    assert local[0]["flops"] == pytest.approx(sum(
        (t["pretrain_steps"] + t["local_steps"]) * exp.step_flops(exp.small_shape(p)[0]) for p in pids))
    scratch = of(rows, "fedavg_scratch")
    assert scratch[0]["flops"] == scratch[1]["flops"] == 6 * t["local_steps"] * exp.step_flops(exp.target)
    assert scratch[0]["setup_sim_s"] == 0
    # The clock: the slowest newcomer's setup (every device at the reference speed: the largest
    # rung's), then the round; later rounds have no newcomer.
    reference = 1e9 * exp.scenario["devices"]["reference_gflops"]
    large = 1  # participant 1 has the large rung
    assert fedgrow[0]["setup_sim_s"] == pytest.approx(fedgrow_setup_flops(exp, large) / reference)
    assert fedgrow[1]["setup_sim_s"] == 0
    for row in fedgrow:
        assert row["sim_time_s"] == pytest.approx(max(
            fedgrow_round_flops(exp, p) / reference for p in pids) + (row["bytes_up"] / 6) * 8 / 20e6
            + (row["bytes_down"] / 6) * 8 / 100e6)
    assert fedgrow[1]["sim_clock_s"] == pytest.approx(sum(r["setup_sim_s"] + r["sim_time_s"] for r in fedgrow))
    assert summary["methods"]["fedgrow"]["sim_time_s"] == fedgrow[1]["sim_clock_s"]


def test_more_pre_training_costs_exactly_its_flops_and_time(cache):
    results = {steps: run(tiny("rounds=1", f"training.pretrain_steps={steps}"), cache) for steps in (10, 25)}
    (exp, few, rows_few, _), (_, more, rows_more, _) = results[10], results[25]
    extra = sum(15 * exp.step_flops(exp.small_shape(p)[0]) for p in range(6))
    assert more["methods"]["fedgrow"]["flops_total"] - few["methods"]["fedgrow"]["flops_total"] == pytest.approx(extra)
    # The slowest newcomer (the large rung, at the reference speed) sets the clock.
    seconds = 15 * exp.step_flops(exp.small_shape(1)[0]) / (1e9 * exp.scenario["devices"]["reference_gflops"])
    assert rows_more[0]["sim_clock_s"] - rows_few[0]["sim_clock_s"] == pytest.approx(seconds)
    assert more["methods"]["fedgrow"]["sim_time_s"] - few["methods"]["fedgrow"]["sim_time_s"] == pytest.approx(seconds)


def test_a_loaded_small_model_has_no_pre_training_cost(cache, tmp_path):
    scenario = tiny()
    exp = Experiment(scenario, prepare_scenario_data(scenario, cache))
    for pid in range(6):
        exp.family.build(exp.small_shape(pid)[0], seed=pid).save_pretrained(tmp_path / f"p{pid}")
    loaded = Experiment(tiny(f"model.checkpoints={tmp_path}/p{{id}}"), exp.data.path)
    assert [loaded.pretrain_steps(p) for p in range(6)] == [0] * 6 and exp.pretrain_steps(0) == 10
    assert loaded.pretrain_flops(0) == 0 and loaded.local_stage_flops(0) == exp.local_stage_flops(0)


def test_bytes_budget_stops_every_method_at_the_last_round_within_it(cache):
    exp = Experiment(tiny(), prepare_scenario_data(tiny(), cache))
    fedavg_round = 2 * 6 * 4 * exp.params(exp.target)  # up and down, 6 participants, float32
    limit = 2.5 * fedavg_round
    _, summary, rows, log = run(tiny(ALL, "rounds=10", f"budget.bytes={limit}", "eval.every=100"), cache)
    methods = summary["methods"]
    for name, result in methods.items():
        spent = result["bytes_up_total"] + result["bytes_down_total"]
        assert result["budget"] == {"kind": "bytes", "limit": limit, "spent": spent} and spent <= limit
        mine = of(rows, name)
        assert [r["round"] for r in mine] == list(range(1, result["rounds"] + 1))
        assert ["eval_accuracy" in r for r in mine] == [False] * (len(mine) - 1) + [True]
        per_round = mine[-1]["bytes_up"] + mine[-1]["bytes_down"]  # the same every round
        assert result["rounds"] == 10 or spent + per_round > limit, name
    assert methods["fedavg_scratch"]["rounds"] == 2 and methods["fedgrow"]["rounds"] == 8
    assert methods["fedgrow"]["rounds"] > methods["fedavg_scratch"]["rounds"]
    assert all(methods[m]["rounds"] == 10 for m in ("independent_growth", "local_small", "centralized"))
    assert "fedavg_scratch: round 3 would bring bytes to" in "\n".join(log)
    table = results_table(summary, rows)
    assert "Budget: bytes" in table and "| fedavg_scratch | 2 |" in table


@pytest.mark.parametrize("finetune", [0, 2])
def test_flops_budget_counts_setup_rounds_and_the_final_fine_tune(cache, finetune):
    scenario = tiny("rounds=6", f"training.finetune_steps={finetune}", "eval.every=100")
    exp = Experiment(scenario, prepare_scenario_data(scenario, cache))
    pids = range(6)
    first = sum(fedgrow_setup_flops(exp, p) + fedgrow_round_flops(exp, p) for p in pids)
    later = sum(fedgrow_round_flops(exp, p) for p in pids)
    finish = 6 * finetune * exp.step_flops(exp.target)
    limit = first + 2.5 * later + finish
    _, summary, rows, _ = run(tiny("rounds=6", f"training.finetune_steps={finetune}", "eval.every=100",
                                   f"budget.flops={limit}"), cache)
    fedgrow = summary["methods"]["fedgrow"]
    assert fedgrow["rounds"] == 3 and fedgrow["budget"]["kind"] == "flops"
    assert fedgrow["flops_total"] == fedgrow["budget"]["spent"] == pytest.approx(first + 2 * later + finish)
    assert fedgrow["flops_total"] <= limit < fedgrow["flops_total"] + later
    assert rows[-1]["flops"] == pytest.approx(later + finish)


def test_sim_time_budget_stops_on_the_simulated_clock(cache):
    _, whole, whole_rows, _ = run(tiny("rounds=4"), cache)
    limit = whole_rows[1]["sim_clock_s"] + 0.5 * whole_rows[2]["sim_time_s"]
    _, summary, rows, _ = run(tiny("rounds=4", f"budget.sim_time_s={limit}"), cache)
    fedgrow = summary["methods"]["fedgrow"]
    assert fedgrow["rounds"] == 2 and fedgrow["sim_time_s"] == fedgrow["budget"]["spent"] <= limit
    assert fedgrow["sim_time_s"] + whole_rows[2]["sim_time_s"] > limit
    for a, b in zip(rows, whole_rows[:2]):  # the budget only decides where to stop
        assert {k: v for k, v in a.items() if k not in MEASURED} == {k: v for k, v in b.items() if k not in MEASURED}


def test_a_budget_too_small_for_one_round_evaluates_the_initial_state(cache):
    exp = Experiment(tiny(), prepare_scenario_data(tiny(), cache))
    limit = 2 * 6 * 4 * exp.params(exp.target) - 1  # one fedavg_scratch round does not fit
    _, summary, rows, log = run(tiny("methods=[fedavg_scratch, fedgrow]", f"budget.bytes={limit}"), cache)
    scratch = of(rows, "fedavg_scratch")
    assert len(scratch) == 1 and scratch[0]["round"] == 0 and scratch[0]["completed"] == 0
    assert 0 <= scratch[0]["eval_accuracy"] <= 1 and scratch[0]["flops_total"] == 0
    result = summary["methods"]["fedavg_scratch"]
    assert result["rounds"] == 0 and result["budget"]["spent"] == 0
    assert result["accuracy_mean"] == scratch[0]["eval_accuracy"]
    assert summary["methods"]["fedgrow"]["rounds"] == 2
    assert any("fedavg_scratch: not even round 1 fits budget.bytes" in line for line in log)


def test_at_most_one_budget():
    with pytest.raises(ScenarioError, match="'budget.bytes' and 'budget.flops' are all set; set at most one"):
        tiny("budget.bytes=1e6", "budget.flops=1e12")
    with pytest.raises(ScenarioError, match="'budget.sim_time_s': -1"):
        tiny("budget.sim_time_s=-1")


class Crash(Exception):
    pass


def test_resume_with_a_budget_is_exact(cache, tmp_path):
    exp = Experiment(tiny(), prepare_scenario_data(tiny(), cache))
    limit = 2.5 * 2 * 6 * 4 * exp.params(exp.target)  # fedavg_scratch: 2 rounds; fedgrow: 8
    scenario = tiny("methods=[fedavg_scratch, fedgrow]", "rounds=10", f"budget.bytes={limit}",
                    "eval.every=3")
    data = prepare_scenario_data(scenario, cache)
    quiet = launch.Progress(open(os.devnull, "w"))
    whole = RunFolder.create(tmp_path / "whole", scenario)
    reference = launch.run_locally(scenario, data, whole, quiet)

    broken = RunFolder.create(tmp_path / "broken", scenario)

    def record(row):  # the driver dies while fedgrow's round 5 is recorded (checkpoint: round 4)
        broken.record(row)
        if row["method"] == "fedgrow" and row["round"] == 5:
            raise Crash

    executor = LocalExecutor(scenario, str(data), state_dir=str(broken.state_dir))
    with pytest.raises(Crash):
        run_experiment(Experiment(scenario, data), executor, record, broken.log, None, broken.save_checkpoint)
    resumed, _, state = RunFolder.for_resume(broken.path)
    assert (state["method"], state["round"]) == ("fedgrow", 4) and state["totals"]["flops"] > 0
    summary = launch.run_locally(scenario, data, resumed, quiet, resume=True)
    for name, result in reference["methods"].items():
        for key in result.keys() - {"wall_s"}:
            assert summary["methods"][name][key] == result[key], (name, key)
    assert summary["methods"]["fedgrow"]["rounds"] == 8
    rows, reference_rows = resumed.metrics(), whole.metrics()
    assert len(rows) == len(reference_rows) == 10
    for a, b in zip(rows, reference_rows):
        assert {k: v for k, v in a.items() if k not in MEASURED} == {k: v for k, v in b.items() if k not in MEASURED}
