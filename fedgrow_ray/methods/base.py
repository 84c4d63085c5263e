"""The interface every method implements: what a participant does in a round, what the server
does with the updates, how a participant's model is evaluated. Plain classes, no Ray."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..aggregation import check_update, get_aggregator
from ..experiment import Experiment
from ..devices import MemoryPlan, plan_training_memory
from ..metrics import state_bytes
from ..models import Shape
from ..training import batch_stream, make_optimiser, predict, train_steps


@dataclass
class Finetuned:
    """A participant's final model after local fine-tuning (the end-of-run step)."""
    model: nn.Module
    trainable_params: int


class Method:
    """Subclasses set `name` and `stream` and implement new_state / modules / train /
    logits_fn / final_model / trainable_params / round_flops / setup_flops / memory_mb (and
    setup when a participant trains something before its first round); methods that exchange
    state also implement initial_shared and shared_parameters (and keep the default
    FedAvg-style aggregate).

    `stream` names the random streams of every draw a participant makes for the method
    (dropout, batch order, fine-tuning): two methods with the same stream draw the same
    numbers, so they differ only in what they do with them (independent_growth shares
    fedgrow's).

    A participant's private state for a method is an object with an `optimiser` attribute and
    the modules `modules(state)` names; that is all that is saved when it is spilled to disk or
    checkpointed, and `new_state` followed by loading those restores it exactly."""

    name: str = ""
    stream: str = ""
    shares: bool = False
    centralized: bool = False  # trained by the one CENTER trainer, not by the participants
    # Whether the method shares or pools whole models (their embedding tables): then every
    # participant must encode its texts with one tokenizer (data.tokenizer: from_checkpoint
    # with checkpoints holding different tokenizers is refused).
    one_vocabulary: bool = False

    def __init__(self, experiment: Experiment):
        if not self.stream:
            raise TypeError(f"{type(self).__name__} sets no random `stream`")
        self.experiment = experiment
        self.training = experiment.training
        self._memory_plans: dict[int, tuple[MemoryPlan | None, str]] = {}

    # ---- server side --------------------------------------------------------------------------
    def initial_shared(self) -> dict[str, torch.Tensor] | None:
        return None

    def check(self, update: dict, shared: dict, max_norm: float | None) -> str | None:
        """Why an update must not be aggregated, or None (see aggregation.check_update)."""
        return check_update(update, shared, max_norm)

    def upload_bytes(self, shared: dict | None) -> int:
        """What a participant sends this round (for the virtual clock)."""
        return state_bytes(shared) if self.shares else 0

    def aggregate(self, shared: dict, updates: list[tuple[dict, int]]) -> dict:
        server = self.experiment.scenario["server"]
        options = {"trim_fraction": server["trim_fraction"]} if server["aggregator"] == "trimmed_mean" else {}
        return get_aggregator(server["aggregator"])(updates, **options)

    # ---- participant side ---------------------------------------------------------------------
    def new_state(self, participant):
        """This method's private state for a participant, untrained."""
        raise NotImplementedError

    def modules(self, state) -> dict[str, nn.Module]:
        """The modules of a state whose weights make up the private state (with the optimiser)."""
        raise NotImplementedError

    def setup(self, participant):
        """The private state at a participant's first use (by default, untrained)."""
        return self.new_state(participant)

    def state_dict(self, state) -> dict:
        if isinstance(state, Finetuned):
            return {"finetuned": state.model.state_dict(), "trainable_params": state.trainable_params,
                    "shape": self.experiment.family.shape_of(state.model).as_dict()}
        saved = {name: module.state_dict() for name, module in self.modules(state).items()}
        return {**saved, "optimiser": state.optimiser.state_dict()}

    def load_state(self, participant, saved: dict):
        if "finetuned" in saved:
            model = self.experiment.family_of(participant.id).build(Shape(**saved["shape"]))
            model.load_state_dict(saved["finetuned"])
            return Finetuned(model.to(participant.device).eval(), saved["trainable_params"])
        state = self.new_state(participant)
        for name, module in self.modules(state).items():
            module.load_state_dict(saved[name])
        state.optimiser.load_state_dict(saved["optimiser"])
        return state

    def train(self, participant, state, shared: dict | None, round_number: int
              ) -> tuple[dict | None, float]:
        """Local training for one round: (update of the shared state or None, mean loss).
        Implementations call `start_round(state)` first."""
        raise NotImplementedError

    def shared_parameters(self, state) -> list[nn.Parameter]:
        """The parameters the server overwrites each round (none for a method that shares
        nothing)."""
        return []

    def start_round(self, state) -> None:
        """training.shared_optimiser: fresh (the default) drops the optimiser state (AdamW
        moments, step) of the shared parameters, as a new FedAvg round starts a new optimiser;
        the private parameters keep theirs. keep: nothing is dropped."""
        if self.training["shared_optimiser"] == "fresh":
            for parameter in self.shared_parameters(state):
                state.optimiser.state.pop(parameter, None)

    def logits_fn(self, participant, state, shared: dict | None):
        """A function batch -> logits of the participant's current model (eval mode)."""
        raise NotImplementedError

    def final_model(self, participant, state, shared: dict | None) -> nn.Module:
        """The participant's model as a plain, standalone Hugging Face model."""
        raise NotImplementedError

    def trainable_params(self, participant, state) -> int:
        raise NotImplementedError

    # ---- costs for the virtual clock, FLOPs budgets and memory budgets ------------------------
    # `pid` names the participant whose costs these are (its family's vocabulary counts); None
    # for the scenario's family.
    def round_flops(self, shape: Shape, pid: int | None = None) -> float:
        """Compute of one round of local training for a participant with this small shape."""
        raise NotImplementedError

    def setup_flops(self, pid: int) -> float:
        """Compute of a participant's setup, before its first round (pre-training, local
        stage); by default none."""
        return 0.0

    def final_shape(self, pid: int) -> Shape:
        """The shape of the participant's final model (what `finish` fine-tunes)."""
        return self.experiment.target

    def finish_flops(self, pid: int) -> float:
        """Compute of the end-of-run step: training.finetune_steps of the final model."""
        return self.training["finetune_steps"] * self.experiment.step_flops(self.final_shape(pid), pid)

    def memory_mb(self, shape: Shape, samples: int | None = None, checkpointing: bool = False,
                  pid: int | None = None) -> float:
        """MiB a participant with this small shape needs to train one round's step with
        `samples` samples' activations alive (default: the whole batch), checkpointed or not
        (`pid`: whose family, as for round_flops)."""
        raise NotImplementedError

    def model_shape(self, shape: Shape) -> Shape:
        """The shape of the model a round's step runs (whose layers checkpointing recomputes)."""
        return self.experiment.target

    def memory_plan(self, pid: int) -> tuple[MemoryPlan | None, str]:
        """How participant `pid` trains within its memory budget (devices.plan_training_memory):
        full batches, micro-batches and/or activation checkpointing; (None, reason with the
        numbers) when its budget cannot hold the model."""
        if pid not in self._memory_plans:
            exp = self.experiment
            shape = exp.small_shape(pid)[0]
            self._memory_plans[pid] = plan_training_memory(
                exp.profile(pid).memory_mb, lambda n, checkpointing: self.memory_mb(shape, n, checkpointing, pid),
                self.training["batch_size"], self.training["micro_batch_size"])
        return self._memory_plans[pid]

    def participant_round_flops(self, pid: int) -> float:
        """round_flops of participant `pid`, plus one more forward of the model per step when
        its memory plan checkpoints the layers (what it pays for fitting its budget)."""
        shape = self.experiment.small_shape(pid)[0]
        flops = self.round_flops(shape, pid)
        plan, _ = self.memory_plan(pid)
        if plan is not None and plan.checkpointing:
            flops += self.training["local_steps"] * self.experiment.step_flops(self.model_shape(shape), pid) / 3
        return flops

    # ---- shared helpers -----------------------------------------------------------------------
    def local_training(self, participant, loss_fn, optimiser, steps: int, *purpose,
                       weights=None, micro_batch_size: int | None = None) -> float:
        """`steps` steps on the participant's shard (training.train_steps), at
        training.precision, in micro-batches of `micro_batch_size` (default
        training.micro_batch_size; a round's training passes the participant's memory plan's)."""
        batches = batch_stream(participant.data.train, self.training["batch_size"],
                               participant.generator(self.stream, *purpose))
        micro = self.training["micro_batch_size"] if micro_batch_size is None else micro_batch_size
        return train_steps(loss_fn, optimiser, batches, steps, participant.device,
                           self.training["max_grad_norm"], participant.should_stop,
                           micro_batch_size=micro, weights=weights, precision=self.training["precision"])

    def round_plan(self, participant) -> MemoryPlan:
        """The memory plan a participant's round training follows (see memory_plan)."""
        plan, reason = self.memory_plan(participant.id)
        if plan is None:  # the round scheduler never asks an excluded participant
            raise ValueError(f"participant {participant.id} cannot train {self.name}: {reason}")
        return plan

    def optimiser(self, parameters, lr: float | None = None):
        return make_optimiser(list(parameters), lr or self.training["lr"], self.training["weight_decay"])

    def finish(self, participant, state, shared):
        """End of run: fine-tune the participant's final model locally (scenario
        training.finetune_steps, the same budget for every method)."""
        steps = self.training["finetune_steps"]
        if not steps:
            return state
        model = self.final_model(participant, state, shared).to(participant.device)
        model.train().requires_grad_(True)
        optimiser = self.optimiser(model.parameters())
        self.local_training(participant, lambda b: model(**b).loss, optimiser, steps, "finetune")
        return Finetuned(model.eval(), sum(p.numel() for p in model.parameters()))

    def standalone_model(self, participant, state, shared) -> nn.Module:
        """The participant's current model as a plain model (its fine-tuned one after finish)."""
        return state.model if isinstance(state, Finetuned) else self.final_model(participant, state, shared)

    def predict(self, participant, state, shared, shard, batch_size: int):
        if isinstance(state, Finetuned):
            logits_fn = lambda b: state.model(**b).logits  # noqa: E731
        else:
            logits_fn = self.logits_fn(participant, state, shared)
        return predict(logits_fn, shard, batch_size, participant.device, self.training["precision"])
