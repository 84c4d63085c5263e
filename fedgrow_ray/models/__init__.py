"""Model families, one file per architecture: text (BERT) and image (ViT).

    family = get_family("text", vocab_size=8000, max_positions=64, num_classes=4)
    small = family.build(Shape(width=64, layers=2, heads=4), seed=0)
"""

from __future__ import annotations

from .base import GLOBAL_KINDS, LAYER_KINDS, Family, Role, Shape
from .bert import TextFamily
from .vit import ImageFamily

FAMILIES = {"text": TextFamily, "image": ImageFamily}


def family_class(name: str) -> type[Family]:
    """The family class called `name` ("text" or "image"), or a subclass of TextFamily or
    ImageFamily named by an import path (fedgrow_ray.plugins)."""
    from ..plugins import is_import_path, load

    if is_import_path(name):
        cls = load(name, "model family", Family)
        if not issubclass(cls, (TextFamily, ImageFamily)):
            raise ValueError(f"model family {name!r} is not a subclass of TextFamily or ImageFamily "
                             f"(which says the data it reads)")
        return cls
    if name not in FAMILIES:
        raise ValueError(f"model family {name!r} is unknown; allowed: {sorted(FAMILIES)} or an import path")
    return FAMILIES[name]


def get_family(name: str, **sizes) -> Family:
    """The family called `name` ("text", "image" or an import path) with its fixed sizes."""
    cls = family_class(name)
    allowed = set(cls.__dataclass_fields__)
    unknown = sorted(set(sizes) - allowed)
    if unknown:
        raise ValueError(f"{name} family: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    return cls(**sizes)


def family_of(model) -> Family:
    """The built-in family (with its fixed sizes) of a Hugging Face model this project can grow
    (a plug-in family is passed where it is meant: DualLiGO's `family`)."""
    for cls in FAMILIES.values():
        if isinstance(model, cls.model_class):
            return cls.from_config(model.config)
    raise ValueError(f"{type(model).__name__} is not a supported model; supported: "
                     f"{[c.model_class.__name__ for c in FAMILIES.values()]}")


__all__ = ["FAMILIES", "family_class", "GLOBAL_KINDS", "LAYER_KINDS", "Family", "ImageFamily", "Role", "Shape",
           "TextFamily", "family_of", "get_family"]
