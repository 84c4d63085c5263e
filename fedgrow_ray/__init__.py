"""fedgrow_ray: Fed-Grow (Dual-LiGO) as a library. Pure torch / transformers / datasets; the Ray
simulator lives in `actors/` and calls into this package, never the other way round.

    models/      model families (text BERT, image ViT) and the growable Shape
    ligo         the LiGO growth operator (width + depth)
    dual_ligo    Local-LiGO then Global-LiGO; materialise; parameter accounting
"""

from .dual_ligo import DualLiGO, materialise
from .ligo import LiGO
from .models import Shape, get_family

__version__ = "0.1.0"
__all__ = ["DualLiGO", "LiGO", "Shape", "get_family", "materialise"]
