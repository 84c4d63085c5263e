"""The LiGO operator and Dual-LiGO: exactness, shapes, the tying formulas, gradients, learning."""

import pytest
import torch

from conftest import toy_batch
from fedgrow_ray.dual_ligo import DualLiGO, count_parameters
from fedgrow_ray.ligo import LiGO
from fedgrow_ray.models import LAYER_KINDS, Shape, get_family


def test_identity_growth_reproduces_the_small_model(family):
    shape = Shape(width=32, layers=3, heads=4, ffn=48)
    small = family.build(shape, seed=0).eval()
    dual = DualLiGO(small, shape, shape, width_init="identity-plus", depth_init="stack").eval()
    batch = family.example_batch(4, torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = small(**batch).logits
        torch.testing.assert_close(dual(batch).logits, expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(dual(batch, stage="intermediate").logits, expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(dual.materialise()(**batch).logits, expected, rtol=0, atol=1e-6)


LADDER_SMALL = [Shape(256, depth, 8, 256) for depth in (2, 3, 4)]
LADDER_INTERMEDIATE = Shape(320, 4, 8, 320)
LADDER_TARGET = Shape(384, 6, 8, 384)


@pytest.mark.parametrize("name", ["text", "image"])
def test_authors_ladder_shapes_and_global_ligo_size(name):
    family = get_family(name, **({"vocab_size": 500} if name == "text" else {}), dropout=0.0)
    reference = family.build(LADDER_TARGET).state_dict()
    global_ligo = None
    for i, small_shape in enumerate(LADDER_SMALL):
        dual = DualLiGO(family.build(small_shape, seed=i), LADDER_INTERMEDIATE, LADDER_TARGET,
                        global_ligo=global_ligo, seed=i)
        global_ligo = dual.global_ligo  # every participant feeds the same intermediate shape
        grown = dual.materialise().state_dict()
        assert grown.keys() == reference.keys()
        for key, tensor in reference.items():
            assert grown[key].shape == tensor.shape, key
        assert dual.materialise().config.num_attention_heads == 8  # the target keeps 8 heads
        # Local-LiGO grows this participant's own small model: its size depends on the depth.
        d0, d1, l0, l1 = 256, 320, small_shape.layers, 4
        assert dual.parameter_counts()["local_ligo"] == d1 * d0 * (1 + 4 * l0) + 8 * l1 * l0

    # Global-LiGO: E (D2 x D1), B_q, B_k, B_v, B_fc1 per intermediate layer (FFN = width), and
    # 8 depth matrices L2 x L1. The family adds nothing: the BERT pooler, the embeddings and the
    # head are tied to E (the pooler is E W E^T), so the count is the same for both families.
    d1, d2, l1, l2 = 320, 384, 4, 6
    assert count_parameters(global_ligo) == d2 * d1 * (1 + 4 * l1) + 8 * l2 * l1 == 2_089_152
    assert LiGO.parameter_count(LADDER_INTERMEDIATE, LADDER_TARGET) == 2_089_152


def _by_kind(family, params, kind, layer, leaf="weight"):
    roles = family.roles(params)
    [name] = [n for n, r in roles.items() if r.kind == kind and r.layer == layer and n.endswith(leaf)]
    return params[name]


def test_every_layer_kind_follows_the_tying_formulas(family):
    """Q = B_q W_q E^T, K, V alike, O = E W_o B_v^T, fc1 = B_fc1 W_fc1 E^T, fc2 = E W_fc2 B_fc1^T,
    LayerNorms E g, then large layer i = sum_j w[i, j] small_j. In particular the FFN comes from
    the FFN's own weights (the LiGO pseudo-code, and the authors' code, take V's by mistake)."""
    small_shape, large_shape = Shape(16, 2, 2, 24), Shape(24, 3, 4, 40)
    small = family.build(small_shape, seed=0)
    ligo = LiGO(family, small_shape, large_shape, width_init="xavier", depth_init="uniform", seed=0)
    with torch.no_grad():  # random depth weights, so a mix-up between kinds cannot hide
        for kind in LAYER_KINDS:
            getattr(ligo, f"depth_{kind}").normal_()
        params = dict(small.named_parameters())
        grown = ligo(params)
    e = ligo.width_residual
    b = {"q": ligo.width_q, "k": ligo.width_k, "v": ligo.width_v, "fc1": ligo.width_fc1}
    formulas = {
        "q": lambda w, j: b["q"][j] @ w @ e.T, "k": lambda w, j: b["k"][j] @ w @ e.T,
        "v": lambda w, j: b["v"][j] @ w @ e.T, "o": lambda w, j: e @ w @ b["v"][j].T,
        "fc1": lambda w, j: b["fc1"][j] @ w @ e.T, "fc2": lambda w, j: e @ w @ b["fc1"][j].T,
        "ln1": lambda w, j: e @ w, "ln2": lambda w, j: e @ w,
    }
    for kind, formula in formulas.items():
        depth = getattr(ligo, f"depth_{kind}")
        for i in range(large_shape.layers):
            expected = sum(depth[i, j] * formula(_by_kind(family, params, kind, j), j)
                           for j in range(small_shape.layers))
            torch.testing.assert_close(_by_kind(family, grown, kind, i), expected.detach(),
                                       msg=f"{kind} layer {i}")
    # The pin for the authors' mistake: an FFN grown from V would not move with W_fc1.
    with torch.no_grad():
        before = _by_kind(family, grown, "fc1", 0).clone()
        _by_kind(family, params, "v", 0).add_(1.0)
        assert torch.equal(_by_kind(family, ligo(params), "fc1", 0), before)
        _by_kind(family, params, "fc1", 0).add_(1.0)
        assert not torch.allclose(_by_kind(family, ligo(params), "fc1", 0), before)


def test_embeddings_grow_along_the_hidden_axis_only(family):
    small_shape, large_shape = Shape(16, 1, 2), Shape(24, 2, 2)
    small = family.build(small_shape, seed=0)
    ligo = LiGO(family, small_shape, large_shape, seed=0)
    params = dict(small.named_parameters())
    with torch.no_grad():
        grown = ligo(params)
    e = ligo.width_residual
    for name, role in family.roles(params).items():
        if role.kind != "embedding":
            continue
        small_t, grown_t = params[name], grown[name]
        expected_shape = list(small_t.shape)
        expected_shape[role.axis] = large_shape.width
        assert list(grown_t.shape) == expected_shape, name
        expected = torch.tensordot(small_t, e, dims=([role.axis], [1])).movedim(-1, role.axis)
        torch.testing.assert_close(grown_t, expected, msg=name)  # ViT positions are grown, too
    head = [n for n, r in family.roles(params).items() if r.kind == "head"]
    for name in head:  # classes are never widened
        assert grown[name].shape[0] == family.num_classes


def test_gradients_reach_every_operator_parameter_and_never_the_small_model(family):
    small = family.build(Shape(16, 2, 2, 24), seed=0)
    dual = DualLiGO(small, Shape(24, 3, 4, 32), Shape(32, 4, 4, 48), seed=0).train()
    dual(toy_batch(family, 8, torch.Generator().manual_seed(0))).loss.backward()
    trainable = {n: p for n, p in dual.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("local_ligo.", "global_ligo.")) for n in trainable)
    for name, param in trainable.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(p.grad is None and not p.requires_grad for p in dual.small_model.parameters())


@pytest.mark.parametrize("source, target", [(Shape(16, 1, 2, 32), Shape(24, 2, 2, 48)),
                                            (Shape(32, 2, 4), Shape(48, 4, 4))])
def test_generation_flops_count_the_growth_matmuls(family, source, target):
    """The formula against torch's own FLOP counter on a real growth; the counter skips
    matrix-vector products (aten.mv), which the formula counts for the norms and pooler bias
    outside the layers: 2 * D2 * D1 each."""
    from torch.utils.flop_counter import FlopCounterMode

    ligo = LiGO(family, source, target, seed=0)
    params = dict(family.skeleton(source).named_parameters())
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        ligo(params)
    roles = family.roles(params)
    vectors = sum(1 for name, role in roles.items() if role.layer is None
                  and role.kind in ("norm", "pooler") and params[name].dim() == 1)
    assert vectors >= 2
    expected = counter.get_total_flops() + vectors * 2 * target.width * source.width
    assert LiGO.generation_flops(family, source, target) == expected


def test_names_say_who_owns_each_tensor(text_family):
    dual = DualLiGO(text_family.build(Shape(16, 1, 2)), Shape(16, 2, 2), Shape(24, 2, 2))
    shared = dual.global_state()
    assert shared and all(name.startswith("global_ligo.") for name in shared)
    assert shared.keys() == {n for n, _ in dual.named_parameters() if n.startswith("global_ligo.")}
    other = DualLiGO(text_family.build(Shape(24, 2, 4)), Shape(24, 2, 2), Shape(24, 2, 2))
    with pytest.raises(RuntimeError):  # a different intermediate shape cannot take this state
        other.load_global_state(shared)


def _pretrain(model, family, steps, generator):
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(steps):
        loss = model(**toy_batch(family, 32, generator)).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model


def test_dual_ligo_training_lowers_the_loss_for_heterogeneous_participants(family):
    """Three participants of different depth and width grow into one intermediate shape; one
    shared Global-LiGO and their private Local-LiGOs learn together."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    intermediate, target = Shape(32, 2, 4, 64), Shape(48, 3, 4, 96)
    smalls = [Shape(16, 1, 2, 32), Shape(24, 2, 4, 48), Shape(32, 1, 4, 64)]
    duals, global_ligo = [], None
    for i, shape in enumerate(smalls):
        small = _pretrain(family.build(shape, seed=i), family, 60, generator)
        duals.append(DualLiGO(small, intermediate, target, global_ligo=global_ligo, seed=i).train())
        global_ligo = duals[-1].global_ligo
    trainable = {id(p): p for d in duals for p in d.parameters() if p.requires_grad}
    optimiser = torch.optim.AdamW(trainable.values(), lr=1e-3)
    held_out = [toy_batch(family, 64, torch.Generator().manual_seed(100 + i)) for i in range(3)]

    def held_out_loss():
        with torch.no_grad():
            for d in duals:
                d.eval()
            loss = sum(d(b).loss.item() for d, b in zip(duals, held_out)) / len(duals)
            for d in duals:
                d.train()
            return loss

    before = held_out_loss()
    for _ in range(40):
        loss = sum(d(toy_batch(family, 16, generator)).loss for d in duals)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = held_out_loss()
    assert after < 0.7 * before, (before, after)


@pytest.mark.parametrize("make, message", [
    (lambda f: DualLiGO(f.build(Shape(32, 2, 4)), Shape(24, 2, 4), Shape(48, 3, 4)),
     "target width=24 is smaller than source width=32"),
    (lambda f: DualLiGO(f.build(Shape(32, 2, 4)), Shape(32, 3, 4), Shape(48, 2, 4)),
     "target layers=2 is smaller than source layers=3"),
    (lambda f: LiGO(f, Shape(32, 2, 4, 128), Shape(48, 2, 4, 64)),
     "target ffn=64 is smaller than source ffn=128"),
    (lambda f: Shape(30, 2, 4), "heads=4 does not divide width=30"),
    (lambda f: Shape.parse({"width": 32, "layers": 0, "heads": 4}, "participants.shapes[1]"),
     "participants.shapes[1]: layers=0 must be a positive integer"),
    (lambda f: Shape.parse({"width": 32, "heads": 4}, "target"), "target: missing key(s) ['layers']"),
    (lambda f: Shape.parse({"width": 32, "layers": 2, "heads": 4, "depth": 3}, "target"),
     "target: unknown key(s) ['depth']"),
    (lambda f: get_family("audio"), "model family 'audio' is unknown; allowed: ['image', 'text']"),
    (lambda f: get_family("text", hidden=3), "text family: unknown key(s) ['hidden']"),
    (lambda f: get_family("image", image_size=30, patch_size=4), "patch_size=4 does not divide image_size=30"),
    (lambda f: LiGO(f, Shape(32, 2, 4), Shape(48, 2, 4), width_init="orthogonal"),
     "width_init='orthogonal' is unknown; allowed: ['identity-plus', 'xavier']"),
    (lambda f: LiGO(f, Shape(32, 2, 4), Shape(48, 2, 4), depth_init="interpolate"),
     "depth_init='interpolate' is unknown; allowed: ['stack', 'uniform']"),
])
def test_bad_input_is_a_clear_error(text_family, make, message):
    with pytest.raises(ValueError) as err:
        make(text_family)
    assert message in str(err.value)
