"""The asynchronous scheduler (`server.mode: async`): buffered aggregation in the style of
FedBuff (Nguyen et al., 2022) on the virtual clock, beside the synchronous rounds of
`rounds.MethodRun`, whose evaluation, accounting, checkpoints and summary it shares.

`server.concurrency` participants train at once. Each starts from the shared state of the
moment (its *version*) and arrives when its device would finish: its setup the first time,
then download, training and upload on its simulated device (devices.simulated_time). On each
arrival another participant starts, at once. Every `server.buffer_size` arrivals the server
aggregates: an update that is `s` versions old (staleness) is dropped and counted when
s > `server.max_staleness`, otherwise its delta from the version it started from enters the
sample- and staleness-weighted mean (`server.staleness_weight`: constant 1, or polynomial
(1 + s)^-a with a = `server.staleness_exponent`), added to the shared state. One aggregation is
one row of metrics.jsonl (`round` counts aggregations; `rounds` caps them). For fedgrow the
buffered updates are Global-LiGO updates.

Who starts when, at which version, and who is in which buffer depend only on simulated times
and seeded draws, never on wall time or on which host ran whom, so a seed gives one result
with any number of hosts. Training is batched per version: the participants that started from
the same version are trained together, one executor call, when the first of them is needed.
A participant is started at most once per version (its round number is version + 1, which
names its state versions and random streams), and never while it is in flight. The state
between aggregations (clock, participants in flight with their results, the versions they
started from) is checkpointed, so a resumed run continues exactly.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .devices import is_available, simulated_time
from .metrics import state_bytes
from .rounds import MethodRun
from .training import derive_seed

DRAW_TRIES = 10_000  # random draws for the next participant before a scan (near-full concurrency)


class BufferedRun(MethodRun):
    """The rounds of one method as buffered asynchronous aggregations (see the module notes)."""

    def __init__(self, experiment, method_name, executor, record, log, progress=None, resume=None,
                 versions=None, export_dir=None):
        super().__init__(experiment, method_name, executor, record, log, progress, resume, versions, export_dir)
        if not self.method.shares or self.method.centralized:
            raise ValueError(f"server.mode async: method {self.method.name!r} shares nothing to aggregate")
        server = self.scenario["server"]
        self.concurrency, self.buffer_size = server["concurrency"], server["buffer_size"]
        self.max_staleness = server["max_staleness"]
        if resume is not None:
            buffered = resume["buffered"]
            self.clock, self.next_seq = buffered["clock"], buffered["next_seq"]
            self.in_flight, self.shared_at = buffered["in_flight"], buffered["shared_at"]
            self.started_now = set(buffered["started_now"])
        else:
            self.clock, self.next_seq = 0.0, 0
            self.in_flight: list[dict] = []     # {seq, pid, version, finish, result}
            self.shared_at = {0: self.shared}   # the versions participants in flight started from
            self.started_now: set[int] = set()  # started from the current version

    def snapshot(self) -> dict:
        return {**super().snapshot(), "buffered": {
            "clock": self.clock, "next_seq": self.next_seq, "in_flight": self.in_flight,
            "shared_at": self.shared_at, "started_now": sorted(self.started_now)}}

    def fits(self, round_number: int, rounds: int) -> bool:
        return round_number <= rounds  # budgets are for synchronous rounds (config.py)

    # ---- who starts ---------------------------------------------------------------------------
    def _eligible(self, pid: int, version: int) -> bool:
        return (pid not in self.started_now and all(t["pid"] != pid for t in self.in_flight)
                and self.exclusion(pid) is None
                and is_available(self.exp.profile(pid), pid, version + 1, self.exp.seed))

    def _draw(self, seq: int, version: int) -> int | None:
        """The participant of start number `seq`: uniform over the registered ones, redrawn until
        one can start (by rejection: no list of every participant per start); None if nobody can."""
        ids = self.exp.participant_ids
        rng = np.random.default_rng(derive_seed(self.exp.seed, self.method.stream, "async-start", seq))
        for _ in range(DRAW_TRIES):
            pid = ids[int(rng.integers(len(ids)))]
            if self._eligible(pid, version):
                return pid
        offset = int(rng.integers(len(ids)))  # nearly everyone busy: scan from a random place
        return next((ids[(offset + i) % len(ids)] for i in range(len(ids))
                     if self._eligible(ids[(offset + i) % len(ids)], version)), None)

    def _start(self, version: int, costs: dict) -> None:
        """One participant starts from `version` now; its arrival time on the virtual clock."""
        pid = self._draw(self.next_seq, version)
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        if pid is None:
            self.log(f"{self.method.name}: nobody can start at version {version} (start {seq})")
            return
        reference = self.scenario["devices"]["reference_gflops"]
        profile = self.exp.profile(pid)
        flops = self.method.participant_round_flops(pid)
        download = self.download_bytes(pid)
        seconds = simulated_time(profile, flops, self.method.upload_bytes(self.shared), download, reference).total_s
        if pid not in self.set_up:
            setup = self.method.setup_flops(pid)
            flops += setup
            seconds += self._seconds(pid, setup)
            self.set_up.add(pid)
        self.received[pid] = version
        self.started_now.add(pid)
        costs["flops"] += flops
        costs["bytes_down"] += download
        costs["started"] += 1
        self.in_flight.append({"seq": seq, "pid": pid, "version": version, "finish": self.clock + seconds,
                               "result": None})

    # ---- training, batched per version --------------------------------------------------------
    def _train(self, version: int) -> None:
        """Every participant in flight from `version` and not trained yet, in one executor call."""
        tasks = sorted((t for t in self.in_flight if t["version"] == version and t["result"] is None),
                       key=lambda t: t["pid"])
        pids = [t["pid"] for t in tasks]
        round_number = version + 1
        kill = [f["host"] for f in self.scenario["faults"]["kill_host"]
                if f["round"] == round_number and f["method"] in (None, self.method.name)]
        results, failures = self.executor.train(self.method.name, round_number, pids, self.shared_at[version],
                                                None, None, kill, self.versions.expected(pids))
        results.sort(key=lambda r: r["id"])
        self._accept(results, f"version {version}")
        self.screen.corrupt(results, round_number)
        lost = {r["id"] for r in self.screen.lost(results, round_number)}
        by_id = {r["id"]: r for r in results}
        for task in tasks:
            result = by_id.get(task["pid"])
            if result is None:
                task["result"] = {"failed": failures.get(task["pid"], "no answer")}
            elif task["pid"] in lost:
                task["result"] = {"failed": "upload lost (faults.drop_upload)", "update": result["update"]}
            else:
                task["result"] = {key: result[key] for key in ("update", "samples", "train_loss")}

    # ---- one aggregation ----------------------------------------------------------------------
    def run_round(self, round_number: int, rounds: int) -> dict:
        start = time.perf_counter()
        self._lost, self._restarts_before = 0, self.executor.restarts
        version = round_number - 1
        clock_before = self.clock
        costs = {"flops": 0.0, "bytes_down": 0, "bytes_up": 0, "started": 0}
        self.progress({"method": self.method.name, "round": round_number, "rounds": rounds, "phase": "start",
                       "running": len(self.in_flight), "done": 0,
                       "accuracy": (self.last_eval or {}).get("accuracy")})
        while len(self.in_flight) < self.concurrency and self.next_seq < self.concurrency:  # the first ones
            self._start(version, costs)
        buffer, counts, staleness_seen, losses = [], {"arrived": 0, "stale": 0, "rejected": 0, "failed": 0}, [], []
        while len(buffer) < self.buffer_size and self.in_flight:
            task = min(self.in_flight, key=lambda t: (t["finish"], t["seq"]))
            staleness = version - task["version"]
            if task["result"] is None and staleness <= self.max_staleness:  # stale ones are not run
                self._train(task["version"])
            self.in_flight.remove(task)
            self.clock = max(self.clock, task["finish"])
            counts["arrived"] += 1
            if staleness > self.max_staleness:  # dropped on arrival
                counts["stale"] += 1
                self._start(version, costs)
                continue
            result = task["result"]
            if result.get("update") is not None:
                costs["bytes_up"] += state_bytes(result["update"])
                self.shared_names.update(result["update"])
            if "failed" in result:
                counts["failed"] += 1
                self.log(f"{self.method.name} version {version}: participant {task['pid']} failed: {result['failed']}")
            elif (problem := self.screen.problem(result["update"], self.shared_at[task["version"]])):
                counts["rejected"] += 1
                self.log(f"{self.method.name} version {version}: update of participant {task['pid']} "
                         f"rejected: {problem}")
            else:
                buffer.append((task, staleness))
                staleness_seen.append(staleness)
                losses.append((result["train_loss"], result["samples"]))
            self._start(version, costs)  # a participant arrived: another one starts
        if len(buffer) < self.buffer_size:
            self.log(f"{self.method.name} version {version}: only {len(buffer)} of "
                     f"server.buffer_size={self.buffer_size} updates could arrive")
        if buffer:
            aggregated = self._aggregate(buffer)
            self.shared = {**self.shared, **aggregated}
            self.changed_round.update({name: round_number for name in aggregated})
        self.round = round_number
        self.started_now = set()
        self.shared_at[round_number] = self.shared
        needed = {t["version"] for t in self.in_flight if round_number - t["version"] <= self.max_staleness}
        self.shared_at = {v: s for v, s in self.shared_at.items() if v in needed or v == round_number}
        self.sampled[round_number] = sorted(t["pid"] for t, _ in buffer)
        for key in ("flops", "bytes_up", "bytes_down"):
            self.totals[key] += costs[key]
        self.totals["sim_time_s"] += self.clock - clock_before
        final = not self.fits(round_number + 1, rounds)
        samples = [n for _, n in losses]
        row = {"method": self.method.name, "round": round_number, "sampled": costs["started"],
               "completed": counts["arrived"], "dropped_stale": counts["stale"], "rejected": counts["rejected"],
               "failed": counts["failed"], "aggregated": len(buffer), "in_flight": len(self.in_flight),
               "staleness_mean": float(np.mean(staleness_seen)) if staleness_seen else None,
               "staleness_max": max(staleness_seen, default=None),
               "bytes_up": costs["bytes_up"], "bytes_down": costs["bytes_down"], "flops": costs["flops"],
               "setup_sim_s": 0.0, "sim_time_s": self.clock - clock_before,
               "train_loss": (float(np.average([loss for loss, _ in losses], weights=samples))
                              if losses and sum(samples) else None),
               "dp_epsilon": self.dp_epsilon()}
        evaluate = final or round_number % self.scenario["eval"]["every"] == 0
        self._close(row, final, evaluate, start)
        self.progress({"method": self.method.name, "round": round_number, "rounds": rounds, "phase": "end",
                       "running": len(self.in_flight), "done": len(buffer),
                       "accuracy": (self.last_eval or {}).get("accuracy")})
        return row

    def staleness_weight(self, staleness: int) -> float:
        server = self.scenario["server"]
        if server["staleness_weight"] == "constant":
            return 1.0
        return (1.0 + staleness) ** -server["staleness_exponent"]

    def _aggregate(self, buffer: list[tuple[dict, int]]) -> dict:
        """The shared state plus the sample- and staleness-weighted mean of the buffered deltas
        (each against the version its participant started from), in float64, in arrival order."""
        weights = [task["result"]["samples"] * self.staleness_weight(s) for task, s in buffer]
        total = sum(weights)
        if total <= 0:
            return {}
        first = buffer[0][0]["result"]["update"]
        new = {}
        for name, tensor in first.items():
            step = torch.zeros(tensor.shape, dtype=torch.float64)
            for (task, _), weight in zip(buffer, weights):
                base = self.shared_at[task["version"]].get(name)
                delta = task["result"]["update"][name].to(torch.float64)
                if base is not None:
                    delta = delta - base.to(torch.float64)
                step.add_(delta, alpha=weight / total)
            current = self.shared.get(name)
            value = step if current is None else current.to(torch.float64) + step
            new[name] = value.to(tensor.dtype)
        return new
