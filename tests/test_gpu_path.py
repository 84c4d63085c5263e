"""The GPU path without a GPU: the `meta` device stands for CUDA. Every tensor the grown model's
functional call touches (the generated parameters and the skeleton's buffers, such as BERT's
non-persistent position_ids and token_type_ids) must be on the parameters' device."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from fedgrow_ray.dual_ligo import run_grown
from fedgrow_ray.models import Shape


class DevicesSeen(TorchDispatchMode):
    """Records the device of every tensor every operation receives."""

    def __init__(self):
        super().__init__()
        self.devices: dict[str, set] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        for item in tree_flatten((args, kwargs or {}))[0]:
            if isinstance(item, torch.Tensor):
                self.devices.setdefault(item.device.type, set()).add(str(func))
        return func(*args, **(kwargs or {}))


def test_the_functional_call_uses_nothing_off_the_parameters_device(family):
    """Guards against the cached skeleton keeping buffers on the CPU while the generated weights
    are on CUDA (the index_select device mismatch of the first GPU run)."""
    shape = Shape(width=32, layers=2, heads=2, ffn=64)
    params = {name: tensor.to("meta") for name, tensor in family.build(shape).named_parameters()}
    if family.name == "text":  # no attention mask: building one calls .item(), which meta cannot
        batch = {"input_ids": torch.zeros(2, 8, dtype=torch.long, device="meta")}
    else:
        size = family.image_size
        batch = {"pixel_values": torch.zeros(2, family.channels, size, size, device="meta")}
    batch["labels"] = torch.zeros(2, dtype=torch.long, device="meta")
    run_grown(family, shape, params, batch)  # builds (and caches) the skeleton: not the call itself
    seen = DevicesSeen()
    with seen:
        out = run_grown(family, shape, params, batch, training=True)
    assert out.logits.device.type == "meta" and out.loss.device.type == "meta"
    assert set(seen.devices) == {"meta"}, {k: sorted(v)[:5] for k, v in seen.devices.items() if k != "meta"}
    skeleton = family.skeleton(shape, device="meta")
    assert all(b.device.type == "meta" for _, b in skeleton.named_buffers())
    assert all(b.device.type == "cpu" for _, b in family.skeleton(shape).named_buffers())  # CPU one kept


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_grown_model_trains_on_cuda(family):
    """Guards against any CPU tensor left in the grown model's forward and backward on a GPU."""
    shape = Shape(width=32, layers=2, heads=2, ffn=64)
    params = {name: tensor.detach().cuda().requires_grad_() for name, tensor in family.build(shape).named_parameters()}
    if family.name == "text":
        batch = {"input_ids": torch.randint(0, 50, (2, 8)).cuda(), "attention_mask": torch.ones(2, 8).long().cuda()}
    else:
        batch = {"pixel_values": torch.randn(2, family.channels, family.image_size, family.image_size).cuda()}
    batch["labels"] = torch.zeros(2, dtype=torch.long).cuda()
    run_grown(family, shape, params, batch).loss.backward()
    assert all(p.grad is not None and p.grad.is_cuda for p in params.values() if p.grad is not None)
