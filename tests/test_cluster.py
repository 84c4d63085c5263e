"""launch.py --address on a real two-node Ray cluster on this one machine.

A head and one worker node are started with `ray start` (1 CPU each, token auth, a private
temp dir per node, every port either chosen free here or left to the OS), a tiny scenario is
run through `python launch.py SCENARIO --address HOST:PORT` as a subprocess, and the run must
complete with its participants on both nodes (summary.json: nodes_used == 2).

The cluster is always torn down, also when the test fails: every process of the two `ray start`
sessions (and anything they spawned) is killed by its process id. `ray stop` is NOT used:
it kills every Ray process on the machine by name, including a local Ray that another test or
another user is running.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from conftest import MEASURED, TINY, kill_all

ROOT = Path(__file__).resolve().parent.parent
RAY = shutil.which("ray", path=str(Path(sys.executable).parent))
START_TIMEOUT_S = 120     # each `ray start`
NODES_TIMEOUT_S = 90      # until both nodes are registered
RUN_TIMEOUT_S = 420       # the whole launch.py run (typically 20-60 s here)


def free_ports(n: int) -> list[int]:
    """n distinct ports that are free right now (bound to port 0, then released)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class TwoNodeCluster:
    """A head and one worker node on 127.0.0.1, each in its own process session."""

    def __init__(self):
        # Short: Ray puts Unix sockets under it (the path limit is ~107 bytes).
        self.root = Path(tempfile.mkdtemp(prefix="fgray-", dir="/tmp"))
        # Not RAY_ADDRESS (another Ray), nor the loopback switch the in-process Ray fixtures set
        # (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes `ray start --address` refuse to join).
        leaked = {"RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
        self.env = {k: v for k, v in os.environ.items() if k not in leaked}
        self.env.update(RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0",
                        HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        self.sessions: list[int] = []    # session ids (= pid of each `ray start`)
        self.address = None
        self.log = self.root / "cluster.log"

    def _ray_start(self, args: list[str]) -> None:
        with open(self.log, "a") as log:
            log.write(f"\n$ ray start {' '.join(args)}\n")
            log.flush()
            # A new session: the node's daemons (gcs, raylet, agents...) stay in it after
            # `ray start` exits, which is how stop() finds exactly them.
            proc = subprocess.Popen([RAY, "start", *args], env=self.env, stdout=log, stderr=log,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
            self.sessions.append(proc.pid)
            try:
                code = proc.wait(timeout=START_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise RuntimeError(f"`ray start` took over {START_TIMEOUT_S} s\n{self.log_tail()}")
        if code != 0:
            raise RuntimeError(f"`ray start` exited {code}\n{self.log_tail()}")

    def start(self) -> None:
        gcs, client, dashboard, agent_head, agent_worker = free_ports(5)
        self.address = f"127.0.0.1:{gcs}"
        common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0",
                  "--object-store-memory=200000000", "--disable-usage-stats"]
        self._ray_start(["--head", f"--port={gcs}", f"--ray-client-server-port={client}",
                         "--include-dashboard=false", f"--dashboard-port={dashboard}",
                         f"--dashboard-agent-listen-port={agent_head}",
                         f"--temp-dir={self.root / 'head'}", *common])
        self._ray_start([f"--address={self.address}", f"--dashboard-agent-listen-port={agent_worker}",
                         f"--temp-dir={self.root / 'worker'}", *common])
        deadline = time.monotonic() + NODES_TIMEOUT_S
        while self.alive_nodes() < 2:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the worker node did not register within {NODES_TIMEOUT_S} s\n"
                                   f"{self.log_tail()}")
            time.sleep(1)

    def alive_nodes(self) -> int:
        try:
            out = subprocess.run([RAY, "status", f"--address={self.address}"], env=self.env,
                                 capture_output=True, text=True, timeout=60).stdout
        except subprocess.TimeoutExpired:
            return 0
        active = out.split("Active:", 1)[-1].split("Pending:", 1)[0] if "Active:" in out else ""
        return sum(line.split()[-1].startswith("node_") for line in active.splitlines() if line.strip())

    def processes(self, sessions=None) -> set[psutil.Process]:
        """Every process of the node sessions (default: both), and every descendant (Ray's worker
        processes get their own process group but are the raylet's children)."""
        sessions = self.sessions if sessions is None else sessions
        found = set()
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) in sessions:
                    found.add(proc)
            except (ProcessLookupError, PermissionError, psutil.Error):
                pass
        for proc in list(found):
            try:
                found.update(proc.children(recursive=True))
            except psutil.Error:
                pass
        return found

    def stop_worker(self) -> None:
        """The worker node goes away: every process of its session is killed (SIGKILL), the
        head's are left alone."""
        self.stop(sessions=self.sessions[1:], remove=False)

    def stop(self, sessions=None, remove: bool = True) -> None:
        """Kill this cluster's processes by pid (SIGKILL, like `ray stop --force`, but only these),
        until none is left, then remove its temp dir."""
        kill_all(lambda: self.processes(sessions), attempts=5)
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text().splitlines()[-n:])
        except OSError:
            return ""


