"""Raw examples to fixed-size arrays, with nothing downloaded: a word-level tokenizer trained on
the training texts, and images converted and resized to the model's size."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")  # [PAD] must stay id 0: masks come from ids
IMAGE_MODES = {1: "L", 3: "RGB"}


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
    """A lowercasing word-level tokenizer with at most `vocab_size` entries (specials included)."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # words and runs of punctuation
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                        show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tokenizer.token_to_id("[CLS]")),
                                                 ("[SEP]", tokenizer.token_to_id("[SEP]"))])
    return tokenizer


def encode_texts(tokenizer: Tokenizer, texts: list[str], max_positions: int) -> np.ndarray:
    """Token ids, int32 (N, max_positions): [CLS] first, truncated or padded with [PAD]=0."""
    tokenizer.enable_truncation(max_length=max_positions)
    tokenizer.enable_padding(length=max_positions, pad_id=0, pad_token="[PAD]")
    ids = np.array([e.ids for e in tokenizer.encode_batch(texts)], dtype=np.int32)
    return ids.reshape(len(texts), max_positions)


def encode_images(dataset: Dataset, image_size: int, channels: int, batch_size: int = 512) -> np.ndarray:
    """The `image` column as uint8 (N, channels, image_size, image_size)."""
    from datasets import Image as ImageFeature

    mode = IMAGE_MODES[channels]
    # Decoded images come as PIL; array columns (the synthetic set) are fastest read as numpy.
    rows = dataset if isinstance(dataset.features["image"], ImageFeature) else dataset.with_format("numpy")
    out = np.empty((len(dataset), channels, image_size, image_size), dtype=np.uint8)
    i = 0
    for batch in rows.select_columns(["image"]).iter(batch_size=batch_size):
        for image in batch["image"]:
            if not isinstance(image, Image.Image):
                image = Image.fromarray(np.asarray(image, dtype=np.uint8).squeeze())
            image = image.convert(mode)
            if image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
            out[i] = np.asarray(image).reshape(image_size, image_size, channels).transpose(2, 0, 1)
            i += 1
    return out


def normalise_pixels(pixels: np.ndarray) -> torch.Tensor:
    """uint8 pixels to float32 in [-1, 1], the ViT convention ((x / 255 - 0.5) / 0.5)."""
    return torch.from_numpy(pixels).float().div_(127.5).sub_(1.0)
