"""Infrastructure faults change nothing: a host that dies, work that times out, a driver killed
with the machine, participant state on a shared location. Each test compares a run with the
fault against the same scenario without it (every metrics row apart from the measurements in
conftest.MEASURED, and the final Global-LiGO hash).

The scenario exercises what a resume or a restarted host must restore exactly: joint Local-LiGO
(private parameters with their own optimiser moments), dropout (every random draw), lognormal
device speeds, two hosts."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

import launch
from conftest import MEASURED, TINY, simulate, tiny
from fedgrow_ray.experiment import Experiment, prepare_scenario_data
from fedgrow_ray.outputs import RunFolder
from fedgrow_ray.rounds import LocalExecutor, run_experiment

ROOT = Path(__file__).resolve().parent.parent
FAULTY = ("training.joint_local=true", "model.dropout=0.1",
          "devices.compute_speed={dist: lognormal, median: 1.0, sigma: 0.5}")
QUIET = launch.Progress(open(os.devnull, "w"))


def scenario(*overrides):
    return tiny(*FAULTY, *overrides)


def local_run(scenario_, cache, out, record=None):
    """The whole run in this process (LocalExecutor, state in the run folder); (summary, rows,
    folder). `record` sees each row before it is written."""
    folder = RunFolder.create(out, scenario_)
    if record is not None:
        folder_record = folder.record
        folder.record = lambda row: (record(row, folder), folder_record(row))
    data = prepare_scenario_data(scenario_, cache)
    summary = launch.run_locally(scenario_, data, folder, QUIET)
    return summary, folder.metrics(), folder


def assert_same_run(summary, rows, reference, reference_rows, ignore=()):
    """Same Global-LiGO, same per-participant accuracies, and every metrics row equal apart from
    measurements (and the keys in `ignore`)."""
    assert summary["global_ligo_sha256"] == reference["global_ligo_sha256"]
    for name, method in reference["methods"].items():
        assert summary["methods"][name]["per_participant_accuracy"] == method["per_participant_accuracy"], name
    assert len(rows) == len(reference_rows)
    for row, expected in zip(rows, reference_rows):
        keys = (row.keys() | expected.keys()) - MEASURED - set(ignore)
        assert {k: row.get(k) for k in keys} == {k: expected.get(k) for k in keys}, (row["method"], row["round"])


@pytest.fixture(scope="module")
def fault_free(cache, tmp_path_factory):
    """The fault-free run of the 4-round scenario the host-kill tests use (in process; Ray gives
    the same rows, tests/test_simulator.py)."""
    return local_run(scenario("rounds=4"), cache, tmp_path_factory.mktemp("fault-free") / "run")


def test_host_kills_change_nothing_in_process(fault_free, cache, tmp_path):
    """A killed host whose replacement started participants afresh, or lost work that was
    counted failed instead of re-run, would change the hash and the rows."""
    reference, reference_rows, _ = fault_free
    summary, rows, folder = local_run(scenario("rounds=4", "faults.kill_host=[{host: 0, round: 2}, {host: 0, round: 3}]"),
                                      cache, tmp_path / "run")
    assert_same_run(summary, rows, reference, reference_rows)
    assert [r["restarts"] for r in rows] == [0, 1, 1, 0]
    assert all(r["failed"] == 0 and r["restored_fresh"] == 0 for r in rows)
    log = (folder.path / "events.log").read_text()
    assert "fedgrow round 2: participant 1 restored from its stored state" in log


@pytest.mark.parametrize("form", ["file-uri", "plain-path"])
def test_state_uri_holds_the_participant_state(fault_free, cache, tmp_path, form):
    """Participant state must go where hosts.state_uri says (a file:// URI or a plain path), one
    folder per run, and a replaced host must restore from there."""
    reference, reference_rows, _ = fault_free
    shared = tmp_path / "shared"
    uri = f"file://{shared}" if form == "file-uri" else str(shared)
    summary, rows, folder = local_run(
        scenario("rounds=4", f"hosts.state_uri={uri}", "faults.kill_host=[{host: 0, round: 3}]"),
        cache, tmp_path / "run")
    assert_same_run(summary, rows, reference, reference_rows)
    assert not (folder.path / "participant_state").exists()
    runs = list(shared.iterdir())
    assert [p.name for p in runs] == [f"run-{folder.state_id}"]
    names = sorted(p.name for p in runs[0].iterdir() if p.is_file())
    assert "p0.fedgrow.r4.pt" in names and all(n.startswith("p") for n in names)


def test_state_not_found_is_reported_loudly_and_counted(cache, tmp_path):
    """A host that cannot find a participant's state must say so in events.log and in the row's
    restored_fresh, never rebuild it silently."""
    shared = tmp_path / "shared"

    def lose_the_state(row, folder):  # the shared location is wiped after round 1
        if row["round"] == 1:
            for path in shared.rglob("p*.pt"):
                path.unlink()

    _, rows, folder = local_run(scenario("rounds=3", f"hosts.state_uri={shared}",
                                         "faults.kill_host=[{host: 0, round: 2}]"),
                                cache, tmp_path / "run", record=lose_the_state)
    # the in-process host dies after participant 0's answer: 1..5 are looked for and not found
    assert [r["restored_fresh"] for r in rows] == [0, 5, 0]
    log = (folder.path / "events.log").read_text()
    for pid in range(1, 6):
        assert f"fedgrow round 2: PARTICIPANT {pid} RESET: its private state was not found" in log
    assert "fedgrow round 2: PARTICIPANT 0 RESET" not in log


def _speed_trace(tmp_path, slow) -> str:
    trace = tmp_path / "speeds.csv"
    trace.write_text("compute_speed\n" + "".join(("1e-06" if pid in slow else "1000") + "\n"
                                                 for pid in range(TINY["participants"])))
    return str(trace)


@pytest.mark.slow  # 2 minutes: two rounds that each wait for the wall-clock timeout
def test_timed_out_work_is_cancelled_and_rolled_back(ray_session, cache, tmp_path):
    """Work written off at hosts.round_timeout_s must be cancelled (a queued call never runs, a
    running one stops) and its participants go on from their state before the round: the run
    must equal one where the same participants were dropped by the simulated deadline. Fails if
    the late work kept its effect on the participants, or kept the host busy into round 2."""
    # Participants 2 and 4 (both on host 0, after participant 0) have devices a million times
    # slower; with hosts.sleep each sleeps its simulated time (about 1,000 s): 2 is running at
    # the timeout, 4 is queued behind it.
    trace = _speed_trace(tmp_path, slow={2, 4})
    common = ("rounds=2", f"devices.trace={trace}")
    dropped, dropped_rows, _ = local_run(scenario(*common, "deadline_s=100"), cache, tmp_path / "deadline")
    assert [r["dropped_deadline"] for r in dropped_rows] == [2, 2]
    summary, rows, folder = simulate(ray_session, scenario(*common, "hosts.sleep=true",
                                                           "hosts.round_timeout_s=45"), cache, tmp_path / "timeout")
    assert [(r["failed"], r["completed"]) for r in rows] == [(2, 4), (2, 4)]  # round 2 did not queue behind
    results = ("completed", "aggregated", "train_loss", "bytes_up", "bytes_down", "eval_accuracy",
               "eval_accuracy_std", "eval_macro_precision", "eval_participants", "eval_majority_accuracy")
    for row, expected in zip(rows, dropped_rows):
        assert {k: row.get(k) for k in results} == {k: expected.get(k) for k in results}, row["round"]
    assert summary["global_ligo_sha256"] == dropped["global_ligo_sha256"]
    assert summary["methods"]["fedgrow"]["per_participant_accuracy"] == \
        dropped["methods"]["fedgrow"]["per_participant_accuracy"]
    log = (folder.path / "events.log").read_text()
    for pid in (2, 4):
        assert (f"fedgrow round 1: participant {pid} failed: no answer within hosts.round_timeout_s=45 s "
                f"(host #0); its work was cancelled") in log
