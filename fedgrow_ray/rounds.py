"""Where a round is scheduled. For each round of each method: sample participants, set aside
those whose memory cannot hold the method and those unreachable this round, put the rest on
the virtual clock, drop the ones that would miss the deadline (before running them: their
update would be discarded anyway), run the others through an executor, validate the updates,
aggregate, evaluate on schedule, record one metrics row, and checkpoint on schedule; and
whether the next round still fits the method's budget (rounds, bytes, FLOPs or simulated time).

The executor decides where participants run: `LocalExecutor` (below) in this process, one
after another; the Ray executor in actors/ on a pool of participant actors. Both run the same
`ParticipantHost` code, so the results do not depend on which one is used.

Nothing here keeps random state: every draw derives from (seed, participant, round, purpose),
so a run resumed from a checkpoint continues exactly as if it had never stopped. Participants'
private state is named by versions (`StateVersions`): every call says which version each
participant starts from, so a host that died, or work that was written off, changes nothing.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from .aggregation import finish_partial_sums
from .devices import apply_deadline, is_available, sample_participants, simulated_time
from .dual_ligo import state_sha256
from .experiment import CENTER, Experiment
from .export import EXPORT_DIR, export_global_ligo, exported
from .methods import get_method
from .metrics import majority_accuracy, state_bytes
from .participant import ParticipantHost, state_location
from .privacy.attacks import KEYS as MEMBERSHIP_KEYS
from .privacy.mechanisms import ServerPrivacy, active as privacy_active
from .reduction import UpdateScreen, reduces_on_hosts


class StateVersions:
    """For every participant, the version of its private state (participant.state_version)
    that the driver has accepted, i.e. the result of its last work whose answer arrived, and
    the version the driver's last checkpoint names. Work whose answer never arrived (a dead
    host, a timeout) is not accepted: its participant goes on from its previous version."""

    def __init__(self, current: dict | None = None):
        self.current: dict[int, str | None] = dict(current or {})
        self.checkpointed = dict(self.current)

    def expected(self, pids) -> dict[int, tuple[str | None, str | None]]:
        """What a host is told: per participant, (the version to start from, the version to keep
        for a resume)."""
        return {pid: (self.current.get(pid), self.checkpointed.get(pid)) for pid in pids}

    def accept(self, results: list[dict]) -> None:
        for result in results:
            if "subject" in result:  # the pooled trainer's own state (centralized)
                self.current[result["subject"]] = result["subject_version"]
            elif "version" in result:
                self.current[result["id"]] = result["version"]


class Executor(Protocol):
    nodes_used: int
    restarts: int  # participant hosts that died and were replaced so far (their work re-run)

    def train(self, method: str, round_number: int, pids: list[int], shared: dict | None,
              sleep_s: dict[int, float] | None, on_done: Callable[[int], None] | None,
              kill_hosts: list[int], expected: dict | None, cohort: list[int] | None = None
              ) -> tuple[list[dict], dict[int, str]]:
        """Results per participant that finished, and {participant: reason} for failures.
        `kill_hosts` (fault injection) names hosts that die while the round runs; `expected`
        is StateVersions.expected for the participants; `cohort` is passed to every host
        (ParticipantHost.train)."""

    def train_reduced(self, method: str, round_number: int, pids: list[int], shared: dict,
                      sleep_s: dict[int, float] | None, on_done: Callable[[int], None] | None,
                      kill_hosts: list[int], expected: dict | None
                      ) -> tuple[list[dict], list[dict], dict[int, str]]:
        """`train` with the updates reduced on the hosts (fedgrow_ray.reduction): per-participant
        metadata, one partial sum per host that accepted any update (in host order), failures.
        A partial sum holds exactly the accepted participants whose answers arrived: one written
        off (failed) never takes a co-hosted participant's work with it."""

    def evaluate(self, method: str, pids: list[int], shared: dict | None, final: bool,
                 subject: int | None = None, expected: dict | None = None, export: dict | None = None
                 ) -> tuple[list[dict], dict[int, str]]:
        """Each participant's test split with its own model, or with `subject`'s; `export`
        (with `final`): the participants whose final models their hosts write out."""

    def release(self, method: str) -> None: ...


