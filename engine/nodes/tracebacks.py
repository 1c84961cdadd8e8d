"""A Python node's exception as its user sees it: their frames only, bounded in size.

flowrun's own frames (the caller thread, the hand-off lambda, ``ctx`` helpers) and
the import machinery are dropped; each kept frame shows its file, line, function and
source line. The chain (``raise ... from``, an exception raised while handling
another) is kept, oldest first, as Python prints it, but with fewer frames each. The
raising frame is the innermost one in the workflow's folder (else the innermost
kept one), so ``review_lib.py:12 in judge`` points at the user's own line even when
the exception came out of a library they called.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import linecache
import os
import threading
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

_ENGINE = Path(__file__).resolve().parents[1]
# flowrun's engine/ and cli/, and the machinery between them and a node: imports, threads
_OWN = (
    *(
        f"{os.path.realpath(d)}{os.sep}"
        for d in (
            _ENGINE,
            _ENGINE.parent / "cli",
            os.path.dirname(importlib.__file__),
            os.path.dirname(concurrent.futures.__file__),
        )
    ),
    os.path.realpath(threading.__file__),
)
MAX_CHAIN = 3  # exceptions of a chain that are shown (the newest ones)
MAX_FRAMES = 20  # frames shown of the newest exception; older ones get fewer
OLDER_FRAMES = 5
REPEATS = 3  # a frame repeated more often (recursion) is shown this often, then counted
LINE_CUT = 200  # characters of a source line
MESSAGE_CUT = 2000  # characters of an exception's own text
TEXT_CUT = 16000  # characters of the whole traceback


@dataclass(frozen=True, slots=True)
class Trace:
    """A trimmed traceback and the frame that raised (``file`` absolute, or None).

    ``where`` is that frame as ``review_lib.py:12 in judge``, the path relative to the
    workflow's folder (the run's working directory) when it is in it.
    """

    text: str
    file: str | None
    line: int | None
    function: str | None
    where: str | None


def shown_path(file: str, base: str) -> str:
    """``file`` relative to the folder ``base`` (ending in a separator) if in it, else as is."""
    return file[len(base) :] if file.startswith(base) else file


def _ours(filename: str) -> bool:
    if filename.startswith("<frozen "):  # importlib's bootstrap
        return True
    return os.path.realpath(filename).startswith(_OWN)


def _frames(tb: TracebackType | None) -> list[tuple[str, int, str]]:
    """The user's frames of a traceback, outermost first: (absolute file, line, function)."""
    out = []
    while tb is not None:
        code = tb.tb_frame.f_code
        if not _ours(code.co_filename):
            out.append((os.path.abspath(code.co_filename), tb.tb_lineno, code.co_name))
        tb = tb.tb_next
    return out


def _format_frames(frames: list[tuple[str, int, str]], limit: int, base: str) -> list[str]:
    lines: list[str] = []
    if len(frames) > limit:
        keep = limit // 4
        dropped = len(frames) - limit
        shown = [*frames[:keep], None, *frames[len(frames) - (limit - keep) :]]
    else:
        dropped, shown = 0, [*frames]
    last: tuple[str, int, str] | None = None
    repeated = 0
    for frame in shown:
        if frame is None:
            lines.append(f"  ... {dropped} more frame(s) ...")
            last, repeated = None, 0
            continue
        if frame == last:
            repeated += 1
            if repeated >= REPEATS:
                continue
        else:
            if repeated >= REPEATS:
                lines.append(f"  [Previous frame repeated {repeated - REPEATS + 1} more time(s)]")
            last, repeated = frame, 0
        file, lineno, name = frame
        lines.append(f'  File "{shown_path(file, base)}", line {lineno}, in {name}')
        source = linecache.getline(file, lineno).strip()
        if source:
            cut = source if len(source) <= LINE_CUT else source[: LINE_CUT - 1] + "…"
            lines.append(f"    {cut}")
    if repeated >= REPEATS:
        lines.append(f"  [Previous frame repeated {repeated - REPEATS + 1} more time(s)]")
    return lines


def _chain(exc: BaseException) -> list[tuple[BaseException, str | None]]:
    """The exception and those before it, oldest first, each with how it led to the next
    (None for the last: the exception itself)."""
    chain: list[tuple[BaseException, str | None]] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    link: str | None = None
    while current is not None and id(current) not in seen and len(chain) < MAX_CHAIN:
        seen.add(id(current))
        chain.append((current, link))
        if current.__cause__ is not None:
            current, link = current.__cause__, "direct cause"
        elif current.__context__ is not None and not current.__suppress_context__:
            current, link = current.__context__, "during handling"
        else:
            current = None
    return chain[::-1]


def _only(exc: BaseException) -> list[str]:
    text = "".join(traceback.format_exception_only(type(exc), exc)).rstrip("\n")
    if len(text) > MESSAGE_CUT:
        text = text[: MESSAGE_CUT - 1] + "…"
    return text.splitlines()


def trace(exc: BaseException, base_dir: str) -> Trace:
    """``exc`` trimmed to the user's frames; its raising frame found under ``base_dir``."""
    base = os.path.abspath(base_dir) + os.sep
    lines: list[str] = []
    for e, link in _chain(exc):
        frames = _frames(e.__traceback__)
        if frames:
            lines.append("Traceback (most recent call last):")
            limit = MAX_FRAMES if e is exc else OLDER_FRAMES
            lines.extend(_format_frames(frames, limit, base))
        lines.extend(_only(e))
        if link == "direct cause":
            lines.append("The above exception was the direct cause of:")
        elif link is not None:
            lines.append("During handling of the above exception, another one occurred:")
    text = "\n".join(lines)
    if len(text) > TEXT_CUT:
        text = "…" + text[len(text) - TEXT_CUT + 1 :]
    frames = _frames(exc.__traceback__)
    local = [f for f in frames if f[0].startswith(base)]
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:  # the file it is in
        raising: tuple[str, int, str] | None = (
            os.path.abspath(exc.filename),
            exc.lineno,
            "<module>",
        )
    else:
        raising = (local or frames)[-1] if frames else None
    if raising is None:
        return Trace(text, None, None, None, None)
    file, line, function = raising
    return Trace(text, file, line, function, f"{shown_path(file, base)}:{line} in {function}")
