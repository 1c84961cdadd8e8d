"""Looking into a store from a test, whichever kind: a SQLite file or a PostgreSQL URL.

The same SQL (``?`` placeholders) reads either. A SQLite file is opened read-only, so
looking never checkpoints or removes its WAL. Before a run has created its schema
(or its file) there is nothing to read: ``query`` returns no rows then.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

PG_SCHEMA = "flowrun"  # the PostgreSQL schema the store keeps its tables in


def is_postgres(url: str | Path) -> bool:
    return str(url).startswith(("postgresql://", "postgres://"))


def query(url: str | Path, text: str, *params: Any) -> list[tuple[Any, ...]]:
    """The rows of ``text``; none while the store (its file, its tables) does not exist yet."""
    if is_postgres(url):
        import psycopg

        with psycopg.connect(str(url), autocommit=True) as c:
            c.execute(f"SET search_path TO {PG_SCHEMA}, public")
            try:
                return list(c.execute(text.replace("?", "%s"), params).fetchall())
            except psycopg.errors.UndefinedTable:
                return []
    if not Path(url).exists():
        return []
    c = sqlite3.connect(f"file:{url}?mode=ro", uri=True)
    try:
        return c.execute(text, params).fetchall()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):  # killed before the schema was created
            return []
        raise
    finally:
        c.close()


def execute(url: str | Path, text: str, *params: Any) -> None:
    """Run one writing statement, committed, as another process would."""
    if is_postgres(url):
        import psycopg

        with psycopg.connect(str(url), autocommit=True) as c:
            c.execute(f"SET search_path TO {PG_SCHEMA}, public")
            c.execute(text.replace("?", "%s"), params)
        return
    with contextlib.closing(sqlite3.connect(str(url))) as c:
        c.execute(text, params)
        c.commit()


def integrity_ok(url: str | Path) -> bool:
    """SQLite's ``PRAGMA integrity_check`` of the file. (A PostgreSQL server keeps its own
    pages; no client-side check exists, so only SQLite is asked.)"""
    assert not is_postgres(url), "integrity_check is SQLite's"
    return query(url, "PRAGMA integrity_check") == [("ok",)]


def db_now(url: str | Path) -> float:
    """The store's clock, in epoch seconds: PostgreSQL's ``now()``; SQLite's is this host's."""
    if is_postgres(url):
        return float(query(url, "SELECT extract(epoch FROM clock_timestamp())")[0][0])
    return time.time()


def in_transaction(url: str | Path) -> bool:
    """True while some other session holds a transaction open on the store."""
    if is_postgres(url):
        busy = query(
            url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND state <> 'idle'",
        )
        return bool(busy[0][0])
    c = sqlite3.connect(str(url), timeout=0, isolation_level=None)
    try:
        c.execute("BEGIN IMMEDIATE")  # never writes: rolled back at once
        c.execute("ROLLBACK")
        return False
    except sqlite3.OperationalError:
        return True
    finally:
        c.close()


def freeze(pid: int, url: str | Path) -> None:
    """SIGSTOP ``pid`` at an instant it holds no transaction open on the store (a stopped
    process inside one would hold the write lock, on SQLite, or the run's row lock)."""
    for _ in range(200):
        os.kill(pid, signal.SIGSTOP)
        if not in_transaction(url):
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} was inside a transaction at every try")
