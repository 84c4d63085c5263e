"""The baselines every experiment reports beside Fed-Grow, on the same data, seeds, rounds and
local steps:

    fedavg_scratch       the target model trained from scratch with FedAvg (full model shared)
    independent_growth   Dual-LiGO per participant, nothing aggregated, nothing sent
    local_small          each participant's own small model, fine-tuned locally, no growth
    centralized_ligo     the reference upper bound: Dual-LiGO where all the data is pooled
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..dual_ligo import strip_prefix
from ..training import derive_seed
from .base import Finetuned, Method
from .fedgrow import FedGrow

MODEL_PREFIX = "model."


@dataclass
class ModelState:
    model: nn.Module
    optimiser: torch.optim.Optimizer


def _trainable(state) -> int:
    if isinstance(state, Finetuned):
        return state.trainable_params
    return sum(p.numel() for p in state.model.parameters() if p.requires_grad)


class IndependentGrowth(FedGrow):
    """Fed-Grow without the federation: each participant trains its own Global-LiGO."""

    name = "independent_growth"
    shares = False

    def initial_shared(self):
        return None

    def train(self, participant, state, shared, round_number):
        _, loss = super().train(participant, state, None, round_number)
        return None, loss


class CentralizedLiGO(FedGrow):
    """Dual-LiGO trained in one place on every participant's training data pooled: one trainer
    (the largest small shape, pre-trained on the pooled data) takes, each round, as many steps
    as all the round's participants together; its model is evaluated on every participant's
    own test split. Nothing is sent: it is the reference the federated methods aim at."""

    name = "centralized_ligo"
    shares = False
    centralized = True

    def initial_shared(self):
        return None

    def steps_per_round(self) -> int:
        return self.training["local_steps"] * self.experiment.trainers_per_round

    def train(self, participant, state, shared, round_number):
        dual = state.dual.train()
        intermediate = self._intermediate(dual, None, training=True)
        loss = self.local_training(participant, lambda b: dual(b, intermediate=intermediate).loss,
                                   state.optimiser, self.steps_per_round(), "round", round_number)
        return None, loss

    def round_flops(self, shape):
        return self.steps_per_round() * self.experiment.step_flops(self.experiment.target)


class LocalSmall(Method):
    """Each participant fine-tunes its own pre-trained small model; no growth, no exchange."""

    name = "local_small"

    def new_state(self, participant):
        model = copy.deepcopy(participant.small_model).requires_grad_(True)
        return ModelState(model, self.optimiser(model.parameters()))

    def modules(self, state):
        return {"model": state.model}

    def train(self, participant, state, shared, round_number):
        state.model.train()
        loss = self.local_training(participant, lambda b: state.model(**b).loss, state.optimiser,
                                   self.training["local_steps"], "round", round_number)
        return None, loss

    def logits_fn(self, participant, state, shared):
        state.model.eval()
        return lambda batch: state.model(**batch).logits

    def final_model(self, participant, state, shared):
        return copy.deepcopy(state.model)

    def trainable_params(self, participant, state):
        return _trainable(state)

    def round_flops(self, shape):
        return self.training["local_steps"] * self.experiment.step_flops(shape)

    def memory_mb(self, shape):
        return self.experiment.training_memory_mb(shape, self.experiment.params(shape))


class FedAvgScratch(Method):
    """The target model from scratch, trained with FedAvg: the whole model crosses the wire."""

    name = "fedavg_scratch"
    shares = True

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

    def train(self, participant, state, shared, round_number):
        self._load(state.model, shared)
        state.model.train()
        loss = self.local_training(participant, lambda b: state.model(**b).loss, state.optimiser,
                                   self.training["local_steps"], "round", round_number)
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

    def round_flops(self, shape):
        return self.training["local_steps"] * self.experiment.step_flops(self.experiment.target)

    def memory_mb(self, shape):
        exp = self.experiment
        return exp.training_memory_mb(exp.target, exp.params(exp.target))
