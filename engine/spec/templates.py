"""Jinja2 templates and conditions, sandboxed, with undefined names as errors.

A string that is exactly one ``{{ expr }}`` evaluates to the expression's native
value (a list stays a list); any other string renders to text, where a value
that is not a string is written as JSON (``true``, ``null``, ``[1, 2]``), as
GitHub Actions does. In ``shell:`` commands every substituted value is passed
as data (see :mod:`.shell`), so it can never become code.

``state.key`` always means the state key, even when the key is called ``items``
or ``keys``: mappings answer attribute lookups from their items first.

A string without ``{{`` or ``{%`` is no template and stays as it is; Jinja2 and
the sandbox (:mod:`.sandbox`) load on the first string that is one, so a
workflow without templates never imports them. Nor does one whose templates are
all a lone path (``{{ state.items }}``, ``{{ item.name }}``, a condition
``state.done``): such a path is looked up here, item by item in mappings, as the
sandbox would look it up; whatever the lookup does not find (a missing key, a
value that is no mapping) goes to the sandbox, which gives its value or its error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from ..jsonvalue import dumps

NAMES = frozenset({"state", "item", "index", "run", "node"})


class TemplateError(Exception):
    """A template that does not compile or fails to render."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text


# A lone path of plain names: `{{ state.key }}`, and as a condition also `state.key`.
_NAME = r"([a-z]+)((?:\.[A-Za-z][A-Za-z0-9_]*)*)"
_PATH = re.compile(r"\s*\{\{\s*" + _NAME + r"\s*\}\}\s*")
_BARE = re.compile(r"\s*" + _NAME + r"\s*")
_MISSING = object()


@lru_cache(maxsize=4096)
def _path(text: str, condition: bool) -> tuple[str, tuple[str, ...]] | None:
    """``text``'s name and keys when it is one lone path of a scope name, else None."""
    m = _PATH.fullmatch(text) or (_BARE.fullmatch(text) if condition else None)
    if m is None or m[1] not in NAMES:
        return None
    return m[1], tuple(m[2].split(".")[1:])


def _lookup(path: tuple[str, tuple[str, ...]], scope: Mapping[str, Any]) -> Any:
    """The path's value in ``scope``, each key an item of a mapping (as the sandbox
    reads ``a.b`` of a mapping); ``_MISSING`` where that finds nothing."""
    name, keys = path
    value = scope.get(name, _MISSING)
    for key in keys:
        if not isinstance(value, Mapping):
            return _MISSING
        try:
            value = value[key]
        except (KeyError, TypeError):
            return _MISSING
    return value


def as_text(value: Any) -> str:
    """A value as text: strings as they are, anything else as JSON."""
    if isinstance(value, str):
        return value
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    if isinstance(value, dict | list | tuple):
        try:
            return dumps(value, ensure_ascii=True)
        except (TypeError, ValueError):
            return str(value)
    return str(value)


def render(text: str, scope: Mapping[str, Any], *, shell: bool = False) -> Any:
    """Render ``text``: the native value for a lone ``{{ expr }}``, else a string.

    With ``shell``, the text of a ``/bin/sh -c`` script whose values are data.
    """
    if shell:
        return render_shell(text, scope)
    if not is_template(text):
        return text
    path = _path(text, False)
    if path is not None:
        value = _lookup(path, scope)
        if value is not _MISSING:
            return value
    from . import sandbox

    return sandbox.render(text, scope)


def render_shell(text: str, scope: Mapping[str, Any]) -> str:
    """Render a ``shell:`` command; every value is passed to the shell as data."""
    if "\x00" in text:
        raise TemplateError("a shell command cannot hold a NUL byte")
    if not is_template(text):
        return text
    from . import sandbox

    return sandbox.render_shell(text, scope)


def render_text(text: str, scope: Mapping[str, Any]) -> str:
    return as_text(render(text, scope))


def evaluate(condition: str, scope: Mapping[str, Any]) -> bool:
    """A condition's truth (a bare expression or one ``{{ expr }}``)."""
    path = _path(condition, True)
    if path is not None:
        value = _lookup(path, scope)
        if value is not _MISSING:
            return bool(value)
    from . import sandbox

    return sandbox.evaluate(condition, scope)


def references(text: str, *, condition: bool = False) -> tuple[set[str], set[str]]:
    """Top-level names a template uses, and the ``state.X`` keys it reads.

    Raises :class:`TemplateError` on a syntax error.
    """
    path = _path(text, condition)
    if path is not None:
        name, keys = path
        return {name}, {keys[0]} if name == "state" and keys else set()
    from . import sandbox

    return sandbox.references(text, condition=condition)


def check(text: str, *, shell: bool = False, condition: bool = False) -> tuple[set[str], set[str]]:
    """Compile ``text`` as it will run (unknown filters and tests fail here too).

    Returns :func:`references`; raises :class:`TemplateError`.
    """
    if not shell and _path(text, condition) is not None:
        return references(text, condition=condition)  # a lone path always compiles
    from . import sandbox

    return sandbox.check(text, shell=shell, condition=condition)


def known(kind: str) -> frozenset[str]:
    """The names of the filters (``kind`` "filter") or tests templates may use."""
    from . import sandbox

    return sandbox.FILTERS if kind == "filter" else sandbox.TESTS