class LocalExecutor:
    """Every participant in this process, one after another: no Ray. The baseline for the
    simulator's overhead and the easiest place to debug a method. A host killed by fault
    injection is replaced the way Ray replaces an actor: a new ParticipantHost, which loads
    participants from the state location, redoes the lost work."""

    nodes_used = 1

    def __init__(self, scenario: dict, data_path: str, device: str = "cpu", state_dir: str | None = None):
        self._host_args = (scenario, data_path, device, state_dir)
        self.host = ParticipantHost(*self._host_args)
        self.restarts = 0

    def train(self, method, round_number, pids, shared, sleep_s=None, on_done=None, kill_hosts=(),
              expected=None, cohort=None):
        results = []
        for position, pid in enumerate(pids):
            if kill_hosts and position == min(1, len(pids) - 1):
                # The only host dies with this participant's work under way (after the first
                # participant's answer is in): what it held in memory is gone.
                self.host = ParticipantHost(*self._host_args)
                self.restarts += 1
            results += self.host.train(method, round_number, [pid], shared, sleep_s,
                                       None if expected is None else {pid: expected[pid]}, cohort)
            if on_done:
                on_done(len(results))
        return results, {}

    def train_reduced(self, method, round_number, pids, shared, sleep_s=None, on_done=None, kill_hosts=(),
                      expected=None):
        mine = lambda some: None if expected is None else {p: expected[p] for p in some}  # noqa: E731
        results = []
        for position, pid in enumerate(pids):
            if kill_hosts and position == min(1, len(pids) - 1):
                # As in train; the updates the dead host held are trained again below.
                self.host = ParticipantHost(*self._host_args)
                self.restarts += 1
            results += self.host.train_held(method, round_number, [pid], shared, sleep_s, mine([pid]))
            if on_done:
                on_done(len(results))
        accepted = [r["id"] for r in results if r["outcome"] == "accepted"]
        answer = self.host.partial_sum(method, round_number, accepted)
        if answer["missing"]:
            self.host.train_held(method, round_number, answer["missing"], shared, sleep_s, mine(answer["missing"]))
            answer = self.host.partial_sum(method, round_number, accepted)
        return results, [answer["partial"]] if answer["partial"] else [], {}

    def evaluate(self, method, pids, shared, final, subject=None, expected=None, export=None):
        return self.host.evaluate(method, pids, shared, final, subject, expected, export), {}

    def release(self, method):
        self.host.release(method)


def _mean(values):
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else None


def _std(values):
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.std(values)) if values else None


def budget_of(scenario: dict) -> tuple[str, float]:
    """(kind, limit): the budget.* key that is set, or ("rounds", rounds)."""
    for kind, limit in scenario["budget"].items():
        if limit is not None:
            return kind, limit
    return "rounds", scenario["rounds"]


