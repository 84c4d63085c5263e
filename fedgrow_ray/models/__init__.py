"""Model families, one file per architecture: text (BERT) and image (ViT).

    family = get_family("text", vocab_size=8000, max_positions=64, num_classes=4)
    small = family.build(Shape(width=64, layers=2, heads=4), seed=0)
"""

from __future__ import annotations

from .base import GLOBAL_KINDS, LAYER_KINDS, Family, Role, Shape
from .bert import TextFamily
from .vit import ImageFamily

FAMILIES = {"text": TextFamily, "image": ImageFamily}


def get_family(name: str, **sizes) -> Family:
    """The family called `name` ("text" or "image") with its fixed sizes."""
    if name not in FAMILIES:
        raise ValueError(f"model family {name!r} is unknown; allowed: {sorted(FAMILIES)}")
    cls = FAMILIES[name]
    allowed = set(cls.__dataclass_fields__)
    unknown = sorted(set(sizes) - allowed)
    if unknown:
        raise ValueError(f"{name} family: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return cls(**sizes)


def family_of(model) -> Family:
    """The family (with its fixed sizes) of a Hugging Face model this project can grow."""
    for cls in FAMILIES.values():
        if isinstance(model, cls.model_class):
            return cls.from_config(model.config)
    raise ValueError(f"{type(model).__name__} is not a supported model; supported: "
                     f"{[c.model_class.__name__ for c in FAMILIES.values()]}")


__all__ = ["FAMILIES", "GLOBAL_KINDS", "LAYER_KINDS", "Family", "ImageFamily", "Role", "Shape",
           "TextFamily", "family_of", "get_family"]
