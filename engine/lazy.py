"""A package's public names, imported from their modules on first use (PEP 562).

A package ``__init__`` that imports its modules eagerly makes every import of one
small module (``spec.model``, ``store.base``) pay for all its siblings (the YAML
loader, Jinja2, the SQLite store). With :func:`attributes` a package names where
each public name lives and nothing loads until it is asked for; ``from pkg import
X`` works unchanged, and a ``TYPE_CHECKING`` block gives mypy the real types.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def attributes(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: each name of ``where`` from its module."""

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)  # later lookups skip this function
        return value

    return __getattr__
