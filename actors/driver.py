"""DriverActor: owns the shared state (Global-LiGO), runs the rounds of every method on the
participant pool, writes the run folder and its checkpoints, and answers progress polls from
launch.py."""

from __future__ import annotations

import threading
import traceback

import ray

from fedgrow_ray.experiment import prepare_scenario_data
from fedgrow_ray.outputs import RunFolder
from fedgrow_ray.rounds import run_in_folder

from .pool import RayExecutor


@ray.remote(num_cpus=0, max_concurrency=4)
class DriverActor:
    def __init__(self, scenario: dict, cache_dir: str, run_dir: str, resume: bool = False,
                 run_id: str = "run"):
        self.scenario, self.cache_dir, self.resume, self.run_id = scenario, cache_dir, resume, run_id
        self.folder = RunFolder(run_dir)
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

    def run(self) -> dict:
        try:
            data_path = prepare_scenario_data(self.scenario, self.cache_dir)
            return run_in_folder(
                self.scenario, data_path, self.folder,
                lambda location: RayExecutor(self.scenario, self.cache_dir, location, self._log, self.run_id),
                self._log, self._progress, self.resume)
        except Exception as err:
            self.folder.fail(f"{type(err).__name__}: {err}")
            self._log(traceback.format_exc())
            raise
