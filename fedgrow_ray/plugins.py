"""Methods, aggregators and model families from outside the package, named by import path.

A scenario may name, besides the built-ins, `module:attribute` (`my_lab.methods:FedProxGrow`):
    methods: [..]         a subclass of fedgrow_ray.methods.Method (methods/base.py); its rows
                          and summary are named by the import path
    server.aggregator     a function (or a class, instantiated without arguments, whose
                          instances are called) taking [(update, samples), ...] and returning the
                          new shared tensors, as the built-ins in aggregation.py
    model.family          a subclass of fedgrow_ray.models.TextFamily or ImageFamily (its kind
                          says which data it reads) for another Hugging Face architecture
The module must be importable where the run's processes run (installed, or on PYTHONPATH; on a
cluster, in the code Ray ships). The registries (METHODS, AGGREGATORS, FAMILIES) stay for the
built-ins; nothing is registered by name.
"""

from __future__ import annotations

import importlib
import re

_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_import_path(name) -> bool:
    return isinstance(name, str) and bool(_PATH.match(name))


def load(path: str, what: str, base: type | None = None):
    """The object `module:attribute` names; a ValueError in one line when it cannot be imported
    or is not a subclass of `base` (a callable when `base` is None)."""
    if not is_import_path(path):
        raise ValueError(f"{what} {path!r} is not an import path; expected module:attribute, e.g. "
                         f"my_lab.methods:FedProxGrow")
    module_name, _, attribute = path.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - any failure to import is the user's module's, said in one line
        first = (str(err).splitlines() or [""])[0]
        raise ValueError(f"{what} {path!r}: module {module_name!r} cannot be imported "
                         f"({type(err).__name__}: {first}); is it installed or on PYTHONPATH?") from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {path!r}: module {module_name!r} has no {attribute!r}")
        obj = getattr(obj, part)
    if base is not None and not (isinstance(obj, type) and issubclass(obj, base)):
        raise ValueError(f"{what} {path!r} is not a subclass of {base.__module__}.{base.__qualname__}")
    if base is None and not callable(obj):
        raise ValueError(f"{what} {path!r} is not callable")
    return obj