class MethodRun:
    """The rounds of one method. `record(row)` receives each metrics row, `log(text)` notices,
    `progress(event)` updates for a progress display; `resume` is a snapshot to continue from.

    Costs: a round charges the FLOPs of the participants it keeps (their round's training, and
    the setup of those taking part for the first time: pre-training, local stage), the bytes
    they download and upload, and simulated time: the slowest newcomer's setup on its own
    device (setup_sim_s), then the round under its deadline (sim_time_s). The final evaluation
    adds the end-of-run step (fine-tuning). Evaluation itself is measurement and costs nothing,
    including the setup a participant that never trained needs in order to be scored.

    Budgets: with budget.bytes / flops / sim_time_s, after each round's aggregation the run
    plans the next round (a pure function of the state, memoised for that round) and stops if
    its cost, plus the end-of-run step, would take the spend past the limit; the round just run
    is then the final one. `rounds` is always the cap."""

    def __init__(self, experiment: Experiment, method_name: str, executor: Executor,
                 record: Callable[[dict], None], log: Callable[[str], None],
                 progress: Callable[[dict], None] | None = None, resume: dict | None = None,
                 versions: StateVersions | None = None, export_dir: str | None = None):
        self.exp, self.executor = experiment, executor
        self.export_dir = export_dir
        self.versions = versions if versions is not None else StateVersions()
        self.method = get_method(method_name, experiment)
        self.record, self.log = record, log
        self.progress = progress or (lambda event: None)
        self.scenario = experiment.scenario
        self.budget_kind, self.budget_limit = budget_of(self.scenario)
        self.shared = self.method.initial_shared()
        # Download accounting: a participant receives the shared tensors that changed since the
        # version it last received (the frozen intermediate model of the reference-code
        # protocol, say, only once).
        self.changed_round = {name: 0 for name in self.shared or {}}
        self.received: dict[int, int] = {}
        self.shared_names: set[str] = set()
        self.totals = {"bytes_up": 0, "bytes_down": 0, "flops": 0.0, "sim_time_s": 0.0, "wall_s": 0.0}
        self.set_up: set[int] = set()  # participants whose setup has been charged
        self.stopped = False           # the final round (or the round-0 evaluation) is done
        self.last_eval: dict | None = None
        self.sampled: dict[int, list[int]] = {}
        self.round = 0
        self._excluded_reason: dict[int, str | None] = {}
        self._plans: dict[int, dict] = {}
        self._majority: dict[int, float] = {}
        self._lost = 0  # participants whose state was not found this round (rebuilt from scratch)
        self._restarts_before = 0
        # privacy.dp / privacy.secure_aggregation, for a method that shares (privacy/mechanisms.py)
        self.privacy = (ServerPrivacy(self.scenario, self.method.stream)
                        if self.method.shares and privacy_active(self.scenario) else None)
        self.screen = UpdateScreen(self.scenario, experiment.seed, self.method)
        self.reduce = reduces_on_hosts(self.method, self.scenario, self.privacy)
        if resume is not None:
            self.shared, self.round = resume["shared"], resume["round"]
            self.shared_names = set(resume["shared_names"])
            self.totals, self.last_eval = dict(resume["totals"]), resume["last_eval"]
            self.sampled = {int(k): v for k, v in resume["sampled"].items()}
            self.changed_round, self.received = dict(resume["changed_round"]), dict(resume["received"])
            self.set_up, self.stopped = set(resume["set_up"]), resume["stopped"]
            if self.privacy is not None:
                self.privacy.restore(resume["privacy"])

    def snapshot(self) -> dict:
        """What the driver checkpoints for this method after a round."""
        return {"shared": self.shared, "round": self.round, "shared_names": sorted(self.shared_names),
                "totals": dict(self.totals), "last_eval": self.last_eval, "sampled": dict(self.sampled),
                "changed_round": dict(self.changed_round), "received": dict(self.received),
                "set_up": sorted(self.set_up), "stopped": self.stopped,
                "privacy": self.privacy.snapshot() if self.privacy is not None else None}

    def download_bytes(self, pid: int) -> int:
        have = self.received.get(pid, -1)
        return sum(t.numel() * t.element_size() for name, t in (self.shared or {}).items()
                   if self.changed_round[name] > have)

    # ---- who can take part --------------------------------------------------------------------
    def exclusion(self, pid: int) -> str | None:
        """Why a participant cannot run this method (memory), or None; logged once."""
        if self.method.centralized:  # participants only lend their data and test splits
            return None
        if pid not in self._excluded_reason:
            shape, reason = self.exp.small_shape(pid)
            if shape is None:
                why = f"participant {pid} excluded: {reason}"
            else:
                memory, how = self.method.memory_plan(pid)
                why = None if memory is not None else f"participant {pid} excluded from {self.method.name}: {how}"
                if why is None and reason.startswith("given"):
                    self.log(f"participant {pid}: {reason}")
                if memory is not None and memory.checkpointing:
                    self.log(f"participant {pid} ({self.method.name}): {how}")
            self._excluded_reason[pid] = why
            if why:
                self.log(why)
        return self._excluded_reason[pid]

    def eval_participants(self) -> list[int]:
        count = self.scenario["eval"]["participants"]
        ids = self.exp.participant_ids
        if count is not None and count < len(ids):
            ids = sample_participants(ids, 0, self.exp.seed, count=count)
        return [pid for pid in ids if self.exclusion(pid) is None]

    # ---- costs --------------------------------------------------------------------------------
    def _seconds(self, pid: int, flops: float) -> float:
        return simulated_time(self.exp.profile(pid), flops, 0, 0,
                              self.scenario["devices"]["reference_gflops"]).total_s

    def finish_cost(self) -> dict:
        """FLOPs and simulated seconds of the end-of-run step over the evaluated participants
        (fine-tuning; for centralized, also the personal fine-tune of each participant's copy)."""
        pids = self.eval_participants()
        if self.method.centralized:
            flops = self.method.finish_flops(CENTER) + len(pids) * self.method.personal_flops()
            return {"flops": flops, "sim_s": self._seconds(CENTER, flops)}
        if not self.scenario["training"]["finetune_steps"]:
            return {"flops": 0.0, "sim_s": 0.0}
        each = {pid: self.method.finish_flops(pid) for pid in pids}
        return {"flops": float(sum(each.values())),
                "sim_s": max((self._seconds(pid, f) for pid, f in each.items()), default=0.0)}

    def spent(self) -> float:
        return {"rounds": self.round, "bytes": self.totals["bytes_up"] + self.totals["bytes_down"],
                "flops": self.totals["flops"], "sim_time_s": self.totals["sim_time_s"]}[self.budget_kind]

    def fits(self, round_number: int, rounds: int) -> bool:
        """Whether round `round_number` can run: within the rounds cap and, with a budget,
        the spend so far plus its planned cost plus the end-of-run step stays within it."""
        if round_number > rounds:
            return False
        if self.budget_kind == "rounds":
            return True
        plan, finish = self.plan(round_number), self.finish_cost()
        key = {"bytes": ("bytes", None), "flops": ("flops", "flops"), "sim_time_s": ("sim_s", "sim_s")}
        cost_key, finish_key = key[self.budget_kind]
        total = self.spent() + plan[cost_key] + (finish[finish_key] if finish_key else 0)
        if total <= self.budget_limit:
            return True
        if round_number > 1:
            self.log(f"{self.method.name}: round {round_number} would bring {self.budget_kind} to "
                     f"{total:.6g} > budget.{self.budget_kind}={self.budget_limit:.6g}; round "
                     f"{round_number - 1} is the last")
        return False

    # ---- one round ----------------------------------------------------------------------------
    def plan(self, round_number: int) -> dict:
        """Who is asked, who is set aside and why, each runner's simulated time, and what the
        round costs; a pure function of the state, memoised until that round runs."""
        if round_number not in self._plans:
            self._plans = {round_number: self._plan(round_number)}
        return self._plans[round_number]

    def _plan(self, round_number: int) -> dict:
        reference = self.scenario["devices"]["reference_gflops"]
        if self.method.centralized:
            flops = self.method.round_flops(None)
            time_ = simulated_time(self.exp.profile(CENTER), flops, 0, 0, reference)
            plan = {"asked": [CENTER], "excluded": [], "reachable": [CENTER], "times": {CENTER: time_},
                    "download": {CENTER: 0}, "kept": [CENTER], "missed_deadline": [], "not_needed": [],
                    "round_time_s": time_.total_s, "upload": 0, "flops_each": {CENTER: flops}}
        else:
            plan = self._participants_plan(round_number, reference)
        newcomers = [p for p in plan["kept"] if p not in self.set_up]
        setup = {p: self.method.setup_flops(p) for p in newcomers}
        plan["newcomers"] = newcomers
        plan["flops"] = float(sum(plan["flops_each"].values()) + sum(setup.values()))
        plan["setup_sim_s"] = max((self._seconds(p, f) for p, f in setup.items()), default=0.0)
        plan["sim_s"] = plan["setup_sim_s"] + plan["round_time_s"]
        plan["bytes"] = len(plan["kept"]) * plan["upload"] + sum(plan["download"].values())
        return plan

    def _participants_plan(self, round_number: int, reference: float) -> dict:
        sampling, seed = self.scenario["sampling"], self.exp.seed
        asked = sample_participants(self.exp.participant_ids, round_number, seed,
                                    fraction=sampling["fraction"], count=sampling["count"],
                                    over_selection=sampling["over_selection"])
        excluded = [p for p in asked if self.exclusion(p)]
        reachable = [p for p in asked if p not in excluded
                     and is_available(self.exp.profile(p), p, round_number, seed)]
        times, download = {}, {pid: self.download_bytes(pid) for pid in reachable}
        upload = self.method.upload_bytes(self.shared)
        flops_each = {}
        for pid in reachable:
            flops_each[pid] = self.method.participant_round_flops(pid)
            times[pid] = simulated_time(self.exp.profile(pid), flops_each[pid], upload, download[pid], reference)
        keep_first = None
        if sampling["over_selection"] > 1.0:
            n = len(self.exp.participant_ids)
            keep_first = sampling["count"] or (
                max(1, math.floor(sampling["fraction"] * n + 0.5)) if sampling["fraction"] else n)
        kept, late, round_time = apply_deadline(times, self.scenario["deadline_s"], keep_first)
        deadline = self.scenario["deadline_s"]
        missed = [p for p in late if deadline is not None and times[p].total_s > deadline]
        return {"asked": asked, "excluded": excluded, "reachable": reachable, "times": times,
                "download": download, "kept": kept, "missed_deadline": missed,
                "not_needed": [p for p in late if p not in missed], "round_time_s": round_time,
                "upload": upload, "flops_each": {p: flops_each[p] for p in kept}}

    def _accept(self, results: list[dict], when: str) -> None:
        """Record the participants' new state versions; say which were restored and, loudly,
        which could not be (their state was rebuilt from scratch)."""
        self.versions.accept(results)
        for result in results:
            pid = result.get("subject", result["id"])
            if result.get("state") == "restored":
                self.log(f"{self.method.name} {when}: participant {pid} restored from its stored state")
            elif result.get("state") == "lost":
                self._lost += 1
                self.log(f"{self.method.name} {when}: PARTICIPANT {pid} RESET: its private state was "
                         f"not found ({result['lost']}); it was rebuilt from scratch, so this run's "
                         f"results from here on differ from a fault-free run's (hosts.state_uri "
                         f"must be a location every node reaches)")

    def _gather_per_participant(self, round_number: int, plan: dict, on_done, kill) -> dict:
        """Every update travels to the driver, which screens and aggregates them (robust and
        plugin aggregators, secure aggregation, DP). The outcome, as _gather_on_hosts's."""
        kept = plan["kept"]
        masked = self.privacy is not None and self.privacy.masked
        results, failures = self.executor.train(self.method.name, round_number, kept, self.shared,
                                                self._sleep_s(plan), on_done, kill, self.versions.expected(kept),
                                                cohort=kept if masked else None)
        results.sort(key=lambda r: r["id"])  # arrival order varies; float sums must not
        driver_bytes_in = sum(state_bytes(r["update"]) for r in results)
        if self.privacy is not None:  # where updates arrive: masked ones only, under secure aggregation
            for result in results:
                if result["update"] is not None:
                    self.privacy.check_arrival(result["update"])
        self._accept(results, f"round {round_number}")
        self.screen.corrupt(results, round_number)
        lost = self.screen.lost(results, round_number)
        for lost_upload in lost:
            results.remove(lost_upload)
            failures[lost_upload["id"]] = "upload lost (faults.drop_upload)"
            self.shared_names.update(lost_upload["update"])  # it left the participant all the same
        accepted, accepted_ids, rejected = [], [], []
        for result in results:
            update = result["update"]
            if update is None:
                continue
            self.shared_names.update(update)
            # A masked update cannot be checked one by one (the server sees only the sum).
            problem = None if masked else self.screen.problem(update, self.shared)
            if problem:
                rejected.append((result["id"], problem))
            else:
                accepted.append((update, result["samples"]))
                accepted_ids.append(result["id"])
        privacy_cost = {"bytes_up": 0, "bytes_down": 0, "secagg_s": 0.0}
        aggregated = None
        if accepted and self.privacy is not None:
            aggregated, privacy_cost = self.privacy.aggregate(
                self.shared, list(zip(accepted_ids, [u for u, _ in accepted])), round_number,
                len(plan["asked"]), kept, [r["id"] for r in results + lost])
        elif accepted:
            aggregated = self.method.aggregate(self.shared, accepted)
        upload = self.privacy.upload_bytes if self.privacy is not None else state_bytes
        return {"results": results, "failures": failures, "rejected": rejected, "accepted": len(accepted),
                "aggregated": aggregated, "privacy_cost": privacy_cost, "driver_bytes_in": driver_bytes_in,
                "bytes_up": sum(upload(r["update"]) for r in results + lost if r["update"] is not None)}

    def _gather_on_hosts(self, round_number: int, plan: dict, on_done, kill) -> dict:
        """Each host screens its participants' updates and sends one weighted partial sum
        (fedgrow_ray.reduction); the driver adds the partial sums in host order. Per
        participant, only metadata arrives (samples, loss, upload bytes, outcome)."""
        kept = plan["kept"]
        results, partials, failures = self.executor.train_reduced(
            self.method.name, round_number, kept, self.shared, self._sleep_s(plan), on_done, kill,
            self.versions.expected(kept))
        results.sort(key=lambda r: r["id"])
        self._accept(results, f"round {round_number}")
        lost = [r for r in results if r["outcome"] == "lost"]
        for lost_upload in lost:
            results.remove(lost_upload)
            failures[lost_upload["id"]] = "upload lost (faults.drop_upload)"
        for result in results + lost:
            self.shared_names.update(result["names"])
        aggregated = None
        if partials:
            dtypes = {name: dtype for partial in partials for name, dtype in partial["dtypes"].items()}
            aggregated = finish_partial_sums([(p["sums"], p["samples"]) for p in partials], dtypes)
        return {"results": results, "failures": failures,
                "rejected": [(r["id"], r["reason"]) for r in results if r["outcome"] == "rejected"],
                "accepted": sum(r["outcome"] == "accepted" for r in results), "aggregated": aggregated,
                "privacy_cost": {"bytes_up": 0, "bytes_down": 0, "secagg_s": 0.0},
                "driver_bytes_in": sum(state_bytes(p["sums"]) for p in partials),
                "bytes_up": sum(r["upload_bytes"] for r in results + lost)}

    def _sleep_s(self, plan: dict) -> dict | None:
        """hosts.sleep: each participant sleeps its simulated time (a wall-clock stand-in)."""
        if not self.scenario["hosts"]["sleep"]:
            return None
        return {p: plan["times"][p].total_s for p in plan["kept"]}

    def run_round(self, round_number: int, rounds: int) -> dict:
        start = time.perf_counter()
        self._lost, self._restarts_before = 0, self.executor.restarts
        plan = self.plan(round_number)
        self._plans.pop(round_number)
        kept = plan["kept"]
        self.sampled[round_number] = plan["asked"]
        event = {"method": self.method.name, "round": round_number, "rounds": rounds, "phase": "start",
                 "running": len(kept), "done": 0, "accuracy": (self.last_eval or {}).get("accuracy")}
        self.progress(event)

        def on_done(done):
            self.progress({**event, "phase": "train", "done": done})

        kill = [f["host"] for f in self.scenario["faults"]["kill_host"]
                if f["round"] == round_number and f["method"] in (None, self.method.name)]
        masked = self.privacy is not None and self.privacy.masked
        gather = self._gather_on_hosts if self.reduce else self._gather_per_participant
        outcome = gather(round_number, plan, on_done, kill)
        results, failures = outcome["results"], outcome["failures"]
        for pid, reason in sorted(failures.items()):
            self.log(f"{self.method.name} round {round_number}: participant {pid} failed: {reason}")
        for pid, problem in outcome["rejected"]:
            self.log(f"{self.method.name} round {round_number}: update of participant {pid} rejected: {problem}")
        rejected = len(outcome["rejected"])
        bytes_down = sum(plan["download"].values())
        for pid in plan["reachable"]:
            self.received[pid] = round_number - 1
        privacy_cost = outcome["privacy_cost"]
        if self.method.shares:
            aggregated = outcome["aggregated"]
            if privacy_cost.get("problem"):
                self.log(f"{self.method.name} round {round_number}: {privacy_cost['problem']}; "
                         f"the shared state is unchanged")
            elif not outcome["accepted"]:
                self.log(f"{self.method.name} round {round_number}: no update arrived in time; "
                         f"the shared state is unchanged")
            if aggregated is not None:
                self.shared = {**self.shared, **aggregated}
                self.changed_round.update({name: round_number for name in aggregated})
        bytes_up = outcome["bytes_up"] + privacy_cost["bytes_up"]
        bytes_down += privacy_cost["bytes_down"]
        self.set_up.update(plan["newcomers"])
        self.totals["bytes_up"] += bytes_up
        self.totals["bytes_down"] += bytes_down
        self.totals["flops"] += plan["flops"]
        self.totals["sim_time_s"] += plan["sim_s"]
        self.round = round_number
        final = not self.fits(round_number + 1, rounds)
        samples = [r["samples"] for r in results]
        row = {
            "method": self.method.name, "round": round_number,
            "sampled": len(plan["asked"]), "completed": len(results),
            "dropped_deadline": len(plan["missed_deadline"]), "over_selected": len(plan["not_needed"]),
            "unavailable": len(plan["asked"]) - len(plan["excluded"]) - len(plan["reachable"]),
            "excluded_memory": len(plan["excluded"]), "failed": len(failures), "rejected": rejected,
            "aggregated": outcome["accepted"], "bytes_up": bytes_up, "bytes_down": bytes_down,
            "driver_bytes_in": outcome["driver_bytes_in"],
            "flops": plan["flops"], "setup_sim_s": plan["setup_sim_s"], "sim_time_s": plan["round_time_s"],
            "train_loss": (float(np.average([r["train_loss"] for r in results], weights=samples))
                           if results and sum(samples) else None),
            "dp_epsilon": self.dp_epsilon(),
        }
        if masked:
            row["secagg_s"] = privacy_cost["secagg_s"]
        hosts = [r["host_memory"] for r in results if r.get("host_memory")]
        if hosts:  # how the participants were hosted: measurements, not results
            row["host_rss_mb_max"] = max(h["rss_mb"] for h in hosts)
            row["host_gpu_mb_max"] = max(h["gpu_mb"] for h in hosts)
            row["host_gpu_held_mb_max"] = max(h["gpu_held_mb"] for h in hosts)
            row["resident_max"] = max(r["resident"] for r in results)
            row["alive_max"] = max(r["alive"] for r in results)
            row["spilled"] = sum(r["spilled"] for r in results)
            row["reloaded"] = sum(r["reloaded"] for r in results)
        evaluate = final or round_number % self.scenario["eval"]["every"] == 0
        self._close(row, final, evaluate, start)
        self.progress({**event, "phase": "end", "done": len(results),
                       "accuracy": (self.last_eval or {}).get("accuracy")})
        return row

    def run_no_round(self) -> dict:
        """When not even round 1 fits the budget: no round; the initial state is evaluated (with
        the end-of-run step if that alone fits) and recorded as round 0."""
        start = time.perf_counter()
        self._lost, self._restarts_before = 0, self.executor.restarts
        finish = self.finish_cost()
        finish_spend = {"bytes": 0, "flops": finish["flops"], "sim_time_s": finish["sim_s"]}[self.budget_kind]
        final = self.spent() + finish_spend <= self.budget_limit
        self.log(f"{self.method.name}: not even round 1 fits budget.{self.budget_kind}="
                 f"{self.budget_limit:.6g}; no round is run, the initial state is evaluated as round 0"
                 + ("" if final else " (without the end-of-run step, which does not fit either)"))
        row = {"method": self.method.name, "round": 0, "sampled": 0, "completed": 0,
               "dropped_deadline": 0, "over_selected": 0, "unavailable": 0, "excluded_memory": 0,
               "failed": 0, "rejected": 0, "aggregated": 0, "bytes_up": 0, "bytes_down": 0,
               "flops": 0.0, "setup_sim_s": 0.0, "sim_time_s": 0.0, "train_loss": None,
               "dp_epsilon": self.dp_epsilon()}
        self._close(row, final, True, start)
        self.stopped = True
        return row

    def _close(self, row: dict, final: bool, evaluate: bool, start: float) -> None:
        """End of a round: the evaluation (and, when final, the end-of-run step and its cost),
        the running totals, and the row."""
        finish = self.finish_cost() if final else {"flops": 0.0, "sim_s": 0.0}
        self.totals["flops"] += finish["flops"]
        self.totals["sim_time_s"] += finish["sim_s"]
        row["flops"] += finish["flops"]
        row.update({"finish_sim_s": finish["sim_s"], "flops_total": self.totals["flops"],
                    "sim_clock_s": self.totals["sim_time_s"]})
        if evaluate:
            self.last_eval = self.evaluate(final=final, after=row["round"])
            row.update({f"eval_{k}": v for k, v in self.last_eval.items() if k != "per_participant"})
        # Infrastructure: hosts replaced (a measurement: their work was re-run, nothing changed)
        # and participants whose state could not be found (a result: they started over).
        row["restarts"] = self.executor.restarts - self._restarts_before
        row["restored_fresh"] = self._lost
        row["wall_s"] = time.perf_counter() - start
        self.totals["wall_s"] += row["wall_s"]
        self.stopped = final
        self.record(row)

    def dp_epsilon(self) -> float | None:
        """Privacy spent so far under privacy.dp (accountant.py): the method's accountant when it
        shares, 0 when it sends nothing (independent_growth, local_small), None without DP or
        for the pooled centralized reference (it is given everyone's data)."""
        if self.scenario["privacy"]["dp"] is None or self.method.centralized:
            return None
        return self.privacy.epsilon() if self.privacy is not None else 0.0

    def majority(self, pid: int) -> float:
        """The majority-class reference of a participant: its training split's most frequent
        label, scored on its personal test split."""
        if pid not in self._majority:
            data = self.exp.participant_data(pid)
            self._majority[pid] = majority_accuracy(data.train.labels, data.test.labels)
        return self._majority[pid]

    def evaluate(self, final: bool, after: int | None = None) -> dict:
        pids = self.eval_participants()
        subject = CENTER if self.method.centralized else None
        export = None
        if final and self.export_dir and self.method.name == "fedgrow":
            export = {"dir": self.export_dir, "participants": sorted(exported(self.scenario))}
        results, failures = self.executor.evaluate(self.method.name, pids, self.shared, final, subject,
                                                   self.versions.expected([subject] if subject is not None else pids),
                                                   export)
        results.sort(key=lambda r: r["id"])
        self._accept(results, f"evaluation after round {after}")
        for pid, reason in sorted(failures.items()):
            self.log(f"{self.method.name} evaluation: participant {pid} failed: {reason}")
        for result in results:
            result["majority_accuracy"] = self.majority(result["id"])
        accuracies = [r["accuracy"] for r in results]
        scores = {"accuracy": _mean(accuracies), "accuracy_std": _std(accuracies),
                  "macro_precision": _mean([r["macro_precision"] for r in results]),
                  "majority_accuracy": _mean([r["majority_accuracy"] for r in results]),
                  "participants": len(results)}
        if any("global_accuracy" in r for r in results):
            scores["global_accuracy"] = _mean([r.get("global_accuracy") for r in results])
        for key in MEMBERSHIP_KEYS:  # privacy.attack, at the final evaluation: mean over participants
            if any(key in r for r in results):
                scores[key] = _mean([r.get(key) for r in results])
        return {**scores, "per_participant": results}

    # ---- the whole method ---------------------------------------------------------------------
    def run(self, checkpoint: Callable[["MethodRun"], None] | None = None) -> dict:
        rounds, every = self.scenario["rounds"], self.scenario["checkpoint_every"]
        if self.round == 0 and not self.stopped and not self.fits(1, rounds):
            self.run_no_round()
            if checkpoint and every:
                checkpoint(self)
        while not self.stopped:
            round_number = self.round + 1
            self.run_round(round_number, rounds)
            if checkpoint and every and (round_number % every == 0 or self.stopped):
                checkpoint(self)
        self.executor.release(self.method.name)
        final = self.last_eval or {}
        per_participant = final.get("per_participant", [])
        by_id = lambda key: {r["id"]: r.get(key) for r in per_participant}  # noqa: E731
        return {
            "accuracy_mean": final.get("accuracy"), "accuracy_std": final.get("accuracy_std"),
            "macro_precision_mean": final.get("macro_precision"),
            "global_accuracy_mean": final.get("global_accuracy"),
            "majority_accuracy_mean": final.get("majority_accuracy"),
            "trainable_params_per_participant": _mean([r["trainable_params"] for r in per_participant]),
            "shared_params": sum(t.numel() for t in (self.shared or {}).values()),
            "bytes_up_total": self.totals["bytes_up"], "bytes_down_total": self.totals["bytes_down"],
            "flops_total": self.totals["flops"], "sim_time_s": self.totals["sim_time_s"],
            "rounds": self.round, "wall_s": self.totals["wall_s"],
            "budget": {"kind": self.budget_kind, "limit": self.budget_limit, "spent": self.spent()},
            "per_participant_accuracy": by_id("accuracy"),
            "per_participant_macro_precision": by_id("macro_precision"),
            "per_participant_majority_accuracy": by_id("majority_accuracy"),
            "per_participant_global_accuracy": (by_id("global_accuracy") if "global_accuracy" in final
                                                else None),
            "shared_sha256": state_sha256(self.shared) if self.shared else None,
            "dp_epsilon": self.dp_epsilon(),
            "dp_delta": (self.scenario["privacy"]["dp"] or {}).get("delta"),
            **({key: final.get(key) for key in MEMBERSHIP_KEYS}
               if self.scenario["privacy"]["attack"] is not None else {}),
            "shared_tensor_names": sorted(self.shared_names),
        }


