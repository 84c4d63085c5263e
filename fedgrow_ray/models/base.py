"""What every model family shares: the growable `Shape`, the `Role` of each parameter, and the
`Family` interface the LiGO code is written against.

A family instance fixes what growth never changes (vocabulary, positions, image and patch size,
number of classes); a `Shape` gives what growth does change (width, depth, heads, FFN size).
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass, fields
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils.stateless import _reparametrize_module
from torch.utils.checkpoint import checkpoint
from transformers.modeling_layers import GradientCheckpointingLayer

# Module kinds inside a transformer layer, in the method's words. Each gets its own L2 x L1
# depth-coefficient matrix in LiGO.
LAYER_KINDS = ("q", "k", "v", "o", "ln1", "fc1", "fc2", "ln2")
# Kinds outside the layers: embedding tables (grown along their hidden axis), stand-alone norms
# (embedding / final LayerNorm), the BERT pooler and the classifier head.
GLOBAL_KINDS = ("embedding", "norm", "pooler", "head")


def _positive_int(owner: str, key: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{owner}: {key}={value!r} must be a positive integer")
    return value


@dataclass(frozen=True)
class Shape:
    """The growable size of a transformer: hidden width, number of layers, attention heads and
    FFN (intermediate) size. `ffn` defaults to 4 x width, the usual transformer ratio."""

    width: int
    layers: int
    heads: int
    ffn: int = 0

    def __post_init__(self):
        for f in fields(self):
            if f.name != "ffn" or self.ffn != 0:
                _positive_int("shape", f.name, getattr(self, f.name))
        if self.ffn == 0:
            object.__setattr__(self, "ffn", 4 * self.width)
        if self.width % self.heads:
            raise ValueError(
                f"shape: heads={self.heads} does not divide width={self.width} "
                f"(each head needs width/heads dimensions)")

    @classmethod
    def parse(cls, value, where: str = "shape") -> "Shape":
        """A Shape from a mapping such as {width: 256, layers: 4, heads: 8, ffn: 256}."""
        if isinstance(value, Shape):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping with width, layers, heads[, ffn], got {value!r}")
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        missing = sorted({"width", "layers", "heads"} - set(value))
        if missing:
            raise ValueError(f"{where}: missing key(s) {missing}")
        try:
            return cls(**value)
        except ValueError as err:
            raise ValueError(f"{where}: {str(err).removeprefix('shape: ')}") from None

    def as_dict(self) -> dict:
        return {"width": self.width, "layers": self.layers, "heads": self.heads, "ffn": self.ffn}

    def __str__(self) -> str:
        return f"{self.width}x{self.layers} (heads {self.heads}, ffn {self.ffn})"


@dataclass(frozen=True)
class Role:
    """Where a parameter sits: its module kind, its layer (None outside the layers) and, for
    embeddings, which tensor axis is the hidden one."""

    kind: str
    layer: int | None = None
    axis: int = -1


class Family:
    """A model family: builds Hugging Face models of a shape and tells LiGO each parameter's role.

    Subclasses are frozen dataclasses holding the fixed, non-growable sizes, plus:
      name, model_class, _patterns  (regex over parameter names -> (kind, hidden axis)).
    """

    name: ClassVar[str]
    model_class: ClassVar[type]
    _patterns: ClassVar[tuple[tuple[str, str, int], ...]]
    dropout: float

    # ---- what subclasses provide -------------------------------------------------------
    def config(self, shape: Shape):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config) -> "Family":
        raise NotImplementedError

    def example_batch(self, batch_size: int, generator: torch.Generator | None = None) -> dict:
        """Random inputs and labels of the right kind, for benchmarks and smoke tests."""
        raise NotImplementedError

    # ---- shared ---------------------------------------------------------------------------
    def build(self, shape: Shape, seed: int | None = None) -> nn.Module:
        """A freshly initialised model of `shape` (seeded when `seed` is given)."""
        if seed is None:
            return self.model_class(self.config(shape))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.model_class(self.config(shape))

    def skeleton(self, shape: Shape, checkpointing: bool = False, device: torch.device | str = "cpu") -> nn.Module:
        """A model of `shape` whose own weights are never used: LiGO calls it with generated
        parameters through torch.func.functional_call. One per shape, checkpointing and device
        per process. With `checkpointing`, its layers keep only their inputs in training and are
        recomputed, with the same generated weights, in the backward pass. Its buffers (BERT's
        non-persistent position_ids and token_type_ids) are on `device`, where the generated
        parameters are, since functional_call takes them from the module."""
        return _skeleton(self, shape, checkpointing, str(torch.device(device)))

    def roles(self, names) -> dict[str, Role]:
        """The role of each parameter name; an unmapped name is an error, never ignored."""
        return _roles(type(self), tuple(names))

    def shape_of(self, model: nn.Module) -> Shape:
        c = model.config
        return Shape(c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size)

    def load(self, path: str) -> tuple[nn.Module, Shape]:
        """Load a pre-trained checkpoint from a local folder (`save_pretrained` layout).

        The folder must agree with this family's fixed sizes (vocabulary, classes, ...); a
        checkpoint without a classification head gets a fresh one for `num_classes`."""
        model = self.model_class.from_pretrained(
            path, local_files_only=True, num_labels=self.num_classes, **self._load_overrides())
        found = type(self).from_config(model.config)
        mismatched = {f.name: (getattr(found, f.name), getattr(self, f.name))
                      for f in fields(self) if f.name != "dropout"
                      and getattr(found, f.name) != getattr(self, f.name)}
        if mismatched:
            detail = ", ".join(f"{k}={a} (expected {b})" for k, (a, b) in mismatched.items())
            raise ValueError(f"checkpoint {path}: {detail}")
        return model, self.shape_of(model)

    def _load_overrides(self) -> dict:
        return {"hidden_dropout_prob": self.dropout, "attention_probs_dropout_prob": self.dropout}


@functools.lru_cache(maxsize=None)
def _roles(family_type: type, names: tuple[str, ...]) -> dict[str, Role]:
    compiled = [(re.compile(p), kind, axis) for p, kind, axis in family_type._patterns]
    roles = {}
    for name in names:
        for pattern, kind, axis in compiled:
            m = pattern.search(name)
            if m:
                layer = m.groupdict().get("layer")
                roles[name] = Role(kind, None if layer is None else int(layer), axis)
                break
        else:
            raise ValueError(
                f"{family_type.name} family: parameter {name!r} has no LiGO role; the installed "
                f"transformers may name its modules differently (add a pattern in "
                f"fedgrow_ray/models/{family_type.__module__.rsplit('.', 1)[-1]}.py)")
    return roles


@functools.lru_cache(maxsize=16)
def _skeleton(family: Family, shape: Shape, checkpointing: bool, device: str) -> nn.Module:
    if device != "cpu":
        # The CPU skeleton's structure with its buffers on `device`; its parameters stay on the
        # CPU (never used by functional_call, and a target-sized copy on a GPU is memory wasted).
        model = copy.deepcopy(_skeleton(family, shape, checkpointing, "cpu"))
        for module in model.modules():
            for name, buffer in module._buffers.items():
                if buffer is not None:
                    module._buffers[name] = buffer.to(device)
        return model
    # Seeded, so that building it (the first time a process needs a shape, often in the middle
    # of a participant's training) never draws from the caller's random stream: results must
    # not depend on what else a process ran before. Never built as inference tensors (a first
    # use under evaluation's inference mode), since training reuses its buffers.
    with torch.inference_mode(False):
        model = family.build(shape, seed=0)
    model.requires_grad_(False)
    if checkpointing:
        for layer in model.modules():
            if isinstance(layer, GradientCheckpointingLayer):
                layer.gradient_checkpointing = True
                layer._gradient_checkpointing_func = functools.partial(_checkpoint_generated, layer)
    return model


def _checkpoint_generated(layer: nn.Module, forward, *args):
    """transformers' checkpointing hook for a layer run with generated weights: its own
    recomputation (torch.utils.checkpoint) would read the skeleton's unused weights, since the
    backward pass runs after functional_call has put them back. The generated tensors the layer
    holds now are passed as checkpoint inputs and put in place again for the recomputation, as
    functional_call itself does (torch.nn.utils.stateless._reparametrize_module)."""
    names, tensors = zip(*layer.named_parameters())

    def replay(*inputs):
        with _reparametrize_module(layer, dict(zip(names, inputs[len(args):]))):
            return forward(*inputs[:len(args)])

    return checkpoint(replay, *args, *tensors, use_reentrant=False)
