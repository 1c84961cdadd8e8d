"""Stores by URL: ``open_store(url)`` picks the store a ``--db`` value names.

==============================  ===========================================================
``path/to/flowrun.db``          SQLite (the embedded default), as is ``sqlite:///path``
``sqlite:///abs/path.db``       SQLite at ``/abs/path.db`` (``sqlite:///rel.db``: relative)
``postgresql://user@host/db``   PostgreSQL through psycopg 3 (``flowrun[postgres]``);
                                ``postgres://`` is the same
anything else with ``://``      refused (exit 2)
==============================  ===========================================================

A password in a URL is never shown: :func:`masked` replaces it, in the user info or
the query (``?password=``, ``?sslpassword=``), wherever a URL is named (errors, the
store's ``label``); :func:`url_secrets` are the values a run masks in what its tasks
print (a command inherits ``FLOWRUN_DB``).
"""

from __future__ import annotations

import importlib.util
import os
from urllib.parse import unquote

from ..errors import UsageError
from .base import Store

POSTGRES_SCHEMES = ("postgresql", "postgres")
INSTALL_HINT = "pip install 'flowrun[postgres]' (psycopg 3)"
# libpq's parameters that hold a secret (passfile names a file: no secret in itself)
SECRET_PARAMS = frozenset({"password", "sslpassword"})
MASK = "***"


def _userinfo_and_query(url: str) -> tuple[str, str, str, str, str]:
    """``url`` cut as ``(head, user, password, rest, query)``: ``head`` is ``scheme://``,
    ``password`` is ``""`` or ``:`` and the password as written, ``rest`` runs from the
    ``@`` (or the hosts) up to the query.

    The user info ends at the last ``@`` before the query, not libpq's first one before
    a ``/``: a password with a raw ``@`` or ``/`` in it is still hidden whole.
    """
    head, _, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    userinfo, at, hosts = rest.rpartition("@")
    user, colon, password = userinfo.partition(":")
    return f"{head}://", user, colon + password, at + hosts, query


def _hidden(url: str) -> tuple[str, set[str]]:
    """``url`` with the user info's password and every secret query field as ``***``;
    the values hidden, as written and decoded."""
    head, user, password, rest, query = _userinfo_and_query(url)
    hidden = {password[1:]} if password else set()
    fields = []
    for field in query.split("&") if query else ():
        key, eq, value = field.partition("=")
        if eq and unquote(key) in SECRET_PARAMS:
            hidden.add(value)
            field = f"{key}={MASK}"
        fields.append(field)
    text = head + user + (f":{MASK}" if password else "") + rest
    if query:
        text += "?" + "&".join(fields)
    return text, hidden | {unquote(h) for h in hidden}


def _parsed_secrets(url: str) -> set[str]:
    """The secrets libpq reads from ``url`` (none if psycopg is missing or cannot parse it)."""
    try:
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:
        return set()
    try:
        params = conninfo_to_dict(url)
    except Exception:  # a malformed URL: libpq says what is wrong when it is opened
        return set()
    return {str(params[k]) for k in SECRET_PARAMS if params.get(k)}


def masked(url: str) -> str:
    """``url`` with every secret in it (the password, ``?password=``, ``?sslpassword=``)
    as ``***``; a path comes back unchanged.

    Where psycopg is installed, libpq's own reading of ``url`` is the check: if it finds
    a secret this did not hide (a URL cut in a way libpq cuts otherwise), all of the
    URL after the scheme is hidden.
    """
    if scheme_of(url) is None:
        return url
    text, hidden = _hidden(url)
    if any(not any(s in h for h in hidden) for s in _parsed_secrets(url)):
        return url.partition("://")[0] + "://" + MASK
    return text


def url_secrets(url: str) -> frozenset[str]:
    """Every secret ``url`` holds, as libpq reads it and as written (encoded) in the URL:
    what a store masks in its errors and a run masks in what its tasks print."""
    if scheme_of(url) is None:
        return frozenset()
    return frozenset(s for s in _hidden(url)[1] | _parsed_secrets(url) if s)


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
