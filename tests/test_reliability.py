"""Faults, exact resume, rejected updates and bad input, with a real local Ray."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

import launch
from conftest import MEASURED, TINY, simulate, tiny
from fedgrow_ray.aggregation import coordinate_median, fedavg, trimmed_mean
from fedgrow_ray.experiment import Experiment, prepare_scenario_data
from fedgrow_ray.outputs import RunFolder
from fedgrow_ray.rounds import LocalExecutor, MethodRun

ROOT = Path(__file__).resolve().parent.parent


def same_results(rows_a, rows_b):
    assert len(rows_a) == len(rows_b)
    for a, b in zip(rows_a, rows_b):
        for key in a.keys() - MEASURED:
            expected = pytest.approx(b[key], rel=1e-6, abs=1e-9) if isinstance(b[key], float) else b[key]
            assert a[key] == expected, (a["method"], a["round"], key)


def wait_for_rows(path: Path, count: int, timeout: float = 300.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{path} did not reach {count} rows")


def actor_names(ray, prefix: str) -> set[str]:
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)}


def named_actor(ray, prefix: str, timeout: float = 60.0, other_than=frozenset()):
    """The actor named `prefix`... that is not one of `other_than` (actors of earlier runs)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        names = actor_names(ray, prefix) - set(other_than)
        if names:
            return ray.get_actor(sorted(names)[-1])
        time.sleep(0.2)
    raise TimeoutError(prefix)


def run_in_thread(ray, scenario, cache, folder, resume=False):
    outcome = {}

    def target():
        try:
            outcome["summary"] = launch.run_with_ray(ray, scenario, cache, folder,
                                                     launch.Progress(open(os.devnull, "w")), resume)
        except Exception as err:  # noqa: BLE001 - the test inspects it
            outcome["error"] = err

    thread = threading.Thread(target=target)
    thread.start()
    return thread, outcome


@pytest.mark.slow  # about 1.5 minutes: a run, a killed driver, a resume
def test_resume_after_the_driver_dies_is_exact(ray_session, cache, tmp_path):
    scenario = tiny("rounds=4", "methods=[fedgrow, local_small]")
    reference, reference_rows, _ = simulate(ray_session, scenario, cache, tmp_path / "whole")

    folder = RunFolder.create(tmp_path / "broken", scenario)
    thread, outcome = run_in_thread(ray_session, scenario, cache, folder)
    wait_for_rows(folder.path / "metrics.jsonl", 3)       # fedgrow round 3 is done
    ray_session.kill(named_actor(ray_session, "fedgrow-driver-"))
    thread.join(120)
    assert "ActorDied" in type(outcome.get("error")).__name__ or "RayActorError" in type(outcome.get("error")).__mro__[1].__name__
    assert (folder.path / "checkpoint.pt").is_file()

    resumed, _, state = RunFolder.for_resume(folder.path)
    assert state["method"] == "fedgrow" and state["round"] >= 3
    summary = launch.run_with_ray(ray_session, scenario, cache, resumed,
                                  launch.Progress(open(os.devnull, "w")), resume=True)
    assert summary["global_ligo_sha256"] == reference["global_ligo_sha256"]
    for name in ("fedgrow", "local_small"):
        assert summary["methods"][name]["accuracy_mean"] == reference["methods"][name]["accuracy_mean"]
    same_results(resumed.metrics(), reference_rows)
    assert "resuming after fedgrow round" in (folder.path / "events.log").read_text()


