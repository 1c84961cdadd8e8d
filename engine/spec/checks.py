"""The checks every part of a workflow file uses: types, durations, choices, templates.

A :class:`Checker` wraps the loaded :class:`~.yamlpos.Document`; each check
returns the value it accepted or raises a :class:`WorkflowError` that names the
file, line and column, starts with the offending key and suggests the near miss.

The checker also collects: :meth:`Checker.report` records an error and carries
on, :meth:`Checker.collect` records one raised inside a block and carries on after
it, and :meth:`Checker.raise_found` raises them all as one error, so a file's
mistakes are found in one pass.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

from ..errors import WorkflowError
from . import templates
from .model import StateKey
from .yamlpos import Document, Path

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
DURATION_PATTERN = _DURATION.pattern  # also the JSON Schema's (see .schema)
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
BOOL_HINT = "quote it: YAML reads yes/no/on/off/true/false as booleans"


def parse_duration(value: Any) -> float:
    """``250ms``, ``30s``, ``5m``, ``1h``, ``2d`` (or a bare number of seconds) to seconds."""
    if isinstance(value, bool):
        raise ValueError("not a duration")
    if isinstance(value, int | float):
        if value < 0 or not math.isfinite(value):
            raise ValueError("not a duration")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _UNITS[m.group(2)]
    raise ValueError("not a duration")


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {match[0]!r}?" if match else None


def masked(text: str) -> str:
    """Shown in an error: enough to recognise, never a whole pasted key."""
    return repr(text if len(text) <= 8 else text[:4] + "…")


def describe(value: Any) -> str:
    """What a YAML value is, in words: ``a mapping``, ``a list``, ``null``..."""
    return {
        dict: "a mapping",
        list: "a list",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
        type(None): "null",
    }.get(type(value), type(value).__name__)


class Section:
    """A block run under :meth:`Checker.collect`: ``failed`` once it raised.

    A plain class, not ``@contextmanager``: validating a node runs a dozen of these,
    and a generator-based context manager costs several times the block it guards.
    """

    __slots__ = ("_found", "failed")

    def __init__(self, found: list[WorkflowError]) -> None:
        self._found = found
        self.failed = False

    def __enter__(self) -> Section:
        return self

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> bool:
        if isinstance(exc, WorkflowError):  # recorded, not propagated
            self._found.append(exc)
            self.failed = True
            return True
        return False


class Checker:
    """Checks on the values of one document; every failure points into it."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.found: list[WorkflowError] = []

    def report(
        self,
        path: Path,
        msg: str,
        *,
        key: bool = False,
        hint: str | None = None,
        label: Path | None = None,
    ) -> None:
        """Record an error at ``path`` and carry on: the checks after it still mean something."""
        self.found.append(self.doc.error(path, msg, key=key, hint=hint, label=label))

    def collect(self) -> Section:
        """Run a block whose error (raised by :meth:`err`) is recorded, not propagated."""
        return Section(self.found)

    def raise_found(self) -> None:
        """Raise every error recorded so far as one :class:`WorkflowError`, if there is any."""
        if self.found:
            raise WorkflowError.collected(self.found)

    def err(
        self,
        path: Path,
        msg: str,
        *,
        key: bool = False,
        hint: str | None = None,
        label: Path | None = None,
    ) -> NoReturn:
        raise self.doc.error(path, msg, key=key, hint=hint, label=label)

    def mapping(self, value: Any, path: Path, hint: str | None = None) -> dict[str, Any]:
        if not isinstance(value, dict):
            what = "expected a mapping" if path else "a workflow must be a mapping"
            self.err(path, f"{what}, not {describe(value)}", hint=hint)
        return value

    def known(self, value: dict[str, Any], allowed: Iterable[str], path: Path) -> None:
        """Report every key of ``value`` not in ``allowed`` (they are then ignored)."""
        allowed = tuple(allowed)
        for k in value:
            if k not in allowed:
                self.unknown(path, k, allowed)

    def unknown(
        self,
        path: Path,
        k: str,
        allowed: tuple[str, ...],
        hint: str | None = None,
        *,
        stop: bool = False,
    ) -> None:
        """Report an unknown key (raise the error instead with ``stop``)."""
        where = "" if path else " at the top level"
        error = self.doc.error(
            (*path, k),
            f"unknown key {k!r}{where}",
            key=True,
            label=path,
            hint=hint or did_you_mean(k, allowed) or f"allowed: {', '.join(allowed)}",
        )
        if stop:
            raise error
        self.found.append(error)

    def duration(self, value: Any, path: Path, *, positive: bool = False) -> float:
        """Seconds; a timeout (``positive``) must be more than zero, a backoff may be 0."""
        try:
            seconds = parse_duration(value)
        except ValueError:
            seconds = -1.0
        if seconds < 0 or (positive and seconds == 0):
            self.err(
                path,
                f"bad duration {value!r}",
                hint="use a positive duration such as 250ms, 30s, 5m or 1h"
                if positive
                else "use a duration such as 0s, 250ms, 30s, 5m or 1h",
            )
        return seconds

    def pos_int(self, value: Any, path: Path, minimum: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self.err(path, f"expected a whole number ≥ {minimum}, got {value!r}")
        return value

    def text(self, value: Any, path: Path) -> str:
        if not isinstance(value, str):
            self.err(
                path,
                f"expected a string, not {describe(value)}",
                hint=BOOL_HINT if isinstance(value, bool) else None,
            )
        return value

    def boolean(self, value: Any, path: Path) -> bool:
        if not isinstance(value, bool):
            self.err(path, f"expected true or false, not {value!r}")
        return value

    def choice(self, value: Any, path: Path, choices: tuple[str, ...], what: str) -> str:
        if value not in choices:
            self.err(
                path,
                f"unknown {what} {value!r}",
                hint=did_you_mean(str(value), choices) or f"one of: {', '.join(choices)}",
            )
        return str(value)

    def template(
        self,
        value: str,
        path: Path,
        state: Mapping[str, StateKey],
        *,
        foreach: bool,
        shell: bool = False,
        condition: bool = False,
    ) -> None:
        """Report what is wrong with one template or condition, every name and key of it."""
        if not condition and not templates.is_template(value):
            return
        try:
            names, keys = templates.check(value, shell=shell, condition=condition)
        except templates.TemplateError as exc:
            hint = exc.hint
            if hint is None and "syntax" in str(exc):
                hint = "templates are Jinja2: {{ state.key }}"
            unknown = re.search(r"No (filter|test) named '(\w+)'", str(exc))
            if unknown:
                known = templates.known(unknown[1])
                hint = did_you_mean(unknown[2], known) or f"see the Jinja2 {unknown[1]}s"
            self.report(path, f"bad template: {exc}", hint=hint)
            return
        allowed = set(templates.NAMES) if foreach else set(templates.NAMES) - {"item", "index"}
        for n in sorted(names - allowed):
            hint = did_you_mean(n, allowed)
            if n in ("item", "index"):
                hint = "item and index exist only in a node with foreach"
            self.report(
                path,
                f"template uses undefined name {n!r}",
                hint=hint or f"templates see {', '.join(sorted(allowed))}",
            )
        for k in sorted(keys - set(state)):
            self.report(
                path,
                f"template reads undeclared state key {k!r}",
                hint=did_you_mean(k, state) or "declare it under `state:`",
            )

    def templates_in(
        self,
        value: Any,
        path: Path,
        state: Mapping[str, StateKey],
        *,
        foreach: bool,
        shell: bool = False,
    ) -> None:
        if isinstance(value, str):
            self.template(value, path, state, foreach=foreach, shell=shell)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self.templates_in(v, (*path, i), state, foreach=foreach)
        elif isinstance(value, dict):
            for k, v in value.items():
                self.templates_in(v, (*path, k), state, foreach=foreach)
