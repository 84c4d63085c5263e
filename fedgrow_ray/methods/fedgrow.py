"""Fed-Grow: every participant grows its private small model with a private Local-LiGO to the
common intermediate shape and the shared Global-LiGO to the target; only Global-LiGO is
exchanged, averaged by the server each round.

Protocol "paper" (the default): Local-LiGO is trained alone first (the local stage, on the
intermediate model's loss), then the federated stage trains Global-LiGO (and Local-LiGO too
when training.joint_local is set) on the target model's loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..dual_ligo import GLOBAL_PREFIX, DualLiGO, run_grown
from ..ligo import LiGO
from ..training import derive_seed
from .base import Finetuned, Method


@dataclass
class GrowthState:
    dual: DualLiGO
    optimiser: torch.optim.Optimizer


class FedGrow(Method):
    name = "fedgrow"
    shares = True

    # ---- server side --------------------------------------------------------------------------
    def initial_shared(self):
        exp = self.experiment
        ligo = LiGO(exp.family, exp.intermediate, exp.target, **exp.ligo_options,
                    seed=derive_seed(exp.seed, "global-ligo-init"))
        return {GLOBAL_PREFIX + k: v.detach() for k, v in ligo.state_dict().items()}

    # ---- participant side ---------------------------------------------------------------------
    def new_state(self, participant) -> GrowthState:
        exp = self.experiment
        dual = DualLiGO(participant.small_model, exp.intermediate, exp.target, **exp.ligo_options,
                        seed=derive_seed(exp.seed, participant.id, "ligo-init")).to(participant.device)
        trained = list(dual.global_ligo.parameters())
        if self.training["joint_local"]:
            trained += list(dual.local_ligo.parameters())
        return GrowthState(dual, self.optimiser(trained))

    def modules(self, state: GrowthState):
        return {"local_ligo": state.dual.local_ligo, "global_ligo": state.dual.global_ligo}

    def setup(self, participant) -> GrowthState:
        state = self.new_state(participant)
        steps = self.training["local_stage_steps"]
        if steps:  # the local stage: Local-LiGO alone, on the intermediate model; nothing is sent
            dual = state.dual.train()
            local = self.optimiser(dual.local_ligo.parameters())
            self.local_training(participant, lambda b: dual(b, stage="intermediate").loss, local,
                                steps, "local-stage")
        return state

    def train(self, participant, state: GrowthState, shared, round_number):
        dual = state.dual
        if shared is not None:
            dual.load_global_state(shared)
        dual.train()
        intermediate = self._frozen_intermediate(dual)
        loss = self.local_training(participant, lambda b: dual(b, intermediate=intermediate).loss,
                                   state.optimiser, self.training["local_steps"], "round", round_number)
        return self.update_of(dual), loss

    def update_of(self, dual: DualLiGO):
        return {k: v.clone() for k, v in dual.global_state().items()}

    def _frozen_intermediate(self, dual: DualLiGO):
        """With Local-LiGO frozen, its output is the same every step: build it once per round."""
        if self.training["joint_local"]:
            return None
        with torch.no_grad():
            return dual.intermediate_parameters()

    def logits_fn(self, participant, state: GrowthState, shared):
        dual = state.dual
        if shared is not None:
            dual.load_global_state(shared)
        dual.eval()
        with torch.no_grad():
            params = dual.target_parameters()
        return lambda batch: run_grown(dual.family, dual.target_shape, params, batch, training=False).logits

    def final_model(self, participant, state: GrowthState, shared):
        if shared is not None:
            state.dual.load_global_state(shared)
        return state.dual.materialise()

    def trainable_params(self, participant, state) -> int:
        if isinstance(state, Finetuned):
            return state.trainable_params
        counts = state.dual.parameter_counts()
        return counts["local_ligo"] + counts["global_ligo"]

    # ---- costs --------------------------------------------------------------------------------
    def round_flops(self, shape):
        return self.training["local_steps"] * self.experiment.step_flops(self.experiment.target)

    def memory_mb(self, shape):
        exp = self.experiment
        trainable = exp.global_ligo_params() + LiGO.parameter_count(shape, exp.intermediate)
        return exp.training_memory_mb(exp.target, trainable) + 4 * exp.params(shape) / 2**20
