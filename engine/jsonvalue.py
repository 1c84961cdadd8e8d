"""JSON as flowrun writes and reads it: finite numbers, valid Unicode, bounded depth.

Python's :mod:`json` writes ``NaN`` and ``Infinity`` (which other JSON parsers
refuse), reads ``1e999`` as ``inf``, keeps lone surrogates such as ``"\\ud800"``
(which cannot be stored as UTF-8) and recurses until the stack runs out. So every
value flowrun stores, prints or hands on is written by :func:`dumps`, every JSON
text a user or a node supplies is read by :func:`loads`, and a value built in
Python (a node's delta, a library caller's inputs) is vetted by :func:`check`.
Each raises :class:`JSONValueError`, which says where inside the value it failed.
"""

from __future__ import annotations

import functools
import json
import math
import re
import sys
from collections.abc import Callable, Iterable
from typing import Any

MAX_DEPTH = 100  # lists and mappings inside each other; far below the recursion limit
NON_FINITE_HINT = "JSON has no NaN/Infinity; pass a string or a finite number"
UNICODE_HINT = "pass valid UTF-8 text"

Path = tuple[str | int, ...]
_PLAIN_KEY = re.compile(r"^[A-Za-z_][\w-]*$")


class JSONValueError(ValueError):
    """A value JSON cannot hold faithfully; ``path`` leads to it from the top."""

    def __init__(self, problem: str, hint: str | None = None, path: Path = ()) -> None:
        super().__init__(problem)
        self.problem = problem
        self.hint = hint
        self.path = path

    def __str__(self) -> str:
        return f"{self.problem} (at {where(self.path)})" if self.path else self.problem


def where(path: Path) -> str:
    """``("x", 0, "a b")`` → ``x[0]["a b"]``."""
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        elif _PLAIN_KEY.match(str(p)):
            out += f".{p}" if out else str(p)
        else:
            out += f"[{json.dumps(str(p), ensure_ascii=True)}]"
    return out


def dumps(
    value: Any,
    *,
    sort_keys: bool = True,
    compact: bool = True,
    ensure_ascii: bool = False,
    indent: int | None = None,
) -> str:
    """``value`` as strict JSON text; :class:`TypeError` for what is not JSON-like."""
    try:
        text = _encoder(sort_keys, compact, ensure_ascii, indent)(value)
    except RecursionError:
        raise _TooDeep from None
    except ValueError as exc:  # NaN/Infinity, or an int past the digits limit
        check(value)  # says where
        raise JSONValueError(str(exc)) from None
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            check(value)  # a lone surrogate: says where
            raise
    return text


def dumps_list(values: Iterable[Any], *, chunk: int = 4096) -> str:
    """``dumps(list(values))``, without the list: ``values`` are read once, ``chunk`` at a
    time, so a million of them made on demand are never all held (only their text)."""
    parts = ["["]  # one join at the end: the text is built once
    batch: list[Any] = []
    for v in values:
        batch.append(v)
        if len(batch) == chunk:
            parts.extend((dumps(batch)[1:-1], ","))
            batch.clear()
    if batch:
        parts.append(dumps(batch)[1:-1])
    elif len(parts) > 1:
        parts.pop()  # the last comma
    parts.append("]")
    return "".join(parts)


@functools.cache
def _encoder(
    sort_keys: bool, compact: bool, ensure_ascii: bool, indent: int | None
) -> Callable[[Any], str]:
    """``value -> JSON text`` for one set of options, made once.

    ``json.dumps`` makes an encoder at every call, and ``JSONEncoder.encode`` makes
    json's C encoder at every call too: most of the cost of the small values flowrun
    writes at every step (a state value, an event's data, the frontier). The C encoder
    is made here once, with the arguments ``JSONEncoder.iterencode`` gives it, and
    used only if it writes what ``encode`` writes. No circular check (``encode`` makes
    its table per call): a value that contains itself ends in ``RecursionError``.
    """
    enc = json.JSONEncoder(
        sort_keys=sort_keys,
        separators=(",", ":") if compact else None,
        ensure_ascii=ensure_ascii,
        indent=indent,
        allow_nan=False,
        check_circular=False,
    )
    make = getattr(json.encoder, "c_make_encoder", None)  # None where json has no C part
    if make is None or indent is not None:
        return enc.encode
    strings = (
        json.encoder.encode_basestring_ascii if ensure_ascii else json.encoder.encode_basestring
    )
    try:
        c = make(None, enc.default, strings, None, enc.key_separator, enc.item_separator,
                 sort_keys, False, False)  # fmt: skip
        sample = {"b": [1, 2.5, None, True, "é\n"], "a": {}}
        if "".join(c(sample, 0)) != enc.encode(sample):
            return enc.encode
    except Exception:  # another Python's C encoder: not ours to guess
        return enc.encode
    return lambda value: "".join(c(value, 0))


def loads(text: str) -> Any:
    """Strict JSON: no ``NaN``/``Infinity``, no number past a float's range, valid Unicode.

    Syntax errors are :class:`json.JSONDecodeError` as usual (they carry line and
    column); a text that parses but is no faithful value is :class:`JSONValueError`.
    """
    try:
        value = json.loads(text, parse_constant=_NonFinite, parse_float=_float)
    except RecursionError:
        raise _TooDeep from None
    except json.JSONDecodeError:
        raise
    except ValueError as exc:  # an integer past sys.get_int_max_str_digits()
        raise JSONValueError(
            f"a number with more than {sys.get_int_max_str_digits()} digits",
            "pass it as a string",
        ) from exc
    check(value)
    return value


def check(value: Any) -> None:
    """Raise :class:`JSONValueError` if ``value`` holds what JSON cannot.

    That is NaN or ±Infinity, a string with a lone surrogate, or more than
    :data:`MAX_DEPTH` levels of nesting. Other types are left to :func:`dumps`.
    """
    try:
        _check(value, 0)
    except _TooDeep as exc:  # the path would be a hundred [0]s: the caller names the value
        exc.path = ()
        raise


class _TooDeep(JSONValueError):
    def __init__(self) -> None:
        super().__init__(_too_deep(), "flatten the value")


class _NonFinite:
    """What :func:`loads` reads ``NaN``, ``Infinity`` or ``1e999`` as, until :func:`check`."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _float(text: str) -> float | _NonFinite:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def _too_deep() -> str:
    return f"nested more than {MAX_DEPTH} levels deep"


def _check(value: Any, depth: int) -> None:
    if isinstance(value, str):
        _text(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            name = "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
            raise JSONValueError(f"{name} is not a JSON number", NON_FINITE_HINT)
    elif isinstance(value, _NonFinite):
        problem = (
            f"{value.text} is not a JSON number"
            if value.text in ("NaN", "Infinity", "-Infinity")
            else f"{value.text} is beyond the range of a JSON number"
        )
        raise JSONValueError(problem, NON_FINITE_HINT)
    elif isinstance(value, dict | list | tuple):
        if depth >= MAX_DEPTH:
            raise _TooDeep
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for k, v in items:
            try:
                if isinstance(k, str):
                    _text(k)
                _check(v, depth + 1)
            except JSONValueError as exc:
                exc.path = (k, *exc.path)
                raise


def _text(s: str) -> None:
    if s.isascii():
        return
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(s[exc.start])
        raise JSONValueError(
            f"lone surrogate \\u{code:04x} is not valid Unicode", UNICODE_HINT
        ) from None