def run_experiment(experiment: Experiment, executor: Executor, record, log, progress=None,
                   save_checkpoint: Callable[[dict], None] | None = None,
                   resume: dict | None = None, export_dir: str | None = None) -> dict:
    """Every method of the scenario, one after another, on the same participants and data, in
    synchronous rounds (MethodRun) or, with server.mode: async, buffered asynchronous
    aggregations (buffered.BufferedRun).

    `save_checkpoint(state)` is called on the scenario's checkpoint schedule (the participants'
    state is already stored: hosts write it as they work, and the checkpoint names the version
    of each); `resume` is such a state to continue from. With `export_dir`, the scenario's
    `export` participants' final fedgrow models and the final Global-LiGO are written there
    (fedgrow_ray.export). Returns the summary (see outputs.RunFolder.finish)."""
    if experiment.scenario["server"]["mode"] == "async":
        from .buffered import BufferedRun as scheduler  # the asynchronous scheduler, beside this one
    else:
        scheduler = MethodRun
    summaries = dict(resume["summaries"]) if resume else {}
    versions = StateVersions(resume["versions"] if resume else None)
    for index, name in enumerate(experiment.scenario["methods"]):
        if name in summaries:
            continue
        snapshot = resume if resume and resume["method"] == name else None
        run = scheduler(experiment, name, executor, record, log, progress, snapshot, versions, export_dir)

        def checkpoint(run, index=index, name=name):
            if save_checkpoint:
                save_checkpoint({**run.snapshot(), "method": name, "method_index": index,
                                 "versions": dict(versions.current), "summaries": summaries})
                versions.checkpointed = dict(versions.current)

        summaries[name] = run.run(checkpoint)
        if export_dir and name == "fedgrow" and exported(experiment.scenario):
            export_global_ligo(run.shared, export_dir, experiment)
    shared_names = sorted({n for s in summaries.values() for n in s["shared_tensor_names"]})
    return {"scenario": experiment.scenario["name"], "seed": experiment.seed,
            "methods": {name: {k: v for k, v in s.items() if k != "shared_tensor_names"}
                        for name, s in summaries.items()},
            "shared_tensor_names": shared_names, "nodes_used": executor.nodes_used,
            "global_ligo_sha256": summaries.get("fedgrow", {}).get("shared_sha256")}


def run_in_folder(scenario: dict, data_path, folder, make_executor: Callable[[str], Executor],
                  log, progress=None, resume: bool = False) -> dict:
    """A whole run in its run folder (outputs.RunFolder): from the start, or with `resume` from
    the folder's last checkpoint (from the start if it stopped before its first one).
    `make_executor(state location)` builds the executor (participant.state_location: the
    folder's state id is kept by its checkpoints, so a resumed run finds the same state)."""
    checkpoint = folder.load_checkpoint() if resume and folder.has_checkpoint() else None
    if resume:
        log(f"resuming after {checkpoint['method']} round {checkpoint['round']}" if checkpoint else
            "resuming from the start: the run stopped before its first checkpoint")
    executor = make_executor(state_location(scenario["hosts"]["state_uri"], folder.path, folder.state_id))
    summary = run_experiment(Experiment(scenario, data_path), executor, folder.record, log, progress,
                             folder.save_checkpoint, checkpoint, str(Path(folder.path).resolve() / EXPORT_DIR))
    folder.finish(summary)
    return summary