@pytest.fixture
def two_node_cluster():
    if RAY is None:
        pytest.skip("the `ray` command is not installed next to this Python")
    cluster = TwoNodeCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        left = cluster.processes()
        assert not left, f"ray processes left behind: {sorted(p.pid for p in left)}"


@pytest.mark.slow
def test_launch_joins_a_two_node_cluster_and_uses_both_nodes(two_node_cluster, tmp_path):
    scenario = tmp_path / "tiny.yaml"
    spec = {**TINY, "rounds": 2, "participants": 6, "hosts": {**TINY.get("hosts", {}), "actors": 2}}
    scenario.write_text(yaml.safe_dump(spec))
    out, cache, log = tmp_path / "run", tmp_path / "cache", tmp_path / "launch.log"
    with open(log, "w") as stream:
        try:
            code = subprocess.run(
                [sys.executable, "launch.py", str(scenario), "--address", two_node_cluster.address,
                 "--out", str(out), "--cache", str(cache)],
                cwd=ROOT, env=two_node_cluster.env, stdout=stream, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, timeout=RUN_TIMEOUT_S).returncode
        except subprocess.TimeoutExpired:
            code = f"killed after {RUN_TIMEOUT_S} s"
    output = log.read_text()
    assert code == 0, f"launch.py: {code}\n{output[-4000:]}"
    assert json.loads((out / "status.json").read_text())["status"] == "completed", output[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    events = (out / "events.log").read_text()
    assert summary["nodes_used"] == 2, f"nodes_used={summary['nodes_used']}\n{events}"
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds if r["method"] == "fedgrow"] == [1, 2]
    assert all(r["completed"] > 0 for r in rounds)


# ---- a lost node ------------------------------------------------------------------------------

# Dropout, joint Local-LiGO, lognormal speeds: a restored participant must bring back all of it.
# Two hosts of half a CPU each: one per node (SPREAD), and both fit on the head once the worker
# node is gone.
NODE_LOSS = {**TINY, "rounds": 4,
             "model": {**TINY["model"], "dropout": 0.1},
             "training": {**TINY["training"], "joint_local": True},
             "devices": {"compute_speed": {"dist": "lognormal", "median": 1.0, "sigma": 0.5}},
             "hosts": {"actors": 2, "num_cpus": 0.5}}


