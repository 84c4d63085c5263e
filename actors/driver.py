"""DriverActor: owns the shared state (Global-LiGO), runs the rounds of every method on the
participant pool, writes the run folder, and answers progress polls from launch.py."""

from __future__ import annotations

import threading
import traceback

import ray

from fedgrow_ray.experiment import Experiment, prepare_scenario_data
from fedgrow_ray.outputs import RunFolder
from fedgrow_ray.rounds import run_experiment

from .pool import RayExecutor


@ray.remote(num_cpus=0, max_concurrency=4)
class DriverActor:
    def __init__(self, scenario: dict, cache_dir: str, run_dir: str):
        self.scenario, self.cache_dir = scenario, cache_dir
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
            experiment = Experiment(self.scenario, prepare_scenario_data(self.scenario, self.cache_dir))
            executor = RayExecutor(self.scenario, self.cache_dir, self._log)
            summary = run_experiment(experiment, executor, self.folder.record, self._log, self._progress)
            self.folder.finish(summary)
            return summary
        except Exception as err:
            self.folder.fail(f"{type(err).__name__}: {err}")
            self._log(traceback.format_exc())
            raise
