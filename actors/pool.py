"""The pool of ParticipantActors and the Ray executor the round loop runs participants on.

Where the actors go and how many there are is the run's placement (actors/placement.py).
Participants stick to one actor for the whole run (assigned round-robin by id), so their
private state never moves. The round's shared state is put in the object store once and its
reference passed to every call; ray.wait with the round timeout is a wall-clock safety net
only (simulated time decides who is late, in fedgrow_ray.rounds). Ray restarts an actor that
dies (max_restarts); the new one restores its participants from their last checkpoint.
"""

from __future__ import annotations

import time

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from .participant import ParticipantActor


class RayExecutor:
    def __init__(self, scenario: dict, cache_dir: str, state_dir: str, log, run_id: str, placement,
                 start_timeout_s: float = 300.0):
        self.scenario, self.log = scenario, log
        self.timeout_s = scenario["hosts"]["round_timeout_s"]
        hosts = placement.hosts(scenario, log)
        size = len(hosts)
        self.actors = [ParticipantActor.options(name=f"fedgrow-host-{run_id}-{i}", **options).remote(
                           scenario, cache_dir, state_dir, i, options["num_gpus"] > 0)
                       for i, options in enumerate(hosts)]
        try:
            self.info = ray.get([a.info.remote() for a in self.actors], timeout=start_timeout_s)
        except GetTimeoutError:
            raise RuntimeError(
                f"could not start {size} participant hosts ({hosts[0]}) within {start_timeout_s:.0f} s; "
                f"the cluster offers {ray.cluster_resources()}. Lower hosts.actors, hosts.num_cpus or "
                f"hosts.memory_mb.") from None
        log(f"{size} participant hosts started: " + ", ".join(
            f"#{i['index']} node {i['node_id'][:8]} {i['device']}" for i in self.info))
        self.used_nodes: set[str] = set()
        self.held: dict[int, set[int]] = {i: set() for i in range(size)}
        self.killed: set[int] = set()    # by fault injection
        self.restarting: set[int] = set()
        self.last_memory: dict[int, dict] = {i: info["memory"] for i, info in enumerate(self.info)}

    @property
    def nodes_used(self) -> int:
        return len(self.used_nodes)

    def host_of(self, pid: int) -> int:
        return pid % len(self.actors)

    def _death(self, index: int, err: Exception) -> str:
        """Which host died, what it held, and the likely cause, with the numbers."""
        memory = self.last_memory.get(index, {})
        budget = self.scenario["hosts"]["memory_mb"]
        text = str(err)
        if index in self.killed:
            cause = "killed by fault injection (faults.kill_host)"
        elif "memory" in text.lower() or "oom" in text.lower() or (
                budget and memory.get("rss_mb", 0) > 0.9 * budget):
            cause = "likely out of memory"
        elif "ray.kill" in text or "killed" in text.lower() or "restarted" in text.lower():
            cause = "killed (ray.kill, or its process ended)"
        else:
            cause = "crashed"
        held = sorted(self.held[index])
        budget_text = f"{budget:.0f} MiB (hosts.memory_mb)" if budget else "no hosts.memory_mb budget"
        return (f"host #{index} (node {self.info[index]['node_id'][:8]}, process {self.info[index]['pid']}) "
                f"died: {cause}. It held participants {held[:20]}{' ...' if len(held) > 20 else ''}; "
                f"its last measured memory was {memory.get('rss_mb', 0):.0f} MiB of {budget_text}. "
                f"Ray restarts it; its participants return from their last checkpoint. "
                f"Ray said: {text.splitlines()[0] if text else type(err).__name__}")

    def _gather(self, calls: dict, on_done=None) -> tuple[list[dict], dict[int, str]]:
        """Wait for one call per participant; a dead host or a timeout is a failure, counted."""
        results, failures, reported = [], {}, set()
        pending = list(calls)
        deadline = time.monotonic() + self.timeout_s
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not done:
                for ref in pending:
                    failures.update({pid: f"no answer within hosts.round_timeout_s={self.timeout_s:.0f} s"
                                     for pid in calls[ref][1]})
                break
            index, pids = calls[done[0]]
            try:
                answer = ray.get(done[0])
                results += answer
                self.used_nodes.add(self.info[index]["node_id"])
                self.last_memory[index] = answer[-1].get("host_memory") or self.last_memory[index]
            except RayActorError as err:
                failures.update({pid: f"host #{index} died" for pid in pids})
                self.restarting.add(index)
                if index not in reported:
                    reported.add(index)
                    self.log(self._death(index, err))
            except RayTaskError as err:
                failures.update({pid: f"error on host #{index}: {err.cause!r}" for pid in pids})
            if on_done:
                on_done(len(results))
        return results, failures

    def _await_restarts(self) -> None:
        """Before sending more work: wait until Ray has restarted the hosts that died."""
        for index in sorted(self.restarting):
            deadline = time.monotonic() + self.timeout_s
            while True:
                try:
                    self.info[index] = ray.get(self.actors[index].info.remote(), timeout=self.timeout_s)
                    self.log(f"host #{index} restarted (process {self.info[index]['pid']})")
                    break
                except (RayActorError, GetTimeoutError) as err:
                    if time.monotonic() > deadline or "restart" not in str(err).lower():
                        self.log(f"host #{index} did not come back: {str(err).splitlines()[0]}")
                        break
                    time.sleep(0.5)
        self.restarting.clear()
        self.killed.clear()

    def train(self, method, round_number, pids, shared, sleep_s=None, on_done=None, kill_hosts=()):
        self._await_restarts()
        shared_ref = [ray.put(shared)] if shared is not None else [None]
        calls = {}
        for pid in pids:  # one call per participant: progress per participant, sticky hosts
            index = self.host_of(pid)
            self.held[index].add(pid)
            calls[self.actors[index].train.remote(method, round_number, [pid], shared_ref, sleep_s)] = (index, [pid])
        for index in kill_hosts:  # fault injection: the host dies while the round runs
            if index < len(self.actors):
                self.killed.add(index)
                ray.kill(self.actors[index], no_restart=False)
        return self._gather(calls, on_done)

    def evaluate(self, method, pids, shared, final, subject=None):
        self._await_restarts()
        shared_ref = [ray.put(shared)] if shared is not None else [None]
        if subject is not None:  # one model (the centralized trainer's) on every test split
            index = self.host_of(subject)
            return self._gather({self.actors[index].evaluate.remote(
                method, pids, shared_ref, final, subject): (index, list(pids))})
        calls = {self.actors[self.host_of(pid)].evaluate.remote(method, [pid], shared_ref, final):
                 (self.host_of(pid), [pid]) for pid in pids}
        return self._gather(calls)

    def _each_host(self, call: str, *args) -> list:
        self._await_restarts()
        refs = [getattr(actor, call).remote(*args) for actor in self.actors]
        answers = []
        for index, ref in enumerate(refs):
            try:
                answers.append(ray.get(ref, timeout=self.timeout_s))
            except (RayActorError, GetTimeoutError) as err:
                self.log(f"host #{index} could not {call}: {type(err).__name__}: {str(err).splitlines()[0]}")
                answers.append(None)
        return answers

    def checkpoint(self, tick):
        self._each_host("checkpoint", tick)

    def release(self, method):
        self._each_host("release", method)