def _run_losing_the_worker(cluster, tmp_path, spec, lose_files=None):
    """launch.py on the cluster; once round 1 is recorded, the worker node is stopped (and
    `lose_files(host index)` runs: what went with its disk). Returns (summary, rows, events,
    the index of the host that was on the worker node)."""
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(spec))
    out, cache, log = tmp_path / "run", tmp_path / "cache", tmp_path / "launch.log"
    with open(log, "w") as stream:
        launched = subprocess.Popen(
            [sys.executable, "launch.py", str(scenario), "--address", cluster.address, "--out", str(out),
             "--cache", str(cache)], cwd=ROOT, env=cluster.env, stdout=stream, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text().strip():
                assert launched.poll() is None and time.monotonic() < deadline, log.read_text()[-4000:]
                time.sleep(0.1)
            started = next(line for line in (out / "events.log").read_text().splitlines() if "hosts started" in line)
            hosts = {int(pid): (int(index), node) for index, node, pid in
                     re.findall(r"#(\d+) node (\w{8}) process (\d+)", started)}
            assert len({node for _, node in hosts.values()}) == 2, started  # one host per node
            on_worker = [hosts[p.pid][0] for p in cluster.processes(cluster.sessions[1:]) if p.pid in hosts]
            assert len(on_worker) == 1, (started, on_worker)
            cluster.stop_worker()
            if lose_files:
                lose_files(on_worker[0])
            code = launched.wait(timeout=RUN_TIMEOUT_S)
        finally:
            launched.kill()
    assert code == 0, f"launch.py: {code}\n{log.read_text()[-4000:]}"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return json.loads((out / "summary.json").read_text()), rows, (out / "events.log").read_text(), on_worker[0]


def _fault_free(tmp_path, spec):
    from fedgrow_ray.config import resolve_scenario
    from fedgrow_ray.experiment import Experiment, prepare_scenario_data
    from fedgrow_ray.rounds import LocalExecutor, run_experiment

    scenario = resolve_scenario(spec)
    data = prepare_scenario_data(scenario, tmp_path / "cache")
    rows = []
    summary = run_experiment(Experiment(scenario, data), LocalExecutor(scenario, str(data)), rows.append,
                             lambda message: None)
    return summary, json.loads(json.dumps(rows))


@pytest.mark.slow
def test_a_lost_node_changes_nothing_with_shared_state(two_node_cluster, tmp_path):
    """The worker node stops during round 2; with hosts.state_uri on a folder both nodes reach,
    its host restarts on the head, loads its participants from there, redoes their work, and
    the run ends exactly as the fault-free one (hash and every row apart from measurements).
    Fails if a host restarted on another node cannot find its participants' state."""
    spec = {**NODE_LOSS, "hosts": {**NODE_LOSS["hosts"], "state_uri": f"file://{tmp_path / 'shared'}"}}
    summary, rows, events, lost = _run_losing_the_worker(two_node_cluster, tmp_path, spec)
    reference, reference_rows = _fault_free(tmp_path, NODE_LOSS)
    assert summary["global_ligo_sha256"] == reference["global_ligo_sha256"], events
    assert len(rows) == len(reference_rows)
    for row, expected in zip(rows, reference_rows):
        keys = (row.keys() | expected.keys()) - MEASURED
        assert {k: row.get(k) for k in keys} == {k: expected.get(k) for k in keys}, (row["round"], events)
    assert sum(r["restarts"] for r in rows) == 1 and f"host #{lost} restarted" in events
    assert "RESET" not in events


@pytest.mark.slow
def test_a_lost_node_without_shared_state_says_which_participants_were_reset(two_node_cluster, tmp_path):
    """The same loss with participant state on the lost node's own disk (simulated: the files
    its host wrote vanish with it): the run completes, and events.log and restored_fresh say
    which participants were rebuilt from scratch, never silently."""
    state = tmp_path / "state"
    spec = {**NODE_LOSS, "hosts": {**NODE_LOSS["hosts"], "state_uri": str(state)}}

    def lose_the_workers_disk(host):  # host k holds participants k, k + 2, k + 4
        for path in state.rglob("p*.pt"):
            if int(path.name[1:].split(".")[0]) % 2 == host:
                path.unlink()

    _, rows, events, lost = _run_losing_the_worker(two_node_cluster, tmp_path, spec, lose_the_workers_disk)
    assert [r["round"] for r in rows] == [1, 2, 3, 4] and all(r["failed"] == 0 for r in rows)
    assert sum(r["restored_fresh"] for r in rows) == 3
    for pid in range(6):
        reset = f"PARTICIPANT {pid} RESET: its private state was not found" in events
        assert reset == (pid % 2 == lost), (pid, events)
