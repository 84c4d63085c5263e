"""The offline data sets: `synthetic_text` and `synthetic_image`, generated from a seed in a
second or two, learnable by a small transformer but far from trivial.

Text: each class owns a few topic words, and each pair of neighbouring classes (c, c+1 mod K)
shares some confuser words, so a sentence is only placed by combining its words; sentences are
mostly common filler words, of random length, with stray topic words of other classes.
Image: 32 x 32 RGB, one class-defined shape (circle, square, triangle, ...) filled with stripes
at a class-defined angle (jittered), at a random place, size, tilt, colour and opacity, over a
noisy gradient background with a distracting blob. Shapes alone are too hard for a small ViT
trained briefly (it stayed near chance for 750 steps); the stripes make it learnable.
Both flip a few per cent of the labels, in train and test alike.
"""

from __future__ import annotations

import numpy as np

IMAGE_SIZE = 32
PIXEL_NOISE = 28  # standard deviation, on 0..255
SHAPE_RADIUS = (5, 11)
BLOB_RADIUS = (2, 5)
STRIPE_PERIOD = (3, 6)  # pixels

# Share of each kind of word in a text sentence: filler, own topic, confuser, other class's topic.
WORD_MIX = (0.60, 0.12, 0.20, 0.08)
TOPIC_WORDS, CONFUSER_WORDS, FILLER_WORDS = 30, 20, 400
SENTENCE_LENGTH = (6, 33)  # words, [low, high)

SHAPES = {
    "circle": lambda u, v, r: u * u + v * v <= r * r,
    "square": lambda u, v, r: np.maximum(abs(u), abs(v)) <= 0.8 * r,
    "triangle": lambda u, v, r: (v <= 0.5 * r) & (v >= 1.732 * abs(u) - r),
    "plus": lambda u, v, r: ((abs(u) <= 0.3 * r) & (abs(v) <= r)) | ((abs(v) <= 0.3 * r) & (abs(u) <= r)),
    "ring": lambda u, v, r: (u * u + v * v <= r * r) & (u * u + v * v >= 0.36 * r * r),
    "grille": lambda u, v, r: (np.maximum(abs(u), abs(v)) <= 0.85 * r) & (np.sin(u * np.pi / (0.3 * r)) > 0),
    "diamond": lambda u, v, r: abs(u) + abs(v) <= r,
    "checker": lambda u, v, r: (np.maximum(abs(u), abs(v)) <= 0.85 * r)
    & ((np.floor(u / (0.45 * r)) + np.floor(v / (0.45 * r))) % 2 == 0),
    "frame": lambda u, v, r: (np.maximum(abs(u), abs(v)) <= 0.85 * r)
    & (np.maximum(abs(u), abs(v)) >= 0.5 * r),
    "bar": lambda u, v, r: (abs(u) <= r) & (abs(v) <= 0.3 * r),
}
MAX_IMAGE_CLASSES = len(SHAPES)


def synthetic_text(num_classes=4, train_size=4000, test_size=1000, seed=0, label_noise=0.05):
    """(train, test, class_names): `datasets.Dataset`s with columns text and label."""
    from datasets import ClassLabel, Dataset, Features, Value

    rng = np.random.default_rng([seed, 101])
    k = num_classes
    groups = [k * TOPIC_WORDS, k * CONFUSER_WORDS, FILLER_WORDS]
    words = _pseudo_words(rng, sum(groups))
    topics, confusers, filler = np.split(np.arange(sum(groups)), np.cumsum(groups)[:-1])
    topics = topics.reshape(k, TOPIC_WORDS)
    confusers = confusers.reshape(k, CONFUSER_WORDS)  # row c is shared by classes c and c+1

    def sentences(n):
        labels = rng.integers(k, size=n)
        lengths = rng.integers(*SENTENCE_LENGTH, size=n)
        y = np.repeat(labels, lengths)  # the class of each word's sentence
        other = (y + rng.integers(1, k, size=y.size)) % k
        pair = np.where(rng.random(y.size) < 0.5, y, (y - 1) % k)
        kind = rng.choice(len(WORD_MIX), size=y.size, p=WORD_MIX)
        word = np.select([kind == 0, kind == 1, kind == 2], [
            filler[_skewed_index(rng, FILLER_WORDS, y.size)],
            topics[y, _skewed_index(rng, TOPIC_WORDS, y.size)],
            confusers[pair, _skewed_index(rng, CONFUSER_WORDS, y.size)]],
            topics[other, _skewed_index(rng, TOPIC_WORDS, y.size)])
        ends = np.cumsum(lengths)
        stops = rng.choice([".", "!", "?"], size=n)
        texts = [" ".join(words[word[e - length:e]]) + stop for e, length, stop in zip(ends, lengths, stops)]
        return {"text": texts, "label": _flip(rng, labels, k, label_noise)}

    names = [f"topic_{c}" for c in range(k)]
    features = Features({"text": Value("string"), "label": ClassLabel(names=names)})
    return Dataset.from_dict(sentences(train_size), features), \
        Dataset.from_dict(sentences(test_size), features), names


