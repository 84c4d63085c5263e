"""The round scheduler without Ray: who is asked, set aside, late or kept, and why."""

import io

import pytest

import launch
from fedgrow_ray.experiment import Experiment, prepare_scenario_data
from fedgrow_ray.rounds import LocalExecutor, MethodRun
from conftest import tiny


def method_run(scenario, cache, log=None):
    experiment = Experiment(scenario, prepare_scenario_data(scenario, cache))
    return MethodRun(experiment, "fedgrow", LocalExecutor(scenario, str(experiment.data.path)),
                     lambda row: None, log or (lambda m: None))


def test_over_selection_keeps_the_first_arrivals(cache, tmp_path):
    trace = tmp_path / "speeds.csv"
    trace.write_text("compute_speed\n" + "\n".join(str(s) for s in (1, 2, 3, 4, 5, 6)) + "\n")
    run = method_run(tiny("sampling.count=3", "sampling.over_selection=2.0", f"devices.trace={trace}"), cache)
    plan = run.plan(1)
    assert len(plan["asked"]) == 6
    assert plan["kept"] == [3, 4, 5]            # the three fastest devices arrive first
    assert plan["not_needed"] == [0, 1, 2] and plan["missed_deadline"] == []
    assert plan["round_time_s"] == pytest.approx(plan["times"][3].total_s)


def test_memory_budgets_give_a_smaller_shape_or_exclude(cache, tmp_path):
    scenario = tiny()
    experiment = Experiment(scenario, prepare_scenario_data(scenario, cache))
    small, large = experiment.ladder
    need_small = experiment.training_memory_mb(small, experiment.params(small))
    need_large = experiment.training_memory_mb(large, experiment.params(large))
    fedgrow_model = method_run(scenario, cache).method.memory_mb(small, 0, True)  # no sample's activations
    budgets = [1e6, need_large + 1, (need_small + need_large) / 2, need_small / 2,
               (need_small + fedgrow_model) / 2, 1e6]
    trace = tmp_path / "memory.csv"
    trace.write_text("memory_mb\n" + "\n".join(str(b) for b in budgets) + "\n")
    messages = []
    run = method_run(tiny(f"devices.trace={trace}"), cache, messages.append)
    shapes = [run.exp.small_shape(pid)[0] for pid in range(6)]
    assert shapes[:3] == [small, large, small]  # participant 2 wanted the large rung, got the small
    assert shapes[3] is None                    # cannot even pre-train the smallest rung
    expected = [pid for pid in range(6) if shapes[pid] is None or run.method.memory_plan(pid)[0] is None]
    assert {3, 4} <= set(expected) and 0 not in expected and 1 not in expected
    assert run.plan(1)["excluded"] == expected
    log = "\n".join(messages)
    assert "participant 3 excluded: memory budget" in log and "needed by the smallest shape" in log
    assert "participant 4 excluded from fedgrow: memory budget" in log and "needed to hold the model" in log


def test_unavailable_participants_are_counted_not_run(cache):
    run = method_run(tiny("devices.availability=0.5", "participants=6"), cache)
    plans = [run.plan(r) for r in range(1, 21)]
    unavailable = [len(p["asked"]) - len(p["reachable"]) for p in plans]
    assert 0 < sum(unavailable) < 6 * 20 and all(set(p["kept"]) <= set(p["reachable"]) for p in plans)
    assert [run.plan(r)["reachable"] for r in range(1, 21)] == [p["reachable"] for p in plans]  # seeded


def test_real_sleeping_for_demos(cache):
    run = method_run(tiny("hosts.sleep=true", "devices.reference_gflops=0.02", "rounds=1",
                          "participants=2", "training.local_steps=1"), cache)
    row = run.run_round(1, 1)
    assert row["wall_s"] >= row["sim_time_s"] > 0.1


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_otherwise():
    event = {"method": "fedgrow", "round": 2, "rounds": 4, "running": 8, "done": 4, "accuracy": 0.5}
    tty = FakeTerminal()
    launch.Progress(tty).update({**event, "phase": "train"})
    assert tty.getvalue().startswith("fedgrow round 2/4 [######") and "participants 4/8" in tty.getvalue()
    plain = io.StringIO()
    clock = iter([0.0, 30.0, 30.0, 45.0])
    progress = launch.Progress(plain, clock=lambda: next(clock))
    progress.update({**event, "phase": "train"})  # first seen at 1.5 rounds done
    assert plain.getvalue() == ""
    for _ in range(2):  # a round's end is reported once
        progress.update({**event, "phase": "end", "done": 8})
    # half a round in 30 s: the 2 rounds left take about 2 minutes
    assert plain.getvalue() == ("fedgrow round 2/4: 8/8 participants done, accuracy 0.500, "
                                "elapsed 30 s, about 2 min 00 s left\n")
