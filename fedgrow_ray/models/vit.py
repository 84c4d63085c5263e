"""The image family: a ViT-style image classifier (ViTForImageClassification)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from transformers import ViTConfig, ViTForImageClassification

from .base import Family, Shape, _positive_int

_LAYER = r"\.layers?\.(?P<layer>\d+)\."


@dataclass(frozen=True)
class ImageFamily(Family):
    """ViT: patch embedding + [CLS] + learned positions, pre-LN encoder, linear classifier."""

    image_size: int = 32
    patch_size: int = 4
    channels: int = 3
    num_classes: int = 10
    dropout: float = 0.1

    name: ClassVar[str] = "image"
    model_class: ClassVar[type] = ViTForImageClassification
    # Current transformers names (q_proj, mlp.fc1, ...) and the older ones (attention.attention.query,
    # intermediate.dense, ...) both map; the hidden axis of the patch projection is its first.
    _patterns: ClassVar[tuple] = (
        (_LAYER + r"attention\.(attention\.query|q_proj)\.", "q", -1),
        (_LAYER + r"attention\.(attention\.key|k_proj)\.", "k", -1),
        (_LAYER + r"attention\.(attention\.value|v_proj)\.", "v", -1),
        (_LAYER + r"attention\.(output\.dense|o_proj)\.", "o", -1),
        (_LAYER + r"layernorm_before\.", "ln1", -1),
        (_LAYER + r"(intermediate\.dense|mlp\.fc1)\.", "fc1", -1),
        (_LAYER + r"(output\.dense|mlp\.fc2)\.", "fc2", -1),
        (_LAYER + r"layernorm_after\.", "ln2", -1),
        (r"embeddings\.(cls_token|position_embeddings)$", "embedding", -1),
        (r"embeddings\.patch_embeddings\.projection\.(weight|bias)$", "embedding", 0),
        (r"^vit\.layernorm\.", "norm", -1),
        (r"^classifier\.", "head", -1),
    )

    def __post_init__(self):
        for key in ("image_size", "patch_size", "channels", "num_classes"):
            _positive_int("image family", key, getattr(self, key))
        if self.image_size % self.patch_size:
            raise ValueError(f"image family: patch_size={self.patch_size} does not divide "
                             f"image_size={self.image_size}")

    def config(self, shape: Shape) -> ViTConfig:
        return ViTConfig(
            image_size=self.image_size, patch_size=self.patch_size, num_channels=self.channels,
            num_labels=self.num_classes, problem_type="single_label_classification",
            hidden_size=shape.width, num_hidden_layers=shape.layers,
            num_attention_heads=shape.heads, intermediate_size=shape.ffn,
            hidden_dropout_prob=self.dropout, attention_probs_dropout_prob=self.dropout,
            # torch's fused scaled-dot-product attention, also when called with generated weights
            attn_implementation="sdpa")

    @classmethod
    def from_config(cls, config) -> "ImageFamily":
        return cls(image_size=config.image_size, patch_size=config.patch_size,
                   channels=config.num_channels, num_classes=config.num_labels,
                   dropout=config.hidden_dropout_prob)

    def example_batch(self, batch_size, generator=None):
        size = (batch_size, self.channels, self.image_size, self.image_size)
        return {
            "pixel_values": torch.randn(size, generator=generator),
            "labels": torch.randint(0, self.num_classes, (batch_size,), generator=generator),
        }
