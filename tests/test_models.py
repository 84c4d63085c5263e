"""Model families: configs from shapes, every parameter has a role, local checkpoints load."""

import pytest
import torch

from fedgrow_ray.dual_ligo import DualLiGO
from fedgrow_ray.models import LAYER_KINDS, Shape, family_of, get_family


def test_a_shape_builds_the_model_it_describes(family):
    shape = Shape(width=24, layers=3, heads=4)
    model = family.build(shape)
    assert family.shape_of(model) == shape and shape.ffn == 96
    assert family_of(model) == family
    out = model(**family.example_batch(2))
    assert out.logits.shape == (2, family.num_classes) and out.loss.ndim == 0


def test_seeded_build_is_reproducible(family):
    a, b = family.build(Shape(16, 1, 2), seed=3), family.build(Shape(16, 1, 2), seed=3)
    c = family.build(Shape(16, 1, 2), seed=4)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_every_parameter_has_a_role_with_its_layer(family):
    model = family.build(Shape(16, 3, 2))
    roles = family.roles(n for n, _ in model.named_parameters())
    assert len(roles) == len(list(model.parameters()))
    for kind in LAYER_KINDS:
        layers = sorted({r.layer for r in roles.values() if r.kind == kind})
        assert layers == [0, 1, 2], kind
    assert {r.kind for r in roles.values() if r.layer is None} >= {"embedding", "norm", "head"}
    with pytest.raises(ValueError, match="has no LiGO role"):
        family.roles(["encoder.adapter.weight"])


def test_a_local_checkpoint_loads_and_grows(family, tmp_path):
    shape = Shape(16, 2, 2)
    trained = family.build(shape, seed=5).eval()
    trained.save_pretrained(tmp_path / "ckpt")
    loaded, loaded_shape = family.load(str(tmp_path / "ckpt"))
    assert loaded_shape == shape
    batch = family.example_batch(3, torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(**batch).logits, trained(**batch).logits)
        dual = DualLiGO(loaded, shape, Shape(24, 3, 4), seed=0)
        assert dual(batch).logits.shape == (3, family.num_classes)


def test_a_checkpoint_of_other_sizes_is_refused(tmp_path):
    get_family("text", vocab_size=80, num_classes=4).build(Shape(16, 1, 2)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"vocab_size=80 \(expected 64\)"):
        get_family("text", vocab_size=64, num_classes=4).load(str(tmp_path))
