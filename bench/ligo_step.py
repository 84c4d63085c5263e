"""Cost of growing: one Dual-LiGO training step against one plain training step of the target.

The authors' ladder (small 256 x 2, intermediate 320 x 4, target 384 x 6, FFN = width, 8 heads):
text with batch 32 x 128 tokens (BERT vocabulary 30522), image with batch 32 of 32 x 32 images
(patch 4). Both steps use AdamW: the plain step updates the whole target model, the Dual-LiGO
step updates Local-LiGO and Global-LiGO through the grown model (torch.func.functional_call).

    python bench/ligo_step.py [--steps 7] [--threads N]
    python bench/ligo_step.py --family image --image-size 224 --patch-size 16 --batch 64 --threads 1
        (the authors' ViT workload of bench/authors_ladder.py, one step of one participant)

Last line: ratio=<the larger of the two families' Dual-LiGO / plain step-time ratios>.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fedgrow_ray.dual_ligo import DualLiGO
from fedgrow_ray.models import Shape, get_family

SMALL, INTERMEDIATE, TARGET = Shape(256, 2, 8, 256), Shape(320, 4, 8, 320), Shape(384, 6, 8, 384)


def time_steps(plain, grown, steps: int) -> tuple[float, float]:
    """Median step times of the two, interleaved (plain, grown, plain, ...) so that drift in
    the machine's speed (other tenants on a shared VM) hits both alike."""
    plain(), grown()  # warm-up: allocator, autograd graph caches
    times = {plain: [], grown: []}
    for _ in range(steps):
        for step in (plain, grown):
            start = time.perf_counter()
            step()
            times[step].append(time.perf_counter() - start)
    return statistics.median(times[plain]), statistics.median(times[grown])


def train_step(loss_fn, optimiser):
    def step():
        loss = loss_fn()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--family", choices=("text", "image"), action="append",
                        help="only this family (default: both)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--patch-size", type=int, default=4)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    families = {
        "text": (get_family("text", vocab_size=30522, max_positions=128, num_classes=4),
                 {"sequence_length": 128}),
        "image": (get_family("image", image_size=args.image_size, patch_size=args.patch_size, num_classes=10), {}),
    }
    families = {name: f for name, f in families.items() if not args.family or name in args.family}
    print(f"threads={torch.get_num_threads()} small={SMALL} intermediate={INTERMEDIATE} target={TARGET}")
    ratios = {}
    for name, (family, batch_options) in families.items():
        batch = family.example_batch(args.batch, torch.Generator().manual_seed(0), **batch_options)
        target = family.build(TARGET).train()
        dual = DualLiGO(family.build(SMALL), INTERMEDIATE, TARGET, seed=0).train()
        trainable = [p for p in dual.parameters() if p.requires_grad]
        plain, grown = time_steps(
            train_step(lambda: target(**batch).loss, torch.optim.AdamW(target.parameters(), lr=1e-4)),
            train_step(lambda: dual(batch).loss, torch.optim.AdamW(trainable, lr=1e-4)), args.steps)
        ratios[name] = grown / plain
        counts = dual.parameter_counts()
        print(f"{name:5s} plain_step_s={plain:.3f} dual_ligo_step_s={grown:.3f} ratio={ratios[name]:.3f} "
              f"trainable={counts['trainable']:,} target_params={counts['target_model']:,}")
    print(f"ratio={max(ratios.values()):.3f}")


if __name__ == "__main__":
    main()
