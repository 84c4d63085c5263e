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

from conftest import TINY

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
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
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

    def processes(self) -> set[psutil.Process]:
        """Every process of the two node sessions, and every descendant (Ray's worker processes
        get their own process group but are the raylet's children)."""
        found = set()
        for proc in psutil.process_iter():
            try:
                if os.getsid(proc.pid) in self.sessions:
                    found.add(proc)
            except (ProcessLookupError, PermissionError, psutil.Error):
                pass
        for proc in list(found):
            try:
                found.update(proc.children(recursive=True))
            except psutil.Error:
                pass
        return found

    def stop(self) -> None:
        """Kill this cluster's processes by pid (SIGKILL, like `ray stop --force`, but only these),
        until none is left, then remove its temp dir."""
        for _ in range(5):
            procs = self.processes()
            if not procs:
                break
            for proc in procs:
                try:
                    proc.kill()
                except psutil.Error:
                    pass
            psutil.wait_procs(procs, timeout=5)
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
