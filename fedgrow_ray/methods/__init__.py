"""Fed-Grow and its baselines: each method is a participant-side step plus a server-side
aggregate behind one interface (methods/base.py), testable without Ray."""

from __future__ import annotations

from .base import Method
from .baselines import Centralized, FedAvgScratch, IndependentGrowth, LocalSmall
from .fedgrow import FedGrow

METHODS: dict[str, type[Method]] = {
    m.name: m for m in (FedGrow, FedAvgScratch, IndependentGrowth, LocalSmall, Centralized)}


def get_method(name: str, experiment) -> Method:
    """The built-in method called `name`, or a Method subclass named by an import path
    (fedgrow_ray.plugins), whose rows and results are then named by that path."""
    from ..plugins import is_import_path, load

    if is_import_path(name):
        method = load(name, "method", Method)(experiment)
        method.name = name
        return method
    if name not in METHODS:
        raise ValueError(f"method {name!r} is unknown; allowed: {sorted(METHODS)}")
    return METHODS[name](experiment)


__all__ = ["METHODS", "Method", "get_method"]
