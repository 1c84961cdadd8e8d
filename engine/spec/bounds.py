"""How much a template may build: every value, every render, every loop.

A template cannot allocate its way out of the machine. Each string or list a
filter, a ``str`` method, ``format``, an operator or ``~`` builds is at most
:data:`MAX_SIZE` (characters, or items counted through nested lists, shared
ones each time, so ``[s] * n`` counts ``n * len(s)``). Where the size is known
before the work (``center(10**9)``, ``replace``, ``join``, ``'%.999999999f'``)
the call is refused before it runs; otherwise the result is measured. An integer
has at most :data:`MAX_INT_BITS` bits: ``*`` and ``**`` between integers are
refused before they run (their cost grows faster than their size), any other
integer result is measured. One render
emits at most :data:`MAX_SIZE` characters and runs at most :data:`MAX_STEPS`
loop iterations and calls. Every refusal is a :class:`jinja2.exceptions.SecurityError`
naming the limit, which the caller turns into a failed task.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from jinja2.exceptions import SecurityError

MAX_SIZE = 10_000_000  # characters in one string or one render; items in one list
MAX_STEPS = 1_000_000  # loop iterations and calls in one render
MAX_EXPONENT = 1000
# Bits in one integer (about 30,000 digits; Python prints at most 4,300). At the
# limit one `*` or `//` costs what one pass over MAX_SIZE characters does.
MAX_INT_BITS = 100_000

# printf-style conversions: %[(key)][flags][width][.precision]type
_PRINTF = re.compile(r"%(?:\([^)]*\))?[-+ #0]*(\*|\d*)(?:\.(\*|\d*))?")
_WIDE_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})
_CONTEXT_PARAMETERS = frozenset({"eval_ctx", "context", "environment", "env"})


def too_big(what: str) -> SecurityError:
    return SecurityError(f"{what} would be larger than the template limit of {MAX_SIZE:,}")


def int_too_big(what: str) -> SecurityError:
    return SecurityError(
        f"{what} would be an integer larger than the template limit of {MAX_INT_BITS:,} bits"
    )


def _int_bits(what: str, bits: float) -> None:
    if bits > MAX_INT_BITS:
        raise int_too_big(what)


def size(value: Any, limit: int = MAX_SIZE) -> int:
    """Characters plus items in ``value``, counting shared parts each time; stops past ``limit``."""
    total = 0
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str | bytes):
            total += len(v)
        elif isinstance(v, list | tuple | set | frozenset):
            total += len(v)
            if total <= limit:
                stack.extend(v)
        elif isinstance(v, Mapping):
            total += len(v)
            if total <= limit:
                stack.extend(v.keys())
                stack.extend(v.values())
        else:
            total += 1
        if total > limit:
            return total
    return total


def checked(value: Any, what: str = "a template value") -> Any:
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise int_too_big(what)
    if size(value) > MAX_SIZE:
        raise too_big(what)
    return value


def _count(what: str, n: int) -> None:
    if isinstance(n, int) and n > MAX_SIZE:
        raise too_big(what)


def check_printf(fmt: Any) -> None:
    """A ``%`` format whose width or precision is too large, or comes from ``*``."""
    if not isinstance(fmt, str):
        return
    for m in _PRINTF.finditer(fmt):
        for part in (m.group(1), m.group(2)):
            if part == "*":
                raise SecurityError("a `*` width or precision is not allowed in a template")
            if part and int(part) > MAX_SIZE:
                raise too_big(f"the format width {part}")


def check_format_string(fmt: str) -> None:
    """``str.format`` specs: widths and precisions bounded, none computed at run time."""
    for _, field, spec, _ in string.Formatter().parse(fmt):
        if field is None or not spec:
            continue
        if "{" in spec:
            raise SecurityError("a computed width in a format spec is not allowed in a template")
        for number in re.findall(r"\d+", spec):
            _count(f"the format width {number}", int(number))


def _replaced(text: Any, old: Any, new: Any, count: Any) -> None:
    s, o, n = str(text), str(old), str(new)
    hits = len(s) + 1 if o == "" else s.count(o)
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    _count("the replaced text", len(s) + hits * (len(n) - len(o)))


def _joined(items: list[Any], sep: Any) -> None:
    _count("the joined text", size(items) + len(str(sep)) * max(0, len(items) - 1))


# -- filters ------------------------------------------------------------------------


def _pre_center(a: Mapping[str, Any]) -> None:
    _count(f"center({a.get('width')})", a.get("width", 0))


def _pre_indent(a: Mapping[str, Any]) -> None:
    width = a.get("width", 4)
    pad = len(width) if isinstance(width, str) else width
    text = str(a["s"])
    if isinstance(pad, int):
        _count("the indented text", len(text) + pad * (text.count("\n") + 1))


def _pre_wordwrap(a: Mapping[str, Any]) -> None:
    wrap = a.get("wrapstring")
    text = str(a["s"])
    if isinstance(wrap, str):
        _count("the wrapped text", len(text) + len(wrap) * (len(text) + 1))


def _pre_replace(a: Mapping[str, Any]) -> None:
    _replaced(a["s"], a["old"], a["new"], a.get("count"))


def _pre_format(a: Mapping[str, Any]) -> None:
    check_printf(a["value"])


def _pre_batch(a: Mapping[str, Any]) -> None:
    _count(f"batch({a.get('linecount')})", a.get("linecount", 0))


def _pre_slice(a: Mapping[str, Any]) -> None:
    _count(f"slice({a.get('slices')})", a.get("slices", 0))


_PRECHECKS: dict[str, Callable[[Mapping[str, Any]], None]] = {
    "center": _pre_center,
    "indent": _pre_indent,
    "wordwrap": _pre_wordwrap,
    "replace": _pre_replace,
    "format": _pre_format,
    "batch": _pre_batch,
    "slice": _pre_slice,
}


def _bounded_join(f: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(f)
    def join(eval_ctx: Any, value: Iterable[Any], d: str = "", attribute: Any = None) -> Any:
        items = list(value)
        _joined(items, d)
        return checked(f(eval_ctx, items, d, attribute), "the joined text")

    return join


def bounded_filter(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    """``f`` with its result measured, and refused beforehand where its size is known."""
    if name == "join":
        return _bounded_join(f)
    pre = _PRECHECKS.get(name)
    signature = inspect.signature(f) if pre is not None else None
    # An async-variant filter receives the eval context its signature does not show.
    first = next(iter(signature.parameters), "") if signature is not None else ""
    skip = int(hasattr(f, "jinja_pass_arg") and first not in _CONTEXT_PARAMETERS)

    @functools.wraps(f)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        if pre is not None and signature is not None:
            pre(signature.bind(*args[skip:], **kwargs).arguments)
        result = f(*args, **kwargs)
        if isinstance(result, Iterator) and not isinstance(result, str):
            return _bounded_items(result, name)
        return checked(result, f"the result of {name}")

    return bounded


def _bounded_items(items: Iterator[Any], name: str) -> Iterator[Any]:
    total = 0
    for item in items:
        total += size(item) + 1
        if total > MAX_SIZE:
            raise too_big(f"the result of {name}")
        yield item


# -- methods, operators, joins ---------------------------------------------------------


def check_method(obj: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Before a ``str`` method runs: the size of what it will build."""
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    if isinstance(owner, int) and name == "to_bytes":
        length = args[0] if args else kwargs.get("length", 1)
        _count(f"to_bytes({length})", length)
    if not isinstance(owner, str):
        return
    if name in _WIDE_METHODS and args:
        _count(f"{name}({args[0]})", args[0])
    elif name == "expandtabs":
        tab = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(tab, int):
            _count("the expanded text", len(owner) + owner.count("\t") * tab)
    elif name == "replace" and len(args) >= 2:
        _replaced(owner, args[0], args[1], args[2] if len(args) > 2 else kwargs.get("count"))
    elif name == "join" and args:
        items = list(args[0])
        _joined(items, owner)
    elif name == "translate" and args and isinstance(args[0], Mapping):
        longest = max((size(v) for v in args[0].values()), default=1)
        _count("the translated text", len(owner) * max(longest, 1))


