"""The baselines every experiment reports beside Fed-Grow, on the same data, seeds, rounds and
local steps:

    fedavg_scratch       the target model trained from scratch with FedAvg (full model shared)
    independent_growth   Fed-Grow exactly (protocol, joint flag, initialisation, random
                         streams), minus the aggregation: nothing is sent
    local_small          each participant's own small model, fine-tuned locally, no growth
    centralized          a pooled reference: one Dual-LiGO trainer with every participant's
                         data and the federation's compute (see Centralized)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..dual_ligo import strip_prefix
from ..experiment import CENTER
from ..training import batch_stream, derive_seed, train_steps
from .base import Finetuned, Method
from .fedgrow import FedGrow

MODEL_PREFIX = "model."


@dataclass
class ModelState:
    model: nn.Module
    optimiser: torch.optim.Optimizer


def train_model(method: Method, participant, state: ModelState, round_number: int) -> float:
    """A round of a plain model's local training, within the participant's memory plan (its
    layers checkpointed by transformers' own gradient checkpointing when the plan says so)."""
    plan = method.round_plan(participant)
    model = state.model.train()
    if plan.checkpointing and not model.is_gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return method.local_training(participant, lambda b: model(**b).loss, state.optimiser,
                                 method.training["local_steps"], "round", round_number,
                                 micro_batch_size=plan.micro_batch_size)


def _trainable(state) -> int:
    if isinstance(state, Finetuned):
        return state.trainable_params
    return sum(p.numel() for p in state.model.parameters() if p.requires_grad)


class IndependentGrowth(FedGrow):
    """Fed-Grow without the federation: each participant trains its own Global-LiGO, from the
    same initial Global-LiGO fedgrow broadcasts, with fedgrow's protocol, joint flag, fresh or
    kept optimiser state and random streams; only the aggregation is missing, so the paired
    difference of the two is what federation adds."""

    name = "independent_growth"
    shares = False

    def initial_shared(self):
        return None

    def train(self, participant, state, shared, round_number):
        _, loss = super().train(participant, state, None, round_number)
        return None, loss


class Centralized(FedGrow):
    """A pooled reference, not federated: one trainer (CENTER) holds every participant's
    training data pooled, the largest small shape, and the federation's compute:

    - pre-training and local stage on the pooled data for as many steps as the participants'
      setups add up to in FLOPs (Experiment.pretrain_steps / local_stage_steps: the sum of the
      participants' FLOPs divided by this trainer's step FLOPs, rounded);
    - each round, local_steps x trainers_per_round Dual-LiGO steps (as many as the round's
      participants together), with fedgrow's protocol and joint flag, its Global-LiGO starting
      where fedgrow's does; nothing is overwritten between rounds, so its optimiser state is
      kept.

    It is scored twice: its one grown target model on the shared global test set
    (eval_global_accuracy), and on each participant's personal test split after a personal
    fine-tune of a copy of that model for training.local_steps steps on that participant's own
    training data (one round's personal budget; Method.personal_model).

    It is an upper reference for the global test set, where one model trained on all the data
    with the same compute is what a federation could at best reach. On label-skewed personal
    splits it is not a bound: a participant's own model (or the majority-class reference)
    exploits the skew, and the short personal fine-tune only partly adapts the pooled model."""

    name = "centralized"
    stream = "centralized"
    shares = False
    centralized = True
    one_vocabulary = True  # one trainer, every participant's texts pooled

    def initial_shared(self):
        return None

    def shared_parameters(self, state):
        return []  # one continuous training run: nothing is overwritten between rounds

    def steps_per_round(self) -> int:
        return self.training["local_steps"] * self.experiment.trainers_per_round

    def train(self, participant, state, shared, round_number):
        self.start_round(state)
        dual = state.dual.train()
        intermediate = self._intermediate(dual, None, training=True)
        loss = self.train_target(participant, state, intermediate, self.steps_per_round(), "round", round_number)
        return None, loss

    def round_flops(self, shape, pid=None):
        return self.growth_round_flops(self.experiment.small_shape(CENTER)[0], self.steps_per_round())

    def personal_flops(self) -> float:
        """One participant's personal fine-tune: local_steps x step(target)."""
        return self.training["local_steps"] * self.experiment.step_flops(self.experiment.target)

    def personal_model(self, owner, base: nn.Module, shard, pid: int) -> nn.Module:
        """A copy of the pooled model `base`, fine-tuned for training.local_steps steps (one
        round's personal budget) on participant `pid`'s training `shard`, seeded per participant."""
        exp = self.experiment
        model = copy.deepcopy(base).to(owner.device).train().requires_grad_(True)
        torch.manual_seed(derive_seed(exp.seed, pid, "torch", self.stream, "personal"))
        batches = batch_stream(shard, self.training["batch_size"],
                               torch.Generator().manual_seed(derive_seed(exp.seed, pid, self.stream, "personal")))
        train_steps(lambda b: model(**b).loss, self.optimiser(model.parameters()), batches,
                    self.training["local_steps"], owner.device, self.training["max_grad_norm"],
                    micro_batch_size=self.training["micro_batch_size"], precision=self.training["precision"])
        return model.eval()


class LocalSmall(Method):
    """Each participant fine-tunes its own pre-trained small model; no growth, no exchange."""

    name = "local_small"
    stream = "local_small"

    def new_state(self, participant):
        model = copy.deepcopy(participant.small_model).requires_grad_(True)
        return ModelState(model, self.optimiser(model.parameters()))

    def modules(self, state):
        return {"model": state.model}

    def train(self, participant, state, shared, round_number):
        self.start_round(state)
        loss = train_model(self, participant, state, round_number)
        return None, loss

    def logits_fn(self, participant, state, shared):
        state.model.eval()
        return lambda batch: state.model(**batch).logits

    def final_model(self, participant, state, shared):
        return copy.deepcopy(state.model)

    def trainable_params(self, participant, state):
        return _trainable(state)

    def setup_flops(self, pid):
        """Pre-training of the small model (none when loaded from model.checkpoints)."""
        return self.experiment.pretrain_flops(pid)

    def final_shape(self, pid):
        return self.experiment.small_shape(pid)[0]

    def round_flops(self, shape, pid=None):
        return self.training["local_steps"] * self.experiment.step_flops(shape, pid)

    def model_shape(self, shape):
        return shape

    def memory_mb(self, shape, samples=None, checkpointing=False, pid=None):
        return self.experiment.training_memory_mb(shape, self.experiment.params(shape, pid), samples, checkpointing, pid)


class FedAvgScratch(Method):
    """The target model from scratch, trained with FedAvg: the whole model crosses the wire."""

    name = "fedavg_scratch"
    stream = "fedavg_scratch"
    shares = True
    one_vocabulary = True  # the whole model, embedding table included, is averaged

    def initial_shared(self):
        exp = self.experiment
        model = exp.family.build(exp.target, seed=derive_seed(exp.seed, "target-init"))
        return {MODEL_PREFIX + k: v.detach() for k, v in model.named_parameters()}

    def new_state(self, participant):
        model = self.experiment.family.build(self.experiment.target).to(participant.device)
        return ModelState(model, self.optimiser(model.parameters()))

    def modules(self, state):
        return {"model": state.model}

    def _load(self, model: nn.Module, shared) -> None:
        with torch.no_grad():
            for name, tensor in strip_prefix(shared, MODEL_PREFIX).items():
                model.get_parameter(name).copy_(tensor)

    def shared_parameters(self, state):
        return list(state.model.parameters())

    def train(self, participant, state, shared, round_number):
        self.start_round(state)
        self._load(state.model, shared)
        loss = train_model(self, participant, state, round_number)
        return {MODEL_PREFIX + k: v.detach().clone() for k, v in state.model.named_parameters()}, loss

    def logits_fn(self, participant, state, shared):
        self._load(state.model, shared)
        state.model.eval()
        return lambda batch: state.model(**batch).logits

    def final_model(self, participant, state, shared):
        self._load(state.model, shared)
        return copy.deepcopy(state.model)

    def trainable_params(self, participant, state):
        return _trainable(state)

    def round_flops(self, shape, pid=None):
        return self.training["local_steps"] * self.experiment.step_flops(self.experiment.target)

    def memory_mb(self, shape, samples=None, checkpointing=False, pid=None):
        exp = self.experiment
        return exp.training_memory_mb(exp.target, exp.params(exp.target), samples, checkpointing)