def synthetic_image(num_classes=4, train_size=4000, test_size=1000, seed=0, label_noise=0.05):
    """(train, test, class_names): `datasets.Dataset`s with columns image (32x32x3 uint8) and label."""
    from datasets import Array3D, ClassLabel, Dataset, Features

    if num_classes > MAX_IMAGE_CLASSES:
        raise ValueError(f"synthetic_image has at most {MAX_IMAGE_CLASSES} classes, got {num_classes}")
    rng = np.random.default_rng([seed, 202])
    names = list(SHAPES)[:num_classes]
    features = Features({"image": Array3D((IMAGE_SIZE, IMAGE_SIZE, 3), "uint8"),
                         "label": ClassLabel(names=names)})

    def images(n):
        labels = rng.integers(num_classes, size=n)
        shapes = [SHAPES[name] for name in names]
        pixels = np.concatenate([_draw(rng, labels[i:i + 1000], shapes) for i in range(0, n, 1000)])
        return Dataset.from_dict({"image": pixels, "label": _flip(rng, labels, num_classes, label_noise)},
                                 features)

    return images(train_size), images(test_size), names


def _pseudo_words(rng, n):
    """n distinct pronounceable made-up words (so no real-word prior helps)."""
    consonants, vowels = list("bdfgklmnprstvz"), list("aeiou")
    words = set()
    while len(words) < n:
        syllables = rng.integers(2, 4)
        words.add("".join(rng.choice(consonants) + rng.choice(vowels) for _ in range(syllables)))
    return rng.permutation(sorted(words))


def _skewed_index(rng, n, size):
    # Half the draws Zipf-distributed: a few words of each group are frequent, most are rare,
    # as in real text.
    zipf = (rng.zipf(1.6, size) - 1) % n
    return np.where(rng.random(size) < 0.5, zipf, rng.integers(n, size=size))


def _flip(rng, labels, num_classes, fraction):
    flipped = rng.random(len(labels)) < fraction
    noisy = (labels + rng.integers(1, num_classes, size=len(labels))) % num_classes
    return np.where(flipped, noisy, labels)


_Y, _X = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32) + 0.5


def _draw(rng, shape_ids, shapes):
    """(n, 32, 32, 3) uint8 images, image i showing shapes[shape_ids[i]]."""
    n, size = len(shape_ids), IMAGE_SIZE

    def per_image(low, high, *dims):
        return rng.uniform(low, high, (n, *dims))

    image = per_image(40, 215, 3, 1, 1) + per_image(-40, 40, 3, 1, 1) * (_X / size - 0.5) \
        + per_image(-40, 40, 3, 1, 1) * (_Y / size - 0.5)
    background = image.mean(axis=(1, 2, 3))
    image += rng.normal(0, PIXEL_NOISE, image.shape)

    blob_r = per_image(*BLOB_RADIUS, 1, 1)
    bx, by = (per_image(0, 1, 1, 1) * (size - 2 * blob_r) + blob_r for _ in range(2))
    blob = ((_X - bx) ** 2 + (_Y - by) ** 2 <= blob_r ** 2)[:, None]
    image = np.where(blob, 0.5 * image + 0.5 * per_image(0, 255, 3, 1, 1), image)

    r = per_image(*SHAPE_RADIUS, 1, 1)
    cx, cy = per_image(0, 1, 1, 1) * (size - 2 * r) + r, per_image(0, 1, 1, 1) * (size - 2 * r) + r
    angle = per_image(-0.4, 0.4, 1, 1)
    u = (_X - cx) * np.cos(angle) + (_Y - cy) * np.sin(angle)
    v = -(_X - cx) * np.sin(angle) + (_Y - cy) * np.cos(angle)
    mask = np.zeros((n, size, size), dtype=bool)
    for k, shape in enumerate(shapes):
        chosen = shape_ids == k
        mask[chosen] = shape(u[chosen], v[chosen], r[chosen])
    colour = per_image(0, 255, 3, 1, 1)
    # A shape of nearly the background's colour would be invisible: use the complement.
    dull = np.abs(colour.mean(axis=(1, 2, 3)) - background) < 50
    colour[dull] = 255 - colour[dull]
    opacity = per_image(0.5, 1.0, 1, 1, 1)
    # Stripes across the shape at the class's angle, jittered half-way to the neighbours' angles:
    # the cue a small ViT picks up first; the outline is needed for the rest.
    spacing = np.pi / len(shapes)
    theta = shape_ids[:, None, None] * spacing + per_image(-0.5, 0.5, 1, 1) * spacing
    phase = 2 * np.pi * ((_X * np.cos(theta) + _Y * np.sin(theta)) / per_image(*STRIPE_PERIOD, 1, 1)
                         + per_image(0, 1, 1, 1))
    colour = np.where((np.sin(phase) > 0)[:, None], colour, 255 - colour)
    image = np.where(mask[:, None], (1 - opacity) * image + opacity * colour, image)
    return np.clip(image, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
