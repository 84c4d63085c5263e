"""DriverActor: owns the shared state (Global-LiGO), runs the rounds of every method on the
participant pool, writes the run folder and its checkpoints, and answers progress polls.

`run_on_ray` is how every run on Ray starts and is followed to its end, alone (launch.py) or as a
sweep's trial (actors/sweep.py); only the placement differs (actors/placement.py).
"""

from __future__ import annotations

import json
import threading
import traceback
import uuid

import ray

from fedgrow_ray.experiment import prepare_scenario_data
from fedgrow_ray.outputs import RunFolder
from fedgrow_ray.participant import state_location
from fedgrow_ray.rounds import run_in_folder

from .pool import RayExecutor, start_hosts


def hosts_location(scenario: dict, folder: RunFolder) -> str:
    """Where the run's hosts keep participant state (as run_in_folder computes it)."""
    return state_location(scenario["hosts"]["state_uri"], folder.path, folder.state_id)


@ray.remote(num_cpus=0, max_concurrency=4)
class DriverActor:
    def __init__(self, scenario: dict, cache_dir: str, run_dir: str, state_id: str, resume: bool, hosts: list):
        """`hosts`: the participant hosts run_on_ray started for this run, keeping participant
        state under the run folder's state id `state_id`."""
        self.scenario, self.cache_dir, self.resume, self.hosts = scenario, cache_dir, resume, hosts
        self.folder = RunFolder(run_dir)
        self.folder.state_id = state_id  # a resume reads the same one from the checkpoint
        self.location = hosts_location(scenario, self.folder)
        self._lock = threading.Lock()
        self._event: dict = {}
        self._events: list[dict] = []    # round ends since the last poll
        self._messages: list[str] = []

    def _log(self, message: str) -> None:
        self.folder.log(message)
        with self._lock:
            self._messages.append(message)

    def _progress(self, event: dict) -> None:
        with self._lock:
            self._event = event
            if event.get("phase") == "end":
                self._events.append(event)

    def poll(self) -> tuple[list[dict], list[str]]:
        """Progress events since the last poll (each round's end, then the latest) and the
        notices logged since then."""
        with self._lock:
            events, messages = self._events + [dict(self._event)], self._messages
            self._events, self._messages = [], []
            return events, messages

    def _executor(self, location: str) -> RayExecutor:
        if location != self.location:  # the hosts were started for another run's state
            raise RuntimeError(f"the participant hosts keep state at {self.location}, but this run's "
                               f"checkpoint names {location}")
        return RayExecutor(self.scenario, self.hosts, self._log)

    def run(self) -> dict:
        try:
            data_path = prepare_scenario_data(self.scenario, self.cache_dir)
            return run_in_folder(self.scenario, data_path, self.folder, self._executor, self._log, self._progress,
                                 self.resume)
        except Exception as err:
            self.folder.fail(f"{type(err).__name__}: {err}")
            self._log(traceback.format_exc())
            raise


def run_on_ray(scenario: dict, cache_dir: str, folder: RunFolder, resume: bool, placement,
               on_event=None, on_message=None) -> dict:
    """Run one experiment into `folder` (created, or opened to resume: its state id is the
    checkpoint's) on a DriverActor placed by `placement`; progress events and notices go to the
    callbacks as they come. Returns the summary; raises what the driver raised (the run folder
    already says `failed`).

    The hosts' reservation is made and removed here, so that it goes even if the driver dies;
    the hosts are started here too, beside the driver, so that their processes start and
    import beside the driver's instead of after it (seconds of a short run's start-up). This
    process owns them and the driver, and ends them when it returns or raises (Ctrl-C
    included): Ray would otherwise try to restart hosts (max_restarts=-1) whose reservation is
    gone, and they would linger, named, in a long-lived process (a notebook, a sweep's trial)."""
    run_id = uuid.uuid4().hex[:8]  # names the run's actors: fedgrow-driver-<id>, fedgrow-host-<id>-<i>
    run_dir = str(folder.path.resolve())

    def note(message: str) -> None:  # in events.log, as the driver's notices are
        folder.log(message)
        if on_message:
            on_message(message)

    placement.reserve(scenario, note)
    hosts, driver = [], None
    try:
        hosts = start_hosts(scenario, cache_dir, hosts_location(scenario, folder), run_id, placement, note)
        driver = DriverActor.options(name=f"fedgrow-driver-{run_id}", **placement.driver_options()).remote(
            scenario, cache_dir, run_dir, folder.state_id, resume, hosts)
        done = driver.run.remote()
        while True:
            ready, _ = ray.wait([done], timeout=0.5)
            events, messages = ray.get(driver.poll.remote())
            for message in messages:
                if on_message:
                    on_message(message)
            for event in events:
                if on_event:
                    on_event(event)
            if ready:
                return ray.get(done)
    finally:
        for actor in [driver, *hosts]:
            if actor is not None and ray.is_initialized():  # a Ctrl-C handler may have shut Ray down
                ray.kill(actor, no_restart=True)
        placement.release()


def driver_died(err: BaseException) -> bool:
    return "RayActorError" in type(err).__name__ or "ActorDied" in type(err).__name__


def record_failure(folder: RunFolder, err: BaseException) -> str:
    """The one-line cause of a run that raised, written to its folder unless the driver already
    wrote its own."""
    first = (str(err).splitlines() or [""])[0].rstrip(".")
    if driver_died(err):
        cause = f"the driver actor died: {first}"
        folder.fail(cause)
        return cause
    status = json.loads((folder.path / "status.json").read_text()) if (folder.path / "status.json").is_file() else {}
    if status.get("status") == "failed":
        return status.get("error", f"{type(err).__name__}: {first}")
    cause = f"{type(err).__name__}: {first}"
    folder.fail(cause)
    return cause