@pytest.mark.slow  # 1.5 minutes: two launch.py processes, each starting Ray
def test_ctrl_c_then_resume_from_the_command_line(ray_session, cache, tmp_path):
    scenario_file = tmp_path / "tiny.yaml"
    scenario_file.write_text(yaml.safe_dump({**TINY, "rounds": 4}))
    reference, reference_rows, _ = simulate(ray_session, tiny("rounds=4"), cache, tmp_path / "whole")
    out = tmp_path / "run"
    command = [sys.executable, str(ROOT / "launch.py"), "--cache", cache]
    running = subprocess.Popen(command + [str(scenario_file), "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_rows(out / "metrics.jsonl", 2)
        running.send_signal(signal.SIGINT)
        _, err = running.communicate(timeout=120)
    finally:
        running.kill()
    assert running.returncode == 1 and "resume with: python launch.py --resume" in err
    assert json.loads((out / "status.json").read_text())["status"] == "failed"
    done = subprocess.run(command + ["--resume", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["global_ligo_sha256"] == reference["global_ligo_sha256"]
    same_results([json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()], reference_rows)


def _fault_free(cache, tmp_path, scenario):
    """The same scenario without the fault, in this process (Ray gives the same rows:
    tests/test_simulator.py)."""
    folder = RunFolder.create(tmp_path / "fault-free", scenario)
    summary = launch.run_locally(scenario, prepare_scenario_data(scenario, cache), folder,
                                 launch.Progress(open(os.devnull, "w")))
    return summary, folder.metrics()


# Dropout and joint Local-LiGO: a restored participant must bring back every random draw and
# optimiser moment, not only its weights.
KILL_SCENARIO = ("rounds=4", "training.joint_local=true", "model.dropout=0.1")


def test_a_run_leaves_no_actor_behind(ray_session, cache, tmp_path):
    """Guards against hosts outliving their run in a long-lived process (a notebook, a sweep's
    trial): the process that follows the run owns them, and Ray would try to restart them
    (max_restarts=-1) into a reservation that is gone."""
    earlier = actor_names(ray_session, "fedgrow-")
    simulate(ray_session, tiny("rounds=1"), cache, tmp_path / "run")
    assert not actor_names(ray_session, "fedgrow-") - earlier  # at once: ended, not ending


def test_a_host_restarted_between_calls_is_counted(ray_session, cache, tmp_path):
    """Guards against a host that died while it had no call (killed between rounds) going
    uncounted: no call fails, the restarted process answers the next one, and only its process
    id tells. Its participant comes back from the stored state of round 1."""
    from actors.driver import hosts_location
    from actors.placement import ClusterPlacement
    from actors.pool import RayExecutor, start_hosts

    scenario = tiny("methods=[local_small]")
    folder = RunFolder.create(tmp_path / "run", scenario)
    prepare_scenario_data(scenario, cache)
    placement, log, hosts = ClusterPlacement.here(), [], []
    placement.reserve(scenario, log.append)
    try:
        hosts = start_hosts(scenario, cache, hosts_location(scenario, folder), "between", placement, log.append)
        executor = RayExecutor(scenario, hosts, log.append)
        first, failures = executor.train("local_small", 1, [0], None)
        assert not failures and executor.restarts == 0
        before = executor.info[0]["pid"]
        ray_session.kill(hosts[0], no_restart=False)
        end = time.monotonic() + 120
        while True:  # back, in a new process, before the next call
            try:
                if ray_session.get(hosts[0].info.remote(), timeout=5)["pid"] != before:
                    break
            except (ray_session.exceptions.RayActorError, ray_session.exceptions.GetTimeoutError):
                pass
            assert time.monotonic() < end
            time.sleep(0.2)
        expected = {0: (first[0]["version"], first[0]["version"])}
        second, failures = executor.train("local_small", 2, [0], None, expected=expected)
        assert not failures and executor.restarts == 1 and executor.info[0]["pid"] != before
        assert second[0]["state"] == "restored"
        assert any(f"host #0 was restarted between calls (process {before} -> " in line for line in log)
    finally:
        for host in hosts:
            ray_session.kill(host, no_restart=True)
        placement.release()


def test_a_killed_participant_actor_is_restarted_and_its_participants_return(ray_session, cache, tmp_path):
    """Host 0 killed (faults.kill_host) in rounds 2 and 3: its lost work is re-run on the restarted
    host from the participants' stored state, so the run equals the fault-free one. Checked by
    breaking it on purpose: with ParticipantHost._take ignoring the store (participants rebuilt
    from scratch), round 2's train_loss and the hash differ and this test fails."""
    scenario = tiny(*KILL_SCENARIO, "faults.kill_host=[{host: 0, round: 2}, {host: 0, round: 3}]")
    summary, rows, folder = simulate(ray_session, scenario, cache, tmp_path / "run")
    reference, reference_rows = _fault_free(cache, tmp_path, tiny(*KILL_SCENARIO))
    assert summary["global_ligo_sha256"] == reference["global_ligo_sha256"]
    same_results(rows, reference_rows)
    assert [r["restarts"] for r in rows] == [0, 1, 1, 0]
    assert all(r["failed"] == 0 and r["completed"] == 6 and r["restored_fresh"] == 0 for r in rows)
    log = (folder.path / "events.log").read_text()
    assert "host #0 (node" in log and "died: killed by fault injection" in log
    assert "held participants [0, 2, 4]" in log and "host #0 restarted" in log
    for pid in (0, 2, 4):  # re-run in round 2 from the state of their round-1 work
        assert f"fedgrow round 2: participant {pid} restored from its stored state" in log


@pytest.mark.slow  # about 45 s
def test_ray_kill_of_a_participant_actor_from_outside(ray_session, cache, tmp_path):
    """ray.kill of one of this run's hosts from outside the run, as round 2 starts (while it works,
    or between its calls: both happen): the run completes, equals the fault-free run and counts
    one restart. Checked by breaking it on purpose: with a restarted host starting its
    participants from scratch, the rows after the kill differ and this test fails."""
    scenario = tiny(*KILL_SCENARIO)
    folder = RunFolder.create(tmp_path / "run", scenario)
    earlier = actor_names(ray_session, "fedgrow-host-")
    thread, outcome = run_in_thread(ray_session, scenario, cache, folder)
    wait_for_rows(folder.path / "metrics.jsonl", 1)
    ray_session.kill(named_actor(ray_session, "fedgrow-host-", other_than=earlier), no_restart=False)
    thread.join(300)
    assert "summary" in outcome, outcome
    reference, reference_rows = _fault_free(cache, tmp_path, scenario)
    assert outcome["summary"]["global_ligo_sha256"] == reference["global_ligo_sha256"]
    same_results(folder.metrics(), reference_rows)
    assert sum(r["restarts"] for r in folder.metrics()) == 1
    assert "restored from its stored state" in (folder.path / "events.log").read_text()


def test_broken_updates_are_rejected_and_global_ligo_stays_finite(ray_session, cache, tmp_path):
    """Guards against a broken update (NaN, Inf, wrong shape or name, a norm beyond
    server.max_update_norm) being aggregated, or being rejected without being counted."""
    faults = ("faults.bad_update=[{participant: 1, round: 1, kind: nan}, {participant: 2, round: 1, kind: shape},"
              " {participant: 3, round: 2, kind: inf}, {participant: 4, round: 2, kind: name},"
              " {participant: 5, round: 2, kind: huge}]")
    summary, rows, folder = simulate(ray_session, tiny(faults, "server.max_update_norm=1000"), cache,
                                     tmp_path / "run")
    assert [(r["rejected"], r["aggregated"]) for r in rows] == [(2, 4), (3, 3)]
    log = (folder.path / "events.log").read_text()
    assert "update of participant 1 rejected" in log and "NaN" in log
    assert "update of participant 2 rejected" in log and "shape" in log
    assert "update of participant 5 rejected" in log and "norm" in log
    shared = torch.load(folder.path / "checkpoint.pt", weights_only=True)["shared"]
    assert all(torch.isfinite(t).all() for t in shared.values())


class RecordingExecutor(LocalExecutor):
    """The in-process executor, keeping the last round's results (their updates as the server
    saw them, after fault injection)."""

    def train(self, *args, **kwargs):
        results, failures = super().train(*args, **kwargs)
        self.results = results
        return results, failures


@pytest.mark.parametrize("aggregator", ["median", "trimmed_mean"])
def test_robust_aggregators_run(tmp_path, cache, aggregator):
    """Guards against server.aggregator being ignored (fedavg whatever the scenario says): the
    new Global-LiGO must be exactly that aggregator of the round's updates, and one huge update
    among five must not drag it away as it drags the mean."""
    scenario = tiny("participants=5", "rounds=1", f"server.aggregator={aggregator}", "server.trim_fraction=0.2",
                    "faults.bad_update=[{participant: 0, round: 1, kind: huge}]")
    data = str(prepare_scenario_data(scenario, cache))
    executor = RecordingExecutor(scenario, data)
    run = MethodRun(Experiment(scenario, data), "fedgrow", executor, lambda row: None, lambda text: None)
    initial = {k: v.clone() for k, v in run.shared.items()}
    row = run.run_round(1, 1)
    assert (row["aggregated"], row["rejected"]) == (5, 0)  # no max_update_norm: the huge one counts
    updates = [(r["update"], r["samples"]) for r in executor.results]
    expected = {"median": coordinate_median(updates), "trimmed_mean": trimmed_mean(updates, 0.2)}[aggregator]
    assert all(torch.equal(run.shared[name], expected[name]) for name in expected)
    mean = fedavg(updates)
    assert any(not torch.equal(run.shared[name], mean[name]) for name in mean)

    def distance(state):
        return max(float((state[name] - initial[name]).abs().max()) for name in initial)
    assert distance(mean) > 1e3 * distance(run.shared) > 0  # the huge update moved the mean only
