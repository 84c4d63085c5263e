"""The LiGO growth operator: a learned linear map from a small transformer's parameters to a
larger one's (Wang et al., ICLR 2023), generic over a model family.

Width: every weight W of a small layer becomes B_out W B_in^T, every vector v becomes B_out v.
The expansions are tied along the residual stream (see docs in fedgrow-method.md):
  one residual expansion E (D2 x D1) for embeddings, norms, the in-side of Q/K/V/FFN-in and the
  head, and the out-side of attention-out and FFN-out; per small layer l, B_q[l], B_k[l], B_v[l]
  (out-side of Q, K, V; attention-out reads through B_v[l]^T) and B_fc1[l] (FFN hidden size).
Depth: large layer i of kind m is sum_j w_m[i, j] * (width-grown small layer j of kind m), one
L2 x L1 matrix w_m per kind m in (q, k, v, o, ln1, fc1, fc2, ln2); a bias shares its weight's w.

The operator returns a dict of the large model's parameters built from the small ones with
autograd intact, so a task loss computed with torch.func.functional_call trains E, the B's
and the w's. Vocabulary, positions and classes are never widened.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .models import LAYER_KINDS, Family, Shape

WIDTH_INITS = ("identity-plus", "xavier")
DEPTH_INITS = ("stack", "uniform")

# Which expansion multiplies each kind's output rows and input columns ("residual" is E).
_OUT = {"q": "q", "k": "k", "v": "v", "o": "residual", "ln1": "residual", "fc1": "fc1",
        "fc2": "residual", "ln2": "residual", "norm": "residual", "pooler": "residual",
        "embedding": "residual", "head": None}
_IN = {"q": "residual", "k": "residual", "v": "residual", "o": "v", "fc1": "residual",
       "fc2": "fc1", "pooler": "residual", "head": "residual"}


def check_growth(source: Shape, target: Shape, what: str = "growth") -> None:
    """Raise a clear error if `target` cannot be grown from `source`."""
    for key in ("width", "layers", "ffn"):
        s, t = getattr(source, key), getattr(target, key)
        if t < s:
            raise ValueError(f"{what}: target {key}={t} is smaller than source {key}={s} "
                             f"(source {source}, target {target}); LiGO only grows")


def _check_init(width_init: str, depth_init: str) -> None:
    if width_init not in WIDTH_INITS:
        raise ValueError(f"width_init={width_init!r} is unknown; allowed: {list(WIDTH_INITS)}")
    if depth_init not in DEPTH_INITS:
        raise ValueError(f"depth_init={depth_init!r} is unknown; allowed: {list(DEPTH_INITS)}")


class LiGO(nn.Module):
    """Grows parameters of a `source`-shaped model into a `target`-shaped one of `family`.

    Parameters (their names are what crosses the wire for Global-LiGO):
      width_residual  (D2, D1)        E
      width_q/k/v     (L1, D2, D1)    B_q, B_k, B_v per small layer
      width_fc1       (L1, F2, F1)    B_fc1 per small layer
      depth_<kind>    (L2, L1)        one per layer kind
    """

    def __init__(self, family: Family, source: Shape, target: Shape, *,
                 width_init: str = "identity-plus", depth_init: str = "stack",
                 init_noise: float = 0.01, seed: int | None = None):
        super().__init__()
        check_growth(source, target)
        _check_init(width_init, depth_init)
        if init_noise < 0:
            raise ValueError(f"init_noise={init_noise} must be >= 0")
        self.family, self.source, self.target = family, source, target
        self.width_init, self.depth_init, self.init_noise = width_init, depth_init, init_noise
        d1, d2, l1, l2 = source.width, target.width, source.layers, target.layers
        f1, f2 = source.ffn, target.ffn
        self.width_residual = nn.Parameter(torch.empty(d2, d1))
        self.width_q = nn.Parameter(torch.empty(l1, d2, d1))
        self.width_k = nn.Parameter(torch.empty(l1, d2, d1))
        self.width_v = nn.Parameter(torch.empty(l1, d2, d1))
        self.width_fc1 = nn.Parameter(torch.empty(l1, f2, f1))
        for kind in LAYER_KINDS:
            self.register_parameter(f"depth_{kind}", nn.Parameter(torch.empty(l2, l1)))
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        self.reset_parameters(generator)

    @staticmethod
    def parameter_count(source: Shape, target: Shape) -> int:
        """E, B_q, B_k, B_v, B_fc1 and the 8 depth matrices, without building them."""
        d1, d2, l1, l2 = source.width, target.width, source.layers, target.layers
        return d2 * d1 * (1 + 3 * l1) + l1 * target.ffn * source.ffn + len(LAYER_KINDS) * l2 * l1

    @staticmethod
    def generation_flops(family: Family, source: Shape, target: Shape) -> float:
        """Matmul FLOPs of one forward growth (`forward`): building every `target` parameter
        from the `source` ones, a multiply-add counted as 2 FLOPs. With expansion sizes
        (target x source) of D2 x D1 for E, B_q, B_k, B_v and F2 x F1 for B_fc1, per tensor:

            layer weight W (o1 x i1), out-side B_o (o2 x o1), in-side B_i (i2 x i1):
                2 * o2 * o1 * i1 + 2 * o2 * i1 * i2          (B_o W, then (B_o W) B_i^T)
            layer vector v (o1):  2 * o2 * o1                 (B_o v)
            depth blend, per layer tensor of the target:  2 * L2 * L1 * numel(target tensor)
            embedding table, R rows not grown (vocabulary, positions, patch inputs, CLS):
                2 * R * D1 * D2
            classifier head (C x D1):  2 * C * D1 * D2;  pooler weight: 2 * D2 * D1 * (D1 + D2)
            norms and the pooler bias:  2 * D2 * D1

        summed over the parameters of a `source` model of `family`. The family matters only
        through the rows growth never widens (vocabulary, positions, classes), which dominate
        for a text model with a large vocabulary. Training the operator costs about 3 times
        this (forward, then gradients for inputs and weights)."""
        check_growth(source, target)
        sizes = {"residual": (target.width, source.width), "q": (target.width, source.width),
                 "k": (target.width, source.width), "v": (target.width, source.width),
                 "fc1": (target.ffn, source.ffn)}
        d1, d2, l1, l2 = source.width, target.width, source.layers, target.layers
        params = dict(family.skeleton(source).named_parameters())
        flops = 0
        for name, role in family.roles(params).items():
            tensor = params[name]
            if role.layer is None:
                if role.kind == "embedding":
                    flops += 2 * (tensor.numel() // d1) * d1 * d2
                elif role.kind == "head":
                    flops += 2 * tensor.shape[0] * d1 * d2 if tensor.dim() == 2 else 0
                elif tensor.dim() == 2:  # pooler weight: E W E^T
                    flops += 2 * d2 * d1 * d1 + 2 * d2 * d1 * d2
                else:
                    flops += 2 * d2 * d1
                continue
            o2, o1 = sizes[_OUT[role.kind]]
            if tensor.dim() == 2:
                i2, i1 = sizes[_IN[role.kind]]
                flops += 2 * o2 * o1 * i1 + 2 * o2 * i1 * i2
                grown = o2 * i2
            else:
                flops += 2 * o2 * o1
                grown = o2
            if role.layer == 0:  # one depth blend per (kind, tensor): L2 target layers from L1
                flops += 2 * l2 * l1 * grown
        return float(flops)

    # ---- initialisation ---------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        src, tgt = self.source, self.target
        for name in ("width_residual", "width_q", "width_k", "width_v", "width_fc1"):
            param = getattr(self, name)
            heads = (src.heads, tgt.heads) if name in ("width_q", "width_k", "width_v") else (1, 1)
            for matrix in (param if param.dim() == 3 else [param]):
                if self.width_init == "xavier":
                    bound = math.sqrt(6.0 / sum(matrix.shape))
                    matrix.copy_(torch.rand(matrix.shape, generator=generator) * 2 * bound - bound)
                else:
                    matrix.copy_(_identity_plus(*matrix.shape, *heads, self.init_noise, generator))
        l1, l2 = src.layers, tgt.layers
        for kind in LAYER_KINDS:
            w = getattr(self, f"depth_{kind}")
            if self.depth_init == "uniform":
                w.fill_(1.0 / l1)
            else:
                w.zero_()
                w[torch.arange(l2), torch.arange(l2) % l1] = 1.0
                if l2 > l1:  # copies of one small layer start equal: noise breaks the tie
                    w.add_(torch.randn(w.shape, generator=generator) * self.init_noise)

    # ---- growth -----------------------------------------------------------------------------
    def forward(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The target model's parameters (by name) grown from the source model's `params`."""
        roles = self.family.roles(params)
        n_source = self.source.layers
        layered: dict[tuple[str, str], list] = {}
        grown: dict[str, torch.Tensor] = {}
        for name, role in roles.items():
            if role.layer is None:
                grown[name] = self._grow_global(params[name], role)
            else:
                prefix, _, leaf = name.rpartition(".")
                slot = layered.setdefault((role.kind, leaf), [None] * n_source)
                slot[role.layer] = (params[name], prefix.replace(f".{role.layer}.", ".{}.", 1))
        for (kind, leaf), per_layer in layered.items():
            if any(p is None for p in per_layer):
                raise ValueError(f"source parameters for {kind}.{leaf} do not cover all "
                                 f"{n_source} layers of {self.source}")
            stacked = torch.stack([p for p, _ in per_layer])
            mixed = self._grow_layers(kind, stacked)
            template = per_layer[0][1]
            for i, tensor in enumerate(mixed.unbind(0)):
                grown[f"{template.format(i)}.{leaf}"] = tensor
        return grown

    def _expansion(self, side: str | None):
        return None if side is None else getattr(self, f"width_{side}")

    def _grow_layers(self, kind: str, stacked: torch.Tensor) -> torch.Tensor:
        """(L1, ...) small tensors of one kind -> (L2, ...) large ones: width, then depth."""
        out = self._expansion(_OUT[kind])
        if stacked.dim() == 3:  # weights (L1, out, in)
            wide = out @ stacked @ self._expansion(_IN[kind]).transpose(-1, -2)
        else:                   # biases and LayerNorm vectors (L1, out)
            wide = (out @ stacked.unsqueeze(-1)).squeeze(-1)
        depth = getattr(self, f"depth_{kind}")
        return (depth @ wide.flatten(1)).view(self.target.layers, *wide.shape[1:])

    def _grow_global(self, tensor: torch.Tensor, role) -> torch.Tensor:
        e = self.width_residual
        if role.kind == "embedding":  # the hidden axis grows; rows (vocab, positions) do not
            moved = tensor.movedim(role.axis, -1)
            return (moved.reshape(-1, moved.shape[-1]) @ e.T).view(*moved.shape[:-1], -1).movedim(-1, role.axis)
        if role.kind == "head":       # classes stay; the head reads the residual stream
            return tensor @ e.T if tensor.dim() == 2 else tensor
        if tensor.dim() == 2:         # pooler weight
            return e @ tensor @ e.T
        return e @ tensor             # norms and the pooler bias

    def extra_repr(self) -> str:
        return (f"{self.source} -> {self.target}, width_init={self.width_init}, "
                f"depth_init={self.depth_init}")


def _identity_plus(rows: int, cols: int, heads_in: int, heads_out: int, noise: float,
                   generator) -> torch.Tensor:
    """A rows x cols expansion whose old features pass through unchanged and whose new rows are
    small random. With equal head counts the identity is placed head by head, so each grown head
    starts as the matching small head."""
    m = torch.randn(rows, cols, generator=generator) * noise
    if heads_in == heads_out and heads_in > 1:
        d_in, d_out = cols // heads_in, rows // heads_out
        for h in range(heads_in):
            m[h * d_out:h * d_out + d_in, h * d_in:(h + 1) * d_in] = torch.eye(d_in)
            m[h * d_out:h * d_out + d_in, :h * d_in] = 0
            m[h * d_out:h * d_out + d_in, (h + 1) * d_in:] = 0
    else:
        m[:cols] = torch.eye(cols)
    return m
