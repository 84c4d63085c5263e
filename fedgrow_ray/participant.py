"""Where a participant's private state is kept: its data shard, its pre-trained small model and
each method's private state (Local-LiGO, optimiser, ...). A `ParticipantHost` keeps many
participants in one process and runs the work the driver asks of them; only shared-state
updates (Global-LiGO for Fed-Grow), sample counts and metrics ever leave it.
"""

from __future__ import annotations

import time

import torch

from .experiment import Experiment
from .methods import Method, get_method
from .metrics import accuracy, macro_precision
from .training import batch_stream, derive_seed, make_optimiser, train_steps


class Participant:
    """One participant's private state, created where it lives and never sent anywhere."""

    def __init__(self, experiment: Experiment, pid: int, device):
        shape, reason = experiment.small_shape(pid)
        if shape is None:
            raise ValueError(f"participant {pid} cannot hold any small shape: {reason}")
        self.id, self.shape, self.device = pid, shape, device
        self.experiment = experiment
        self.data = experiment.data.participant(pid)
        self.method_state: dict[str, object] = {}
        self._small_model = None

    def generator(self, *purpose) -> torch.Generator:
        """This participant's own random stream for one purpose (and round)."""
        return torch.Generator().manual_seed(derive_seed(self.experiment.seed, self.id, *purpose))

    def seed_torch(self, *purpose) -> None:
        """Seed the global torch RNG (dropout) for this participant's next unit of work."""
        torch.manual_seed(derive_seed(self.experiment.seed, self.id, "torch", *purpose))

    @property
    def small_model(self):
        """The pre-trained small model: loaded from its checkpoint folder, or built and
        pre-trained on this participant's own data for the scenario's budget."""
        if self._small_model is None:
            exp = self.experiment
            checkpoint = exp.checkpoint_path(self.id)
            if checkpoint is not None:
                model, _ = exp.family.load(str(checkpoint))
            else:
                model = exp.family.build(self.shape, seed=derive_seed(exp.seed, self.id, "small-init"))
            model.to(self.device).train()
            steps = exp.training["pretrain_steps"] if checkpoint is None else 0
            if steps:
                self.seed_torch("pretrain")
                optimiser = make_optimiser(model.parameters(), exp.training["pretrain_lr"],
                                           exp.training["weight_decay"])
                batches = batch_stream(self.data.train, exp.training["batch_size"],
                                       self.generator("pretrain"))
                train_steps(lambda b: model(**b).loss, optimiser, batches, steps, self.device,
                            exp.training["max_grad_norm"])
            self._small_model = model.eval().requires_grad_(False)
        return self._small_model

    def num_samples(self) -> int:
        return len(self.data.train)


class ParticipantHost:
    """Hosts many participants of one experiment in one process (a Ray actor, or the plain
    in-process executor). Participants are created on first use and stay put."""

    def __init__(self, scenario: dict, data_path: str, device: str = "cpu"):
        # As many compute threads as the host's CPU share, in every executor: float results
        # depend on the thread count, and must not depend on where a participant is hosted.
        torch.set_num_threads(max(1, int(scenario["hosts"]["num_cpus"])))
        self.experiment = Experiment(scenario, data_path)
        self.device = torch.device(device)
        self.participants: dict[int, Participant] = {}
        self.methods: dict[str, Method] = {}

    def participant(self, pid: int) -> Participant:
        if pid not in self.participants:
            self.participants[pid] = Participant(self.experiment, pid, self.device)
        return self.participants[pid]

    def method(self, name: str) -> Method:
        if name not in self.methods:
            self.methods[name] = get_method(name, self.experiment)
        return self.methods[name]

    def _state(self, method: Method, participant: Participant):
        if method.name not in participant.method_state:
            participant.seed_torch(method.name, "setup")
            participant.method_state[method.name] = method.setup(participant)
        return participant.method_state[method.name]

    def train(self, method_name: str, round_number: int, pids: list[int], shared: dict | None,
              sleep_s: dict[int, float] | None = None) -> list[dict]:
        """Run each participant's local training for this round, one after another. Returns,
        per participant: its id, its update (shared tensors only), sample count, mean training
        loss and measured wall time."""
        method = self.method(method_name)
        results = []
        for pid in pids:
            start = time.perf_counter()
            participant = self.participant(pid)
            state = self._state(method, participant)
            participant.seed_torch(method.name, "round", round_number)
            update, loss = method.train(participant, state, shared, round_number)
            if sleep_s and sleep_s.get(pid):
                time.sleep(sleep_s[pid])
            results.append({"id": pid, "update": update, "samples": participant.num_samples(),
                            "train_loss": loss, "wall_s": time.perf_counter() - start})
        return results

    def evaluate(self, method_name: str, pids: list[int], shared: dict | None,
                 final: bool = False) -> list[dict]:
        """Each participant's accuracy and macro precision on its own test split, with the
        current shared state; `final` first applies the method's end-of-run step (e.g. local
        fine-tuning of the grown model)."""
        method = self.method(method_name)
        results = []
        for pid in pids:
            participant = self.participant(pid)
            state = self._state(method, participant)
            trainable = method.trainable_params(participant, state)
            if final:
                participant.seed_torch(method.name, "finish")
                state = method.finish(participant, state, shared)
            labels, predictions = method.predict(participant, state, shared, participant.data.test,
                                                 self.experiment.scenario["eval"]["batch_size"])
            results.append({"id": pid, "accuracy": accuracy(labels, predictions),
                            "macro_precision": macro_precision(labels, predictions),
                            "test_samples": len(labels),
                            "trainable_params": trainable})
        return results

    def release(self, method_name: str) -> None:
        """Drop every participant's private state for a finished method."""
        for participant in self.participants.values():
            participant.method_state.pop(method_name, None)
        self.methods.pop(method_name, None)
