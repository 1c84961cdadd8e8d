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
workflow without templates never imports them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
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
    from . import sandbox

    return sandbox.evaluate(condition, scope)


def references(text: str, *, condition: bool = False) -> tuple[set[str], set[str]]:
    """Top-level names a template uses, and the ``state.X`` keys it reads.

    Raises :class:`TemplateError` on a syntax error.
    """
    from . import sandbox

    return sandbox.references(text, condition=condition)


def check(text: str, *, shell: bool = False, condition: bool = False) -> tuple[set[str], set[str]]:
    """Compile ``text`` as it will run (unknown filters and tests fail here too).

    Returns :func:`references`; raises :class:`TemplateError`.
    """
    from . import sandbox

    return sandbox.check(text, shell=shell, condition=condition)


def known(kind: str) -> frozenset[str]:
    """The names of the filters (``kind`` "filter") or tests templates may use."""
    from . import sandbox

    return sandbox.FILTERS if kind == "filter" else sandbox.TESTS
