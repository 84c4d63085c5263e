"""Dual-LiGO: a participant's frozen small model, grown by its private Local-LiGO to the common
intermediate shape, then by the shared Global-LiGO to the target shape.

    T_i = Global( Local_i( S_i ) )

Parameter names carry who owns them: `small_model.*` and `local_ligo.*` are private to the
participant; only `global_ligo.*` is ever exchanged.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn
from torch.func import functional_call

from .ligo import LiGO, check_growth
from .models import Family, Shape, family_of

GLOBAL_PREFIX = "global_ligo."
LOCAL_PREFIX = "local_ligo."


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


class DualLiGO(nn.Module):
    """Local-LiGO (small -> intermediate) then Global-LiGO (intermediate -> target).

    small_model   a Hugging Face model of a supported family; frozen here.
    intermediate  the common intermediate Shape every participant grows to.
    target        the target Shape.
    global_ligo   an existing Global-LiGO to share (e.g. one operator trained on pooled data);
                  by default a fresh one.
    family        the model family (a plug-in's, fedgrow_ray.plugins); by default the built-in
                  family of small_model's class.
    Further keyword arguments (width_init, depth_init, init_noise, seed) set up both operators.
    """

    def __init__(self, small_model: nn.Module, intermediate: Shape, target: Shape, *,
                 global_ligo: LiGO | None = None, family: Family | None = None, **ligo_options):
        super().__init__()
        family = family or family_of(small_model)
        small = family.shape_of(small_model)
        check_growth(small, intermediate, "Local-LiGO (small -> intermediate)")
        check_growth(intermediate, target, "Global-LiGO (intermediate -> target)")
        self.family, self.small_shape = family, small
        self.intermediate_shape, self.target_shape = intermediate, target
        self.small_model = small_model.requires_grad_(False)
        seed = ligo_options.pop("seed", None)
        self.local_ligo = LiGO(family, small, intermediate, seed=seed, **ligo_options)
        if global_ligo is None:
            global_ligo = LiGO(family, intermediate, target,
                               seed=None if seed is None else seed + 1, **ligo_options)
        elif (global_ligo.source, global_ligo.target) != (intermediate, target):
            raise ValueError(f"shared Global-LiGO grows {global_ligo.source} -> {global_ligo.target}, "
                             f"expected {intermediate} -> {target}")
        self.global_ligo = global_ligo

    # ---- generated parameters ---------------------------------------------------------------
    def small_parameters(self) -> dict[str, torch.Tensor]:
        return dict(self.small_model.named_parameters())

    def intermediate_parameters(self) -> dict[str, torch.Tensor]:
        return self.local_ligo(self.small_parameters())

    def target_parameters(self, intermediate: dict[str, torch.Tensor] | None = None
                          ) -> dict[str, torch.Tensor]:
        """The grown target parameters. Pass precomputed (detached) `intermediate` parameters
        when Local-LiGO is frozen, so they are not rebuilt every step."""
        if intermediate is None:
            intermediate = self.intermediate_parameters()
        return self.global_ligo(intermediate)

    # ---- running the grown models -----------------------------------------------------------
    def forward(self, batch: dict, stage: str = "target", intermediate=None):
        """Run the grown model of `stage` ("target" or "intermediate") on a batch of model
        inputs (with `labels` for a loss); returns the Hugging Face output (loss, logits)."""
        if stage == "target":
            params, shape = self.target_parameters(intermediate), self.target_shape
        elif stage == "intermediate":
            params, shape = self.intermediate_parameters(), self.intermediate_shape
        else:
            raise ValueError(f"stage={stage!r}; allowed: 'target', 'intermediate'")
        return run_grown(self.family, shape, params, batch, training=self.training)

    def materialise(self, stage: str = "target") -> nn.Module:
        """A plain, standalone Hugging Face model of the grown shape (eval mode, no LiGO)."""
        with torch.no_grad():
            if stage == "target":
                params, shape = self.target_parameters(), self.target_shape
            elif stage == "intermediate":
                params, shape = self.intermediate_parameters(), self.intermediate_shape
            else:
                raise ValueError(f"stage={stage!r}; allowed: 'target', 'intermediate'")
            return materialise(self.family, shape, params)

    # ---- accounting ---------------------------------------------------------------------------
    def global_state(self) -> dict[str, torch.Tensor]:
        """What a participant sends: the Global-LiGO tensors, by their full names."""
        return {GLOBAL_PREFIX + k: v.detach() for k, v in self.global_ligo.state_dict().items()}

    def load_global_state(self, state: dict[str, torch.Tensor]) -> None:
        """Set Global-LiGO from tensors named as `global_state` names them."""
        self.global_ligo.load_state_dict(strip_prefix(state, GLOBAL_PREFIX))

    def parameter_counts(self) -> dict[str, int]:
        """Trainable parameters of each part, and the size of a full target model for scale."""
        return {
            "small_model": count_parameters(self.small_model),
            "local_ligo": count_parameters(self.local_ligo),
            "global_ligo": count_parameters(self.global_ligo),
            "trainable": count_parameters(self, trainable_only=True),
            "target_model": count_parameters(self.family.skeleton(self.target_shape)),
        }


def strip_prefix(state: dict, prefix: str) -> dict:
    wrong = [k for k in state if not k.startswith(prefix)]
    if wrong:
        raise ValueError(f"tensor names {wrong[:3]} do not start with {prefix!r}")
    return {k[len(prefix):]: v for k, v in state.items()}


def run_grown(family: Family, shape: Shape, params: dict, batch: dict, training: bool = True,
              checkpointing: bool = False):
    """Call a `shape` model of `family` with generated `params` (autograd flows into them),
    its layers checkpointed when `checkpointing` (Family.skeleton)."""
    skeleton = family.skeleton(shape, checkpointing, next(iter(params.values())).device)
    skeleton.train(training)
    return functional_call(skeleton, params, args=(), kwargs=batch, strict=False)


def materialise(family: Family, shape: Shape, params: dict) -> nn.Module:
    model = family.build(shape)
    missing, unexpected = model.load_state_dict(
        {k: v.detach().contiguous() for k, v in params.items()}, strict=False)
    buffers = {name for name, _ in model.named_buffers()}
    if unexpected or set(missing) - buffers:
        raise ValueError(f"grown parameters do not fit a {shape} model: missing "
                         f"{sorted(set(missing) - buffers)[:5]}, unexpected {unexpected[:5]}")
    return model.eval()


def state_sha256(state: dict[str, torch.Tensor]) -> str:
    """A digest of named tensors (order-independent), e.g. to show two runs ended identically."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
