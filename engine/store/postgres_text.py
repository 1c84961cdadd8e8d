"""Any text on PostgreSQL: U+0000 in and out of ``text`` columns, reversibly.

PostgreSQL's ``text`` cannot hold U+0000, and a task may print one (``printf 'a\\0b'``),
raise an error with one in its message, or leave one in a traceback. Every string the
PostgreSQL store sends is escaped on its way out by the connection's ``str`` dumper and
every ``text`` value it reads is unescaped by its loader, so the store keeps exactly
what SQLite keeps and nothing above this module knows:

* U+0000 is stored as ``MARK`` ``0``, and ``MARK`` itself (U+10FFFD, the last
  private-use code point) as ``MARK`` ``1``; any other text is stored as it is.

Escaping maps a concatenation to the concatenation of the escapes, so equality and
prefix comparisons of escaped parameters with escaped columns mean what they meant.
(JSON columns never hold a raw U+0000: JSON escapes it as ``\\u0000``.)
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
from psycopg.types.string import StrDumperUnknown, TextLoader

MARK = "\U0010fffd"
_ESCAPED = re.compile(MARK + "[01]")


def escape(text: str) -> str:
    """``text`` as the database stores it (unchanged unless it holds U+0000 or ``MARK``)."""
    if MARK in text:
        text = text.replace(MARK, MARK + "1")
    return text.replace("\0", MARK + "0") if "\0" in text else text


def unescape(text: str) -> str:
    """The text :func:`escape` was given."""
    if MARK not in text:
        return text
    return _ESCAPED.sub(lambda m: "\0" if m.group(0)[1] == "0" else MARK, text)


class _Dumper(StrDumperUnknown):
    def dump(self, obj: str) -> Any:
        return super().dump(escape(obj))


class _Loader(TextLoader):
    def load(self, data: Any) -> Any:
        text = super().load(data)
        return unescape(text) if isinstance(text, str) else text  # bytes: a SQL_ASCII database


def adapt(conn: psycopg.Connection[Any]) -> None:
    """Escape what ``conn`` sends and unescape the ``text`` it reads (this connection only)."""
    conn.adapters.register_dumper(str, _Dumper)
    for name in ("text", "varchar"):
        conn.adapters.register_loader(name, _Loader)
