"""A lab's own method, aggregator and model family, outside the package: tests/test_plugins.py
names them by import path (tests.plugin_lab:...) in a scenario. Ray's processes import this module
from the driver's working directory (the repository root), as a user's would be installed or on
PYTHONPATH."""

from dataclasses import dataclass

import torch

from fedgrow_ray.methods.fedgrow import FedGrow
from fedgrow_ray.models import TextFamily


class FedProxGrow(FedGrow):
    """Fed-Grow with FedProx's proximal term on Global-LiGO: mu/2 ||w - w_received||^2."""

    mu = 5.0

    def train(self, participant, state, shared, round_number):
        self.start_round(state)
        dual = state.dual.train()
        intermediate = self._intermediate(dual, shared, training=True)
        received = {n: p.detach().clone() for n, p in dual.global_ligo.named_parameters()}

        def loss(batch):
            proximal = sum(((p - received[n]) ** 2).sum() for n, p in dual.global_ligo.named_parameters())
            return dual(batch, intermediate=intermediate).loss + self.mu / 2 * proximal

        mean_loss = self.local_training(participant, loss, state.optimiser, self.training["local_steps"],
                                        "round", round_number)
        return {k: v.clone() for k, v in dual.global_state().items()}, mean_loss


def unweighted_mean(updates):
    """Every participant's update counts the same, whatever its number of samples."""
    return {name: torch.stack([u[name].double() for u, _ in updates]).mean(0).to(first.dtype)
            for name, first in updates[0][0].items()}


@dataclass(frozen=True)
class ReluText(TextFamily):
    """The text family with ReLU instead of GELU in the FFN."""

    def config(self, shape):
        config = super().config(shape)
        config.hidden_act = "relu"
        return config
