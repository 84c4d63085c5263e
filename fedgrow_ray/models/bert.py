"""The text family: a BERT-style sequence classifier (BertForSequenceClassification)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from transformers import BertConfig, BertForSequenceClassification

from .base import Family, Shape, _positive_int

_LAYER = r"\.layers?\.(?P<layer>\d+)\."


@dataclass(frozen=True)
class TextFamily(Family):
    """BERT encoder + pooler + linear classifier over `num_classes` labels."""

    vocab_size: int = 30522
    max_positions: int = 128
    num_classes: int = 2
    dropout: float = 0.1

    name: ClassVar[str] = "text"
    model_class: ClassVar[type] = BertForSequenceClassification
    # (regex over the parameter name, module kind, hidden axis for embeddings)
    _patterns: ClassVar[tuple] = (
        (_LAYER + r"attention\.self\.query\.", "q", -1),
        (_LAYER + r"attention\.self\.key\.", "k", -1),
        (_LAYER + r"attention\.self\.value\.", "v", -1),
        (_LAYER + r"attention\.output\.dense\.", "o", -1),
        (_LAYER + r"attention\.output\.LayerNorm\.", "ln1", -1),
        (_LAYER + r"intermediate\.dense\.", "fc1", -1),
        (_LAYER + r"output\.dense\.", "fc2", -1),
        (_LAYER + r"output\.LayerNorm\.", "ln2", -1),
        (r"embeddings\.(word|position|token_type)_embeddings\.weight$", "embedding", -1),
        (r"embeddings\.LayerNorm\.", "norm", -1),
        (r"pooler\.dense\.", "pooler", -1),
        (r"^classifier\.", "head", -1),
    )

    def __post_init__(self):
        for key in ("vocab_size", "max_positions", "num_classes"):
            _positive_int("text family", key, getattr(self, key))

    def config(self, shape: Shape) -> BertConfig:
        return BertConfig(
            vocab_size=self.vocab_size, max_position_embeddings=self.max_positions,
            num_labels=self.num_classes, problem_type="single_label_classification",
            hidden_size=shape.width, num_hidden_layers=shape.layers,
            num_attention_heads=shape.heads, intermediate_size=shape.ffn,
            hidden_dropout_prob=self.dropout, attention_probs_dropout_prob=self.dropout,
            # torch's fused scaled-dot-product attention, also when called with generated weights
            attn_implementation="sdpa")

    @classmethod
    def from_config(cls, config) -> "TextFamily":
        return cls(vocab_size=config.vocab_size, max_positions=config.max_position_embeddings,
                   num_classes=config.num_labels, dropout=config.hidden_dropout_prob)

    def example_batch(self, batch_size, generator=None, sequence_length=None):
        length = sequence_length or self.max_positions
        return {
            "input_ids": torch.randint(0, self.vocab_size, (batch_size, length), generator=generator),
            "attention_mask": torch.ones(batch_size, length, dtype=torch.long),
            "labels": torch.randint(0, self.num_classes, (batch_size,), generator=generator),
        }
