"""The pool of ParticipantActors and the Ray executor the round loop runs participants on.

Where the actors go and how many there are is the run's placement (actors/placement.py).
Participants stick to one actor for the whole run (assigned round-robin by id), so their
private state never moves. The round's shared state is put in the object store once and its
reference passed to every call; ray.wait with the round timeout is a wall-clock safety net
only (simulated time decides who is late, in fedgrow_ray.rounds).

Infrastructure faults change nothing: Ray restarts an actor that dies (max_restarts=-1), and
the calls the dead one had not answered are sent again, to the restarted actor, which loads
the participants' state versions each call names (fedgrow_ray.participant), so the re-run
gives the very answer the lost one would have. One participant's work is sent at most
MAX_RETRIES more times in a call (a host that dies each time it runs it: the participant then
counts as failed, with the reason in events.log). Work still out at hosts.round_timeout_s is
cancelled (ray.cancel: a queued call never runs, a running one stops at its next training
step), and its participants go on from their state before the round.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from .participant import ParticipantActor

MAX_RETRIES = 3  # re-sends of one participant's work, within one round, after its host died


@dataclass
class Call:
    """One call to a host, and how to send it again."""
    index: int
    pids: list[int]
    send: Callable[[], "ray.ObjectRef"]
    attempt: int = 0


def start_hosts(scenario: dict, cache_dir: str, state_location: str, run_id: str, placement, log) -> list:
    """Create the run's participant hosts where `placement` puts them, without waiting: their
    processes start, import and find the prepared data while the driver actor starts beside them
    (run_on_ray), instead of after it. Returns the actor handles, host i first."""
    return [ParticipantActor.options(name=f"fedgrow-host-{run_id}-{i}", **options).remote(
                scenario, cache_dir, state_location, i, options["num_gpus"] > 0)
            for i, options in enumerate(placement.hosts(scenario, log))]


class RayExecutor:
    def __init__(self, scenario: dict, actors: list, log, start_timeout_s: float = 300.0):
        """`actors`: the run's participant hosts (start_hosts), possibly still starting."""
        self.scenario, self.log, self.actors = scenario, log, actors
        self.timeout_s = scenario["hosts"]["round_timeout_s"]
        size = len(actors)
        try:
            self.info = ray.get([a.info.remote() for a in self.actors], timeout=start_timeout_s)
        except GetTimeoutError:
            hosts = scenario["hosts"]
            raise RuntimeError(
                f"could not start {size} participant hosts (hosts.num_cpus={hosts['num_cpus']:g}, "
                f"hosts.num_gpus={hosts['num_gpus']:g}, hosts.memory_mb={hosts['memory_mb']}) within "
                f"{start_timeout_s:.0f} s; the cluster offers {ray.cluster_resources()}. Lower "
                f"hosts.actors, hosts.num_cpus or hosts.memory_mb.") from None
        log(f"{size} participant hosts started: " + ", ".join(
            f"#{i['index']} node {i['node_id'][:8]} process {i['pid']} {i['device']}" for i in self.info))
        self.used_nodes: set[str] = set()
        self.held: dict[int, set[int]] = {i: set() for i in range(size)}
        self.killed: set[int] = set()    # by fault injection
        self.restarts = 0                # hosts seen back after dying (their work was sent again)
        self.down: dict[int, dict] = {}  # host -> the calls waiting for it to come back
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
        elif "unavailable" in text.lower():
            cause = "it stopped answering (its process ended, or its node was lost)"
        else:
            cause = "crashed"
        held = sorted(self.held[index])
        budget_text = f"{budget:.0f} MiB (hosts.memory_mb)" if budget else "no hosts.memory_mb budget"
        return (f"host #{index} (node {self.info[index]['node_id'][:8]}, process {self.info[index]['pid']}) "
                f"died: {cause}. It held participants {held[:20]}{' ...' if len(held) > 20 else ''}; "
                f"its last measured memory was {memory.get('rss_mb', 0):.0f} MiB of {budget_text}. "
                f"Ray restarts it; its unanswered work is sent again, from the participants' stored "
                f"state. Ray said: {text.splitlines()[0] if text else type(err).__name__}")

    def _went_down(self, index: int, err: Exception) -> None:
        """A host's call failed because the host is gone: report it once, and probe it until
        Ray has it back."""
        if index not in self.down:
            self.down[index] = {"waiting": [], "probe": None, "next_probe": 0.0}
            self.log(self._death(index, err))
            self.killed.discard(index)

    def _came_back(self, index: int, info: dict) -> list[Call]:
        """The host answers again: count the restart, and return the calls it must redo."""
        if info["pid"] != self.info[index]["pid"]:
            self.restarts += 1
        self.info[index] = info
        self.log(f"host #{index} restarted (node {info['node_id'][:8]}, process {info['pid']}); its "
                 f"unanswered work is sent again")
        return self.down.pop(index)["waiting"]

    def _restarted_between_calls(self, index: int, pid: int) -> None:
        """A host answered from another process than before: it died while it had no call (a
        ray.kill between rounds, say) and Ray restarted it; no call failed, since the new process
        loaded its participants' stored state when asked. Counted as a restart all the same."""
        self.restarts += 1
        self.log(f"host #{index} was restarted between calls (process {self.info[index]['pid']} -> {pid}); "
                 f"its participants were loaded from their stored state")
        try:
            self.info[index] = ray.get(self.actors[index].info.remote(), timeout=60)
        except (RayActorError, GetTimeoutError):  # down again: its next call says so
            self.info[index] = {**self.info[index], "pid": pid}

    def _gather(self, calls: list[Call], on_done=None, after_sending=None) -> tuple[list[dict], dict[int, str]]:
        """Send the calls and wait for their answers (lists of per-participant dicts). A call
        whose host died waits until Ray
        has restarted the host (probed with `info`), then is sent again, at most MAX_RETRIES
        times; calls still out at the round timeout are cancelled. What never answered is a
        failure, with the reason."""
        results, failures = [], {}
        pending: dict = {}        # call ref -> Call
        probes: dict = {}         # probe ref -> host index
        for down in self.down.values():  # probes of an earlier call are not waited for here
            down["probe"] = None

        def send(call: Call) -> None:
            if call.index in self.down:
                self.down[call.index]["waiting"].append(call)
            else:
                pending[call.send()] = call

        for call in calls:
            send(call)
        if after_sending:
            after_sending()
        deadline = time.monotonic() + self.timeout_s
        while pending or self.down and any(d["waiting"] for d in self.down.values()):
            now = time.monotonic()
            for index, down in self.down.items():
                if down["waiting"] and down["probe"] is None and now >= down["next_probe"]:
                    down["probe"] = self.actors[index].info.remote()
                    probes[down["probe"]] = index
            waits = [d["next_probe"] for d in self.down.values() if d["waiting"] and d["probe"] is None]
            until = min([deadline] + waits)
            if not pending and not probes:  # only calls waiting for a host to come back
                time.sleep(max(0.0, until - time.monotonic()))
                done = []
            else:
                done, _ = ray.wait(list(pending) + list(probes), num_returns=1,
                                   timeout=max(0.0, until - time.monotonic()))
            if not done:
                if time.monotonic() < deadline:
                    continue  # time for a probe
                for ref, call in pending.items():
                    ray.cancel(ref)
                    failures.update({pid: f"no answer within hosts.round_timeout_s={self.timeout_s:g} s "
                                          f"(host #{call.index}); its work was cancelled and it goes on "
                                          f"from its state before the round" for pid in call.pids})
                for index, down in self.down.items():
                    for call in down["waiting"]:
                        failures.update({pid: f"host #{index} did not come back within hosts.round_timeout_s="
                                              f"{self.timeout_s:g} s" for pid in call.pids})
                    down["waiting"] = []
                break
            ref = done[0]
            if ref in probes:
                index = probes.pop(ref)
                self.down[index]["probe"] = None
                try:
                    info = ray.get(ref)
                except RayActorError:
                    self.down[index]["next_probe"] = time.monotonic() + 0.5
                    continue
                for call in self._came_back(index, info):
                    send(call)
                continue
            call = pending.pop(ref)
            try:
                answer = ray.get(ref)
            except RayActorError as err:
                self._went_down(call.index, err)
                if call.attempt < MAX_RETRIES:
                    call.attempt += 1
                    send(call)
                else:
                    failures.update({pid: f"host #{call.index} died each of the {call.attempt + 1} times "
                                          f"it ran this work (MAX_RETRIES={MAX_RETRIES} in actors/pool.py); "
                                          f"last: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
                                     for pid in call.pids})
                continue
            except RayTaskError as err:
                failures.update({pid: f"error on host #{call.index}: {err.cause!r}" for pid in call.pids})
                continue
            results += answer
            self.used_nodes.add(self.info[call.index]["node_id"])
            memory = answer[-1].get("host_memory") if answer else None
            if memory:
                if memory["pid"] != self.info[call.index]["pid"]:
                    self._restarted_between_calls(call.index, memory["pid"])
                self.last_memory[call.index] = memory
            if on_done:
                on_done(len(results))
        return results, failures

    def train(self, method, round_number, pids, shared, sleep_s=None, on_done=None, kill_hosts=(),
              expected=None, cohort=None):
        shared_ref = [ray.put(shared)] if shared is not None else [None]
        calls = []
        for pid in pids:  # one call per participant: progress per participant, sticky hosts
            index = self.host_of(pid)
            self.held[index].add(pid)
            mine = None if expected is None else {pid: expected[pid]}
            calls.append(Call(index, [pid], lambda a=self.actors[index], p=pid, e=mine:
                              a.train.remote(method, round_number, [p], shared_ref, sleep_s, e, cohort)))
        # Fault injection: the hosts die while the round runs, right after the work is sent.
        return self._gather(calls, on_done, (lambda: self._kill(kill_hosts)) if kill_hosts else None)

    def train_reduced(self, method, round_number, pids, shared, sleep_s=None, on_done=None, kill_hosts=(),
                      expected=None):
        """One call per participant, as train, but each update stays on its host, screened
        (ParticipantHost.train_held); once the round's answers are in, one partial_sum call per
        host for the participants whose accepted answers arrived, so the driver receives hosts x
        update size, and work written off at the timeout takes no co-hosted participant's with
        it. A host restarted in between no longer holds some updates: their participants are
        trained again (the same updates) and the host asked again, at most MAX_RETRIES times."""
        shared_ref = [ray.put(shared)]

        def calls(some: list[int]) -> list[Call]:
            out = []
            for pid in some:
                index = self.host_of(pid)
                self.held[index].add(pid)
                told = None if expected is None else {pid: expected[pid]}
                out.append(Call(index, [pid], lambda a=self.actors[index], p=pid, e=told:
                                a.train_held.remote(method, round_number, [p], shared_ref, sleep_s, e)))
            return out

        results, failures = self._gather(calls(pids), on_done,
                                          (lambda: self._kill(kill_hosts)) if kill_hosts else None)
        accepted: dict[int, list[int]] = {}
        for result in results:
            if result["outcome"] == "accepted":
                accepted.setdefault(self.host_of(result["id"]), []).append(result["id"])
        partials: dict[int, dict] = {}
        for _ in range(MAX_RETRIES + 1):
            asks = [Call(index, held, lambda a=self.actors[index], h=held:
                         a.partial_sum.remote(method, round_number, h))
                    for index, held in sorted(accepted.items()) if held and index not in partials]
            if not asks:
                break
            answers, lost = self._gather(asks)
            failures.update(lost)
            missing = []
            for answer in answers:
                if answer["missing"]:
                    missing += answer["missing"]
                elif answer["partial"] is not None:
                    partials[answer["index"]] = answer["partial"]
            for index in {self.host_of(pid) for pid in lost}:
                accepted.pop(index, None)
            if missing:
                _, retrain_failures = self._gather(calls(missing))
                failures.update(retrain_failures)
                for held in accepted.values():
                    held[:] = [pid for pid in held if pid not in retrain_failures]
        for index, held in accepted.items():
            if index not in partials:
                failures.update({pid: f"host #{index} lost this round's updates more than MAX_RETRIES="
                                      f"{MAX_RETRIES} times" for pid in held if pid not in failures})
        results = [r for r in results if r["id"] not in failures]
        return results, [partials[index] for index in sorted(partials)], failures

    def _kill(self, kill_hosts) -> None:
        for index in kill_hosts:
            if index < len(self.actors):
                self.killed.add(index)
                ray.kill(self.actors[index], no_restart=False)

    def evaluate(self, method, pids, shared, final, subject=None, expected=None, export=None):
        shared_ref = [ray.put(shared)] if shared is not None else [None]
        if subject is not None:  # one model (the centralized trainer's) on every test split
            index = self.host_of(subject)
            return self._gather([Call(index, list(pids), lambda a=self.actors[index]: a.evaluate.remote(
                method, pids, shared_ref, final, subject, expected))])
        calls = [Call(self.host_of(pid), [pid], lambda a=self.actors[self.host_of(pid)], p=pid: a.evaluate.remote(
                     method, [p], shared_ref, final, None, None if expected is None else {p: expected[p]},
                     export))
                 for pid in pids]
        return self._gather(calls)

    def release(self, method):
        refs = [actor.release.remote(method) for actor in self.actors]
        for index, ref in enumerate(refs):
            try:
                ray.get(ref, timeout=self.timeout_s)
            except (RayActorError, GetTimeoutError) as err:
                self.log(f"host #{index} could not release {method}: {type(err).__name__}: "
                         f"{str(err).splitlines()[0]}")
