"""Fed-Grow: every participant grows its private small model with a private Local-LiGO to the
common intermediate shape and the shared Global-LiGO to the target; only Global-LiGO is
exchanged, averaged by the server each round.

Protocol "paper" (the default): Local-LiGO is trained alone first (the local stage, on the
intermediate model's loss), then it is frozen while the federated stage trains Global-LiGO on
the target model's loss. training.joint_local: true is this project's option, not the
paper's: Local-LiGO keeps training beside Global-LiGO in the rounds.

Each round starts with fresh optimiser state for Global-LiGO (training.shared_optimiser:
fresh), since the server has overwritten it; Local-LiGO, when trained, keeps its moments.

Protocol "reference-code" (what the authors' public code does, for comparison): in round 1
each participant also sends its grown intermediate model Local_i(S_i) and the server averages
it; from then on everyone trains only Global-LiGO on top of that averaged, frozen intermediate
model. It shares a model-derived artifact once, so it is never the default.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..aggregation import check_update
from ..dual_ligo import GLOBAL_PREFIX, DualLiGO, materialise, run_grown
from ..ligo import LiGO
from ..metrics import state_bytes
from ..training import derive_seed
from .base import Finetuned, Method


INTERMEDIATE_PREFIX = "intermediate."  # the averaged intermediate model (reference-code protocol)


def split_shared(shared: dict | None) -> tuple[dict | None, dict | None]:
    """(Global-LiGO tensors, the shared intermediate model's parameters or None)."""
    if shared is None:
        return None, None
    global_part = {k: v for k, v in shared.items() if k.startswith(GLOBAL_PREFIX)}
    intermediate = {k[len(INTERMEDIATE_PREFIX):]: v for k, v in shared.items()
                    if k.startswith(INTERMEDIATE_PREFIX)}
    return global_part, intermediate or None


@dataclass
class GrowthState:
    dual: DualLiGO
    optimiser: torch.optim.Optimizer


class FedGrow(Method):
    name = "fedgrow"
    stream = "fedgrow"
    shares = True

    # ---- server side --------------------------------------------------------------------------
    @property
    def reference_code(self) -> bool:
        return self.experiment.scenario["protocol"] == "reference-code"

    @property
    def one_vocabulary(self) -> bool:
        """reference-code averages whole intermediate models (embedding tables included) in
        round 1; the paper's protocol shares only Global-LiGO, which no vocabulary shapes."""
        return self.reference_code

    @functools.cached_property
    def initial_global(self) -> dict[str, torch.Tensor]:
        """The Global-LiGO the server broadcasts before round 1 (built once per method)."""
        exp = self.experiment
        ligo = LiGO(exp.family, exp.intermediate, exp.target, **exp.ligo_options,
                    seed=derive_seed(exp.seed, "global-ligo-init"))
        return {GLOBAL_PREFIX + k: v.detach() for k, v in ligo.state_dict().items()}

    def initial_shared(self):
        return dict(self.initial_global)

    def _sends_intermediate(self, shared) -> bool:
        return self.reference_code and split_shared(shared)[1] is None

    def upload_bytes(self, shared) -> int:
        extra = 0
        if self._sends_intermediate(shared):
            extra = 4 * self.experiment.params(self.experiment.intermediate)
        return state_bytes(split_shared(shared)[0]) + extra

    def check(self, update, shared, max_norm):
        """Global-LiGO as any update; the round-1 intermediate model (reference-code) has no
        previous value to measure a norm against, so only its names, shapes and values."""
        global_part, _ = split_shared(update)
        problem = check_update(global_part, split_shared(shared)[0], max_norm)
        intermediate = split_shared(update)[1]
        if problem is None and intermediate is not None:
            expected = {INTERMEDIATE_PREFIX + k: v.detach() for k, v in
                        self.experiment.family.skeleton(self.experiment.intermediate).named_parameters()}
            problem = check_update({INTERMEDIATE_PREFIX + k: v for k, v in intermediate.items()},
                                   expected, None)
        return problem

    # ---- participant side ---------------------------------------------------------------------
    def new_state(self, participant) -> GrowthState:
        exp = self.experiment
        dual = DualLiGO(participant.small_model, exp.intermediate, exp.target, family=exp.family_of(participant.id),
                        **exp.ligo_options, seed=derive_seed(exp.seed, participant.id, "ligo-init")
                        ).to(participant.device)
        if not self.shares:  # a private Global-LiGO starts where fedgrow's shared one does
            dual.load_global_state(self.initial_global)
        trained = list(dual.global_ligo.parameters())
        if self.training["joint_local"]:
            trained += list(dual.local_ligo.parameters())
        return GrowthState(dual, self.optimiser(trained))

    def modules(self, state: GrowthState):
        return {"local_ligo": state.dual.local_ligo, "global_ligo": state.dual.global_ligo}

    def shared_parameters(self, state: GrowthState):
        return list(state.dual.global_ligo.parameters())

    def setup(self, participant) -> GrowthState:
        state = self.new_state(participant)
        steps = self.experiment.local_stage_steps(participant.id)
        if steps:  # the local stage: Local-LiGO alone, on the intermediate model; nothing is sent
            dual = state.dual.train()
            local = self.optimiser(dual.local_ligo.parameters())
            self.local_training(participant, lambda b: dual(b, stage="intermediate").loss, local,
                                steps, "local-stage")
        return state

    def _intermediate(self, dual: DualLiGO, shared, training: bool):
        """Load the shared Global-LiGO and return the intermediate parameters the target grows
        from: the shared averaged intermediate model (reference-code, after round 1), or this
        participant's Local-LiGO output, built once here when Local-LiGO is not trained (None
        when it is: then it is rebuilt, with gradients, at every step)."""
        global_part, shared_intermediate = split_shared(shared)
        if global_part is not None:
            dual.load_global_state(global_part)
        if shared_intermediate is not None:
            return shared_intermediate
        if training and self.training["joint_local"]:
            return None
        with torch.no_grad():
            return dual.intermediate_parameters()

    def train(self, participant, state: GrowthState, shared, round_number):
        self.start_round(state)
        dual = state.dual.train()
        intermediate = self._intermediate(dual, shared, training=True)
        loss = self.train_target(participant, state, intermediate, self.training["local_steps"],
                                 "round", round_number)
        update = {k: v.clone() for k, v in dual.global_state().items()}
        if self._sends_intermediate(shared):  # reference-code, round 1
            with torch.no_grad():
                update.update({INTERMEDIATE_PREFIX + k: v.clone()
                               for k, v in dual.intermediate_parameters().items()})
        return update, loss

    def train_target(self, participant, state: GrowthState, intermediate, steps: int, *purpose) -> float:
        """`steps` steps of the grown target's loss, within the participant's memory plan. The
        target's parameters are grown once per step and shared by every micro-batch's forward
        and backward (training.backward_batch)."""
        dual, plan = state.dual, self.round_plan(participant)
        return self.local_training(
            participant,
            lambda batch, params: run_grown(dual.family, dual.target_shape, params, batch,
                                            checkpointing=plan.checkpointing).loss,
            state.optimiser, steps, *purpose,
            weights=lambda: dual.target_parameters(intermediate), micro_batch_size=plan.micro_batch_size)

    def logits_fn(self, participant, state: GrowthState, shared):
        dual = state.dual.eval()
        intermediate = self._intermediate(dual, shared, training=False)
        with torch.no_grad():
            params = dual.target_parameters(intermediate)
        return lambda batch: run_grown(dual.family, dual.target_shape, params, batch, training=False).logits

    def final_model(self, participant, state: GrowthState, shared):
        dual = state.dual.eval()
        with torch.no_grad():
            params = dual.target_parameters(self._intermediate(dual, shared, training=False))
        return materialise(dual.family, dual.target_shape, params)

    def trainable_params(self, participant, state) -> int:
        if isinstance(state, Finetuned):
            return state.trainable_params
        counts = state.dual.parameter_counts()
        return counts["local_ligo"] + counts["global_ligo"]

    # ---- costs --------------------------------------------------------------------------------
    def setup_flops(self, pid):
        """Pre-training (none for a model from model.checkpoints) and the local stage:
        pretrain_steps x step(small) + local_stage_steps x (step(intermediate) + 3 x gen(small -> I))."""
        return self.experiment.pretrain_flops(pid) + self.experiment.local_stage_flops(pid)

    def growth_round_flops(self, shape, steps: int, pid: int | None = None) -> float:
        """`steps` Dual-LiGO steps on the target's loss from a `shape` small model:
        steps x (step(T) + 3 x gen(I -> T) [+ 3 x gen(S -> I) when Local-LiGO is trained]),
        plus gen(S -> I) once when it is frozen (built once per round). The reference-code
        protocol, which stops using Local-LiGO after round 1, is charged the same."""
        exp = self.experiment
        per_step = exp.step_flops(exp.target, pid) + 3 * exp.generation_flops(exp.intermediate, exp.target, pid)
        if self.training["joint_local"]:
            return steps * (per_step + 3 * exp.generation_flops(shape, exp.intermediate, pid))
        return steps * per_step + exp.generation_flops(shape, exp.intermediate, pid)

    def round_flops(self, shape, pid=None):
        return self.growth_round_flops(shape, self.training["local_steps"], pid)

    def memory_mb(self, shape, samples=None, checkpointing=False, pid=None):
        exp = self.experiment
        trainable = exp.global_ligo_params() + LiGO.parameter_count(shape, exp.intermediate)
        return exp.training_memory_mb(exp.target, trainable, samples, checkpointing, pid) + 4 * exp.params(shape, pid) / 2**20
