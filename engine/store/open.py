"""Stores by URL: ``open_store(url)`` picks the store a ``--db`` value names.

==============================  ===========================================================
``path/to/flowrun.db``          SQLite (the embedded default), as is ``sqlite:///path``
``sqlite:///abs/path.db``       SQLite at ``/abs/path.db`` (``sqlite:///rel.db``: relative)
``postgresql://user@host/db``   PostgreSQL through psycopg 3 (``flowrun[postgres]``);
                                ``postgres://`` is the same
anything else with ``://``      refused (exit 2)
==============================  ===========================================================

A password in a URL is never shown: :func:`masked` replaces it wherever a URL is
named (errors, the store's ``label``).
"""

from __future__ import annotations

import importlib.util
import os
from urllib.parse import unquote, urlsplit, urlunsplit

from ..errors import UsageError
from .base import Store

POSTGRES_SCHEMES = ("postgresql", "postgres")
INSTALL_HINT = "pip install 'flowrun[postgres]' (psycopg 3)"


def masked(url: str) -> str:
    """``url`` with any password replaced by ``***`` (a path comes back unchanged)."""
    if "://" not in url:
        return url
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url.split("://", 1)[0] + "://***"
    if password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    netloc = f"{user}:***@{host}"
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def scheme_of(url: str) -> str | None:
    """The URL scheme (lower case), or None for a plain path."""
    head, sep, _ = url.partition("://")
    if not sep or "/" in head or not head:
        return None
    return head.lower()


def sqlite_path(url: str) -> str:
    """The file a path or ``sqlite:///path`` names."""
    if scheme_of(url) != "sqlite":
        return url
    rest = url.split("://", 1)[1]
    if rest.startswith("/"):  # sqlite:///rel or sqlite:////abs (SQLAlchemy's forms)
        rest = rest[1:]
    elif rest:  # sqlite://host/… has no meaning here
        raise UsageError(
            f"--db {url}: a sqlite URL has no host",
            hint="sqlite:///relative/path.db or sqlite:////absolute/path.db, or just the path",
        )
    path = unquote(rest.split("?", 1)[0])
    if not path:
        raise UsageError(f"--db {url}: no file named", hint="e.g. sqlite:///.flowrun/flowrun.db")
    return path


def is_postgres(url: str) -> bool:
    return scheme_of(url) in POSTGRES_SCHEMES


def open_store(url: str, *, durability: str = "normal", readonly: bool = False) -> Store:
    """The store ``url`` names (see the module docstring); ``readonly=True`` never writes.

    ``durability`` is ``normal`` or ``full``: SQLite's ``synchronous``; on PostgreSQL
    ``synchronous_commit`` ``off`` or ``on`` (the same contract: ``normal`` survives a
    crash of flowrun, ``full`` a crash of the machine or server too).
    """
    if durability not in ("normal", "full"):
        raise UsageError(f"--durability must be normal or full, not {durability!r}")
    scheme = scheme_of(url)
    if scheme is None or scheme == "sqlite":
        from .sqlite import SQLiteStore

        return SQLiteStore(os.fspath(sqlite_path(url)), durability=durability, readonly=readonly)
    if scheme in POSTGRES_SCHEMES:
        if importlib.util.find_spec("psycopg") is None:
            raise UsageError(
                f"--db {masked(url)}: the PostgreSQL store needs psycopg 3, which is not installed",
                hint=INSTALL_HINT,
            )
        from .postgres import PostgresStore

        return PostgresStore(url, durability=durability, readonly=readonly)
    raise UsageError(
        f"--db {masked(url)}: unknown database scheme {scheme!r}",
        hint="a file path, sqlite:///path, or postgresql://user@host/dbname",
    )
