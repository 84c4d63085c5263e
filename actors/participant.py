"""ParticipantActor: a Ray actor hosting many participants (a fedgrow_ray ParticipantHost).

Participants are assigned to one actor for the whole run, so their private state (small model,
Local-LiGO, optimiser, data shard) is created inside the actor and never moves; calls return
only shared-state updates, sample counts and metrics. The host writes each participant's state
to the run's state location (hosts.state_uri) as it finishes its work; when Ray restarts a dead
actor, possibly on another node, the new one loads the versions each call names.

A call the driver cancels (ray.cancel, at the round's wall-clock timeout) stops at the next
training step: Ray cannot interrupt a running actor task, but it sets a flag the task can read
(RuntimeContext.is_canceled), and the host asks it between steps.
"""

from __future__ import annotations

import os

import ray

from fedgrow_ray.experiment import prepare_scenario_data
from fedgrow_ray.participant import ParticipantHost


def _cancelled() -> bool:
    return ray.get_runtime_context().is_canceled()


@ray.remote
class ParticipantActor:
    def __init__(self, scenario: dict, cache_dir: str, state_location: str, index: int, use_gpu: bool):
        import torch

        self.index = index
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        # Data is prepared (or found ready) on the node this actor runs on.
        data_path = prepare_scenario_data(scenario, cache_dir)
        self.host = ParticipantHost(scenario, str(data_path), device, state_location, index, _cancelled)
        self._shared_key, self._shared = None, None

    def info(self) -> dict:
        context = ray.get_runtime_context()
        return {"index": self.index, "node_id": context.get_node_id(), "pid": os.getpid(),
                "device": str(self.host.device), "memory": self.host.memory(),
                "restored": self.host.stats["restored"]}

    def _resolve(self, shared_ref):
        """The round's shared state, fetched from the object store once per actor per round."""
        if shared_ref is None:
            return None
        if self._shared_key != shared_ref.hex():
            self._shared_key, self._shared = shared_ref.hex(), ray.get(shared_ref)
        return self._shared

    def train(self, method: str, round_number: int, pids: list[int], shared_ref: list, sleep_s=None,
              expected=None, cohort=None):
        return self.host.train(method, round_number, pids, self._resolve(shared_ref[0]), sleep_s, expected,
                               cohort)

    def train_held(self, method: str, round_number: int, pids: list[int], shared_ref: list, sleep_s=None,
                   expected=None):
        return self.host.train_held(method, round_number, pids, self._resolve(shared_ref[0]), sleep_s, expected)

    def partial_sum(self, method: str, round_number: int, pids: list[int]) -> list[dict]:
        """ParticipantHost.partial_sum, as a one-element list (the pool gathers lists)."""
        return [{"index": self.index, **self.host.partial_sum(method, round_number, pids)}]

    def evaluate(self, method: str, pids: list[int], shared_ref: list, final: bool, subject=None,
                 expected=None, export=None):
        return self.host.evaluate(method, pids, self._resolve(shared_ref[0]), final, subject, expected, export)

    def release(self, method: str) -> None:
        self.host.release(method)
        self._shared_key, self._shared = None, None