def check_binop(operator: str, left: Any, right: Any) -> None:
    """Before ``*``, ``**`` or ``%`` runs."""
    integers = isinstance(left, int) and isinstance(right, int)
    if operator == "*":
        for seq, times in ((left, right), (right, left)):
            if isinstance(seq, str | list | tuple) and isinstance(times, int):
                _count(f"`*` by {times}", size(seq) * times)
        if integers:
            _int_bits("`*`", left.bit_length() + right.bit_length())
    elif operator == "**":
        if isinstance(right, int | float) and abs(right) > MAX_EXPONENT and left not in (0, 1, -1):
            raise SecurityError(f"an exponent above {MAX_EXPONENT} is not allowed in a template")
        if integers and right > 0 and abs(left) > 1:
            _int_bits("`**`", right * math.log2(abs(left)))
    elif operator == "%" and isinstance(left, str):
        check_printf(left)


def concat(pieces: Iterable[Any]) -> str:
    """``"".join`` that stops past :data:`MAX_SIZE` characters (a render, a block)."""
    out: list[str] = []
    total = 0
    for piece in pieces:
        total += len(piece)
        if total > MAX_SIZE:
            raise too_big("the rendered text")
        out.append(piece)
    return "".join(out)


def str_join(seq: Iterable[Any]) -> str:
    """``a ~ b``: each part as text, bounded."""
    return concat(map(str, seq))


# -- one render: steps and output ----------------------------------------------------


@dataclass(slots=True)
class _Budget:
    steps: int = 0
    output: int = 0


_BUDGET: ContextVar[_Budget | None] = ContextVar("flowrun_template_budget", default=None)


@contextmanager
def rendering() -> Iterator[None]:
    """One render's budget of steps and emitted characters."""
    token = _BUDGET.set(_Budget())
    try:
        yield
    finally:
        _BUDGET.reset(token)


def step() -> None:
    budget = _BUDGET.get()
    if budget is not None:
        budget.steps += 1
        if budget.steps > MAX_STEPS:
            raise SecurityError(
                f"the template ran more than {MAX_STEPS:,} loop iterations and calls"
            )


def emitted(text: str) -> str:
    budget = _BUDGET.get()
    if budget is not None:
        budget.output += len(text)
        if budget.output > MAX_SIZE:
            raise too_big("the rendered text")
    return text


def steps(iterable: Any) -> Iterator[Any]:
    """A ``{% for %}`` loop's items, each charged to the render's budget."""
    for item in iterable:
        step()
        yield item
