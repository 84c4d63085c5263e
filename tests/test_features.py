"""Scenario features run and measured: what each changes, by how much, and in which metrics rows.
Most run in this process (the local executor); placement and the driver's death need Ray.

training.joint_local (false and true) is tested in test_protocols.py
(test_paper_protocol_trains_no_local_ligo_after_the_local_stage); host kills and round
timeouts in test_reliability.py."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import launch
from conftest import MEASURED, TINY, simulate, tiny
from fedgrow_ray.dual_ligo import state_sha256
from fedgrow_ray.experiment import Experiment, prepare_scenario_data
from fedgrow_ray.methods import get_method
from fedgrow_ray.models import Shape
from fedgrow_ray.outputs import RunFolder
from fedgrow_ray.participant import Participant, ParticipantHost
from fedgrow_ray.rounds import LocalExecutor, MethodRun, run_experiment

ROOT = Path(__file__).resolve().parent.parent
QUIET = launch.Progress(open(os.devnull, "w"))


class Crash(Exception):
    """The driver process dies here (the test's stand-in for kill -9)."""


def results(rows):
    return [{k: v for k, v in row.items() if k not in MEASURED} for row in rows]


def whole_run(scenario, cache, path):
    """An uninterrupted run through the CLI's in-process path: (summary, rows, folder)."""
    data = prepare_scenario_data(scenario, cache)
    folder = RunFolder.create(path, scenario)
    summary = launch.run_locally(scenario, data, folder, QUIET)
    return summary, folder.metrics(), folder


def crashed_run(scenario, cache, path, after_row=None, after_checkpoint=None):
    """A run whose driver dies right after recording `after_row` = (method, round), or right
    after writing the checkpoint of `after_checkpoint` = (method, round). Returns its folder."""
    data = prepare_scenario_data(scenario, cache)
    folder = RunFolder.create(path, scenario)

    def record(row):
        folder.record(row)
        if (row["method"], row["round"]) == after_row:
            raise Crash

    def save_checkpoint(state):
        folder.save_checkpoint(state)
        if (state["method"], state["round"]) == after_checkpoint:
            raise Crash

    executor = LocalExecutor(scenario, str(data), state_dir=str(folder.state_dir))
    with pytest.raises(Crash):
        run_experiment(Experiment(scenario, data), executor, record, folder.log, None, save_checkpoint)
    return folder


def resume(scenario, cache, path):
    folder, _, state = RunFolder.for_resume(path)
    summary = launch.run_locally(scenario, prepare_scenario_data(scenario, cache), folder, QUIET, resume=True)
    return summary, folder.metrics(), state


def lost_uploads(log_lines):
    """{round: [participants]} whose upload was lost, from events.log's lines."""
    lost = {}
    for line in log_lines:
        if "upload lost (faults.drop_upload)" in line:
            words = line.split()
            lost.setdefault(int(words[words.index("round") + 1].rstrip(":")), []).append(
                int(words[words.index("participant") + 1]))
    return lost


def in_process(scenario, cache):
    """(summary, rows, log lines) of a run with the local executor."""
    data = prepare_scenario_data(scenario, cache)
    rows, log = [], []
    summary = run_experiment(Experiment(scenario, data), LocalExecutor(scenario, str(data)), rows.append, log.append)
    return summary, rows, log


# ---- faults.drop_upload ---------------------------------------------------------------------
def test_dropped_uploads_are_seeded_counted_and_never_aggregated(cache):
    """Guards against lost uploads being aggregated, not counted as failed, left out of bytes_up
    (they were sent), or drawn differently by the same seed."""
    scenario = tiny("rounds=4", "faults.drop_upload=0.4")
    summary, rows, log = in_process(scenario, cache)
    _, clean_rows, _ = in_process(tiny("rounds=4"), cache)
    lost = lost_uploads(log)
    for row, clean in zip(rows, clean_rows):
        n = len(lost.get(row["round"], []))
        assert (row["failed"], row["completed"], row["aggregated"]) == (n, 6 - n, 6 - n), row
        assert row["bytes_up"] == clean["bytes_up"]  # every upload left its participant
    assert 0 < sum(map(len, lost.values())) < 24  # with p = 0.4, some of 24 uploads, not all
    assert summary["global_ligo_sha256"] != in_process(tiny("rounds=4"), cache)[0]["global_ligo_sha256"]
    again = lost_uploads(in_process(scenario, cache)[2])
    other_seed = lost_uploads(in_process(tiny("rounds=4", "faults.drop_upload=0.4", "seed=4"), cache)[2])
    assert again == lost and other_seed != lost


def test_every_upload_lost_leaves_global_ligo_as_it_started(cache):
    """Guards against a lost upload reaching the aggregate."""
    scenario = tiny("rounds=2", "faults.drop_upload=1.0")
    summary, rows, log = in_process(scenario, cache)
    assert [(r["failed"], r["aggregated"]) for r in rows] == [(6, 0), (6, 0)]
    initial = get_method("fedgrow", Experiment(scenario, prepare_scenario_data(scenario, cache))).initial_shared()
    assert summary["global_ligo_sha256"] == state_sha256(initial)
    assert sum("no update arrived in time; the shared state is unchanged" in line for line in log) == 2


# ---- training.finetune_steps ----------------------------------------------------------------
def test_fine_tuning_changes_the_final_models_and_costs_its_flops(cache, tmp_path):
    """Guards against finetune_steps doing nothing (the final evaluation must score a fine-tuned
    model), charging the wrong FLOPs, or changing a round before the last."""
    plain = tiny("methods=[fedgrow, local_small]")
    tuned = tiny("methods=[fedgrow, local_small]", "training.finetune_steps=5")
    (a, rows_a, _), (b, rows_b, _) = in_process(plain, cache), in_process(tuned, cache)
    experiment = Experiment(tuned, prepare_scenario_data(tuned, cache))
    for name in ("fedgrow", "local_small"):
        first_a, last_a = [r for r in rows_a if r["method"] == name]
        first_b, last_b = [r for r in rows_b if r["method"] == name]
        assert results([first_a]) == results([first_b])  # only the end of the run changes
        finish = sum(get_method(name, experiment).finish_flops(p) for p in range(6))
        assert finish == 5 * sum(experiment.step_flops(get_method(name, experiment).final_shape(p)) for p in range(6))
        assert last_b["flops"] - last_a["flops"] == pytest.approx(finish, rel=1e-12)
        assert b["methods"][name]["flops_total"] - a["methods"][name]["flops_total"] == pytest.approx(finish, rel=1e-12)
    assert b["global_ligo_sha256"] == a["global_ligo_sha256"]  # fine-tuning is private
    # What is evaluated at the end is the fine-tuned model, not the grown one.
    host = ParticipantHost(tuned, str(experiment.data.path))
    shared = host.method("fedgrow").initial_shared()
    host.train("fedgrow", 1, [0], shared)
    owner, method = host.participants[0], host.method("fedgrow")
    grown = method.final_model(owner, owner.method_state["fedgrow"], shared)
    host.evaluate("fedgrow", [0], shared, final=True)
    tuned_model = owner.method_state["fedgrow"].model
    batch = next(owner.data.test.batches(16, torch.Generator().manual_seed(0)))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        assert not torch.allclose(grown(**inputs).logits, tuned_model(**inputs).logits)


def test_a_fine_tuned_model_survives_spilling_and_a_resume_exactly(cache, tmp_path):
    """Guards against the fine-tuned model's own save/restore path (spill files, participant
    checkpoints) losing or changing it."""
    scenario = tiny("methods=[fedgrow, local_small]", "training.finetune_steps=5")
    reference, reference_rows, _ = whole_run(scenario, cache, tmp_path / "whole")
    spilling = tiny("methods=[fedgrow, local_small]", "training.finetune_steps=5", "hosts.max_resident=1")
    spilled, spilled_rows, _ = whole_run(spilling, cache, tmp_path / "spilled")
    assert sum(r["spilled"] for r in spilled_rows) > 0
    crashed_run(scenario, cache, tmp_path / "broken", after_row=("local_small", 2))
    resumed, resumed_rows, state = resume(scenario, cache, tmp_path / "broken")
    assert (state["method"], state["round"]) == ("local_small", 1)
    for summary, rows in ((spilled, spilled_rows), (resumed, resumed_rows)):
        assert results(rows) == results(reference_rows)
        for name in ("fedgrow", "local_small"):
            assert summary["methods"][name]["per_participant_accuracy"] == \
                reference["methods"][name]["per_participant_accuracy"]
    # The fine-tuned model itself, written and read back as spilling and checkpoints do.
    data = str(prepare_scenario_data(scenario, cache))
    host = ParticipantHost(scenario, data)
    shared = host.method("fedgrow").initial_shared()
    host.train("fedgrow", 1, [0], shared)
    host.evaluate("fedgrow", [0], shared, final=True)
    owner = host.participants[0]
    saved = owner.state_dict(host.methods)
    copy = Participant(host.experiment, 0, "cpu")
    copy.load_state_dict(saved, host.methods)
    tuned, restored = owner.method_state["fedgrow"].model, copy.method_state["fedgrow"].model
    assert type(owner.method_state["fedgrow"]).__name__ == "Finetuned"
    assert all(torch.equal(a, b) for a, b in zip(tuned.state_dict().values(), restored.state_dict().values()))


# ---- model.checkpoints and model.assign_shapes ----------------------------------------------
def test_participants_load_their_own_checkpoints(cache, tmp_path):
    """Guards against model.checkpoints being ignored: participants must start from the saved
    weights, take the saved shape (here one no ladder rung has) and pay no pre-training."""
    base = tiny()
    family = Experiment(base, prepare_scenario_data(base, cache)).family
    shapes = {p: Shape(width=20, layers=1, heads=2, ffn=40) if p % 3 else Shape(width=24, layers=2, heads=4, ffn=48)
              for p in range(6)}
    saved = {}
    for pid, shape in shapes.items():
        model = family.build(shape, seed=100 + pid)
        model.save_pretrained(tmp_path / f"p{pid}")
        saved[pid] = {k: v.clone() for k, v in model.state_dict().items()}
    scenario = tiny(f"model.checkpoints={tmp_path}/p{{id}}")
    data = prepare_scenario_data(scenario, cache)
    experiment = Experiment(scenario, data)
    experiment.check_inputs()
    assert {p: experiment.small_shape(p)[0] for p in range(6)} == shapes
    method = get_method("fedgrow", experiment)
    assert all(method.setup_flops(p) == experiment.local_stage_flops(p) > 0 for p in range(6))
    executor = LocalExecutor(scenario, str(data))
    row = MethodRun(experiment, "fedgrow", executor, lambda r: None, lambda m: None).run_round(1, 2)
    assert row["flops"] == pytest.approx(sum(method.setup_flops(p) + method.round_flops(shapes[p]) for p in range(6)))
    for pid in range(6):  # the frozen small model is exactly the saved one
        loaded = executor.host.participants[pid].small_model.state_dict()
        assert loaded.keys() == saved[pid].keys()
        assert all(torch.equal(loaded[k], saved[pid][k]) for k in saved[pid] if "classifier" not in k)
    assert row["completed"] == 6 and row["train_loss"] > 0


def test_random_shape_assignment_is_seeded(cache):
    """Guards against assign_shapes: random being ignored (cycle) or drawn unseeded."""
    def assignment(*overrides):
        scenario = tiny("participants=20", "data.train_size=800", *overrides)
        experiment = Experiment(scenario, prepare_scenario_data(scenario, cache))
        return [str(experiment.small_shape(p)[0]) for p in range(20)]
    cycle = assignment()
    assert cycle == [str(Shape(**TINY["model"]["small_shapes"][p % 2])) for p in range(20)]
    random = assignment("model.assign_shapes=random")
    assert random == assignment("model.assign_shapes=random")            # same seed, same draw
    assert random != cycle and set(random) == set(cycle)                 # both rungs, not in turn
    assert random != assignment("model.assign_shapes=random", "seed=4")  # another seed, another draw


# ---- eval.every and checkpoint_every ---------------------------------------------------------
def test_eval_every_evaluates_on_schedule_and_after_the_last_round(cache):
    """Guards against eval.every being ignored, or the last round going unevaluated."""
    _, rows, _ = in_process(tiny("rounds=5", "eval.every=2"), cache)
    assert [r["round"] for r in rows if "eval_accuracy" in r] == [2, 4, 5]
    assert all(not any(k.startswith("eval_") for k in r) for r in rows if r["round"] in (1, 3))
    assert all(r["eval_participants"] == 6 for r in rows if "eval_accuracy" in r)


def test_checkpoint_every_writes_on_schedule_and_resume_goes_back_to_the_last(cache, tmp_path):
    """Guards against checkpoint_every being ignored, and a resume that continues from the last
    metrics row instead of the last checkpoint (rounds after it must run again)."""
    scenario = tiny("rounds=5", "checkpoint_every=2")
    reference, reference_rows, _ = whole_run(scenario, cache, tmp_path / "whole")
    written = []
    folder = crashed_run(scenario, cache, tmp_path / "broken", after_row=("fedgrow", 3))
    assert [r["round"] for r in folder.metrics()] == [1, 2, 3]
    summary, rows, state = resume(scenario, cache, tmp_path / "broken")
    assert (state["round"], state["metrics_rows"]) == (2, 2)
    assert results(rows) == results(reference_rows)
    assert summary["global_ligo_sha256"] == reference["global_ligo_sha256"]
    assert "resuming after fedgrow round 2" in (folder.path / "events.log").read_text()
    # Which rounds wrote the driver's checkpoint: 2, 4 and the last.
    original = RunFolder.save_checkpoint
    try:
        RunFolder.save_checkpoint = lambda self, state: (written.append(state["round"]), original(self, state))
        whole_run(scenario, cache, tmp_path / "counted")
    finally:
        RunFolder.save_checkpoint = original
    assert written == [2, 4, 5]


def test_checkpoint_every_0_writes_none_and_resume_starts_over_exactly(cache, tmp_path, capsys):
    """Guards against checkpoint_every: 0 still writing checkpoints, or a resume of a run with
    no checkpoint continuing from its half-run state (or its leftover metrics rows) instead of
    starting again from the beginning and ending as an uninterrupted run does."""
    scenario = tiny("rounds=3", "checkpoint_every=0")
    reference, reference_rows, _ = whole_run(scenario, cache, tmp_path / "whole")
    folder = crashed_run(scenario, cache, tmp_path / "broken", after_row=("fedgrow", 2))
    assert not (folder.path / "checkpoint.pt").exists() and len(folder.metrics()) == 2
    capsys.readouterr()
    assert launch.main(["--resume", str(folder.path), "--executor", "local", "--cache", cache]) == 0
    assert "resuming from the start: the run stopped before its first checkpoint" in capsys.readouterr().err
    assert not (folder.path / "checkpoint.pt").exists()
    summary = json.loads((folder.path / "summary.json").read_text())
    assert summary["global_ligo_sha256"] == reference["global_ligo_sha256"]
    assert results(folder.metrics()) == results(reference_rows)


# ---- resume: across a method boundary, with partial sampling, after a half-written row --------
@pytest.mark.parametrize("stopped_after", [("fedgrow", 2), ("local_small", 1)],
                         ids=["after the first method's last round", "in the second method"])
def test_resume_across_a_method_boundary_is_exact(cache, tmp_path, stopped_after):
    """Guards against a resume after one method's last checkpoint re-running it, skipping the
    next, or starting the next from the wrong state."""
    scenario = tiny("methods=[fedgrow, local_small]")
    reference, reference_rows, _ = whole_run(scenario, cache, tmp_path / "whole")
    crashed_run(scenario, cache, tmp_path / "broken", after_checkpoint=stopped_after)
    summary, rows, state = resume(scenario, cache, tmp_path / "broken")
    assert (state["method"], state["round"]) == stopped_after
    assert state["stopped"] == (stopped_after == ("fedgrow", 2))
    assert list(state["summaries"]) == ([] if stopped_after[0] == "fedgrow" else ["fedgrow"])
    assert [(r["method"], r["round"]) for r in rows] == [("fedgrow", 1), ("fedgrow", 2), ("local_small", 1),
                                                          ("local_small", 2)]
    assert results(rows) == results(reference_rows)
    for name in ("fedgrow", "local_small"):
        assert summary["methods"][name]["per_participant_accuracy"] == \
            reference["methods"][name]["per_participant_accuracy"]
    assert summary["global_ligo_sha256"] == reference["global_ligo_sha256"]


def test_resume_with_partial_sampling_is_exact(cache, tmp_path):
    """Guards against a resume that draws a different sample of participants, or restores a
    participant not sampled since its last checkpoint from the wrong version."""
    scenario = tiny("rounds=5", "sampling.fraction=0.5")
    reference, reference_rows, reference_folder = whole_run(scenario, cache, tmp_path / "whole")
    sampled = reference_folder.load_checkpoint()["sampled"]
    assert len({tuple(v) for v in sampled.values()}) > 1 and all(len(v) == 3 for v in sampled.values())
    crashed_run(scenario, cache, tmp_path / "broken", after_row=("fedgrow", 4))
    summary, rows, state = resume(scenario, cache, tmp_path / "broken")
    assert state["round"] == 3
    assert results(rows) == results(reference_rows)
    assert summary["global_ligo_sha256"] == reference["global_ligo_sha256"]
    assert summary["methods"]["fedgrow"]["per_participant_accuracy"] == \
        reference["methods"]["fedgrow"]["per_participant_accuracy"]


def test_a_half_written_last_row_is_dropped_on_resume(cache, tmp_path):
    """Guards against a resume that chokes on, keeps or duplicates the row a killed driver was
    writing: the final rows equal the uninterrupted run's."""
    scenario = tiny("rounds=3")
    reference, reference_rows, _ = whole_run(scenario, cache, tmp_path / "whole")
    folder = crashed_run(scenario, cache, tmp_path / "broken", after_checkpoint=("fedgrow", 2))
    with open(folder.path / "metrics.jsonl", "a") as f:
        f.write('{"method": "fedgrow", "round": 3, "sampled": 6, "compl')  # killed mid-write
    assert [r["round"] for r in folder.metrics()] == [1, 2]
    summary, rows, _ = resume(scenario, cache, tmp_path / "broken")
    lines = (folder.path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == [1, 2, 3]
    assert results(rows) == results(reference_rows)
    assert summary["global_ligo_sha256"] == reference["global_ligo_sha256"]


# ---- with Ray: placement, and the message when the driver dies -------------------------------
@pytest.mark.slow  # about 1 minute: two placements
def test_placement_sets_the_actor_strategy_and_not_the_results(ray_session, cache, tmp_path):
    """Guards against hosts.placement being ignored (it is the strategy of the hosts' placement
    group: spread -> SPREAD, pack -> PACK, one bundle per host), or changing results on one node."""
    from actors.placement import ClusterPlacement
    from ray.util.placement_group import placement_group_table
    outcomes = {}
    for placement, strategy in (("spread", "SPREAD"), ("pack", "PACK")):
        scenario = tiny(f"hosts.placement={placement}")
        reserved = ClusterPlacement.here()
        hosts = reserved.hosts(scenario, print)
        table = placement_group_table(reserved.group)
        assert table["strategy"] == strategy and len(table["bundles"]) == len(hosts) == 2
        assert [h["scheduling_strategy"].placement_group_bundle_index for h in hosts] == [0, 1]
        reserved.release()
        summary, rows, _ = simulate(ray_session, scenario, cache, tmp_path / placement)
        outcomes[placement] = (summary["global_ligo_sha256"], results(rows), summary["nodes_used"])
    assert outcomes["spread"] == outcomes["pack"] and outcomes["pack"][2] == 1


@pytest.mark.slow  # a launch.py process joining the test's Ray: about 30 s alone, minutes when busy
def test_when_the_driver_dies_launch_says_how_to_resume(ray_session, cache, tmp_path):
    """Guards against a lost driver ending with a traceback, a status.json still 'running', or
    no --resume command."""
    from test_reliability import wait_for_rows

    def driver_of_the_other_process(timeout=120.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for actor in ray_session.util.list_named_actors(all_namespaces=True):
                if actor["name"].startswith("fedgrow-driver-"):
                    return ray_session.get_actor(actor["name"], namespace=actor["namespace"])
            time.sleep(0.2)
        raise TimeoutError("no driver actor")
    scenario_file = tmp_path / "tiny.yaml"
    scenario_file.write_text(yaml.safe_dump({**TINY, "rounds": 6}))
    out = tmp_path / "run"
    address = ray_session.get_runtime_context().gcs_address
    running = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), str(scenario_file), "--out", str(out),
                                "--address", address, "--cache", cache],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_rows(out / "metrics.jsonl", 1)
        end = time.monotonic() + 120  # the round's checkpoint is written after its row
        while not (out / "checkpoint.pt").is_file() and time.monotonic() < end:
            time.sleep(0.1)
        ray_session.kill(driver_of_the_other_process())
        _, err = running.communicate(timeout=300)
    finally:
        running.kill()
    assert running.returncode == 1, err
    died = [line for line in err.splitlines() if line.startswith("the driver actor died: ")]
    assert len(died) == 1 and died[0].endswith(f"the run folder keeps its last checkpoint: "
                                               f"python launch.py --resume {out}"), err
    assert "Traceback" not in err
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed" and status["error"].startswith("the driver actor died: ")
    assert RunFolder.open_for_resume(out)[2]["round"] >= 1  # and it can be resumed
