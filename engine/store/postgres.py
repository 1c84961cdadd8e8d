"""The PostgreSQL store: many runners, one history, the same guarantees as SQLite's.

:class:`PostgresStore` is the shared SQL layer (``sql.py`` and the modules built on
it) on the PostgreSQL plumbing of ``postgres_db.py``: one transaction per step
(state delta, frontier, outbox, the idempotency key, UNIQUE within the run), the lease token
checked inside every commit under the run row's lock, heartbeats and staleness on
the database's clock, the schema versions in a table. Opened by
:func:`~.open.open_store` for a ``postgresql://`` URL (``pip install 'flowrun[postgres]'``).

Every public method is one boundary: a serialization failure or a deadlock (the
transaction was rolled back whole) runs the method again, a few times; any other
database failure leaves as a :class:`~flowrun.engine.errors.StoreError` naming the
database without its password. Nothing of a transaction that failed was kept.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors

from ..errors import StoreError
from .ledger import SQLLedger
from .maintenance import SQLMaintenance
from .postgres_db import PostgresDB
from .procs import SQLProcs

__all__ = ["PostgresStore"]

RETRIES = 8  # serialization failures and deadlocks: each is the whole method again
_RETRY = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)

C = TypeVar("C", bound=type)


def _failure(db: PostgresDB, exc: psycopg.Error) -> StoreError:
    why = db._scrub(exc)
    if isinstance(exc, pg_errors.LockNotAvailable):
        return StoreError(
            f"cannot write to {db.label}: waited past FLOWRUN_BUSY_TIMEOUT for a lock another"
            f" flowrun holds ({why})",
            hint="wait for it to finish, then retry (nothing of the failed write was kept)",
        )
    if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
        return StoreError(f"cannot write to {db.label}: opened read-only ({why})")
    lost = isinstance(exc, psycopg.OperationalError) or db._conn is None or db._conn.broken
    what = "lost the connection to" if lost else "cannot use database"
    return StoreError(
        f"{what} {db.label}: {why}",
        hint="nothing of the failed write was kept; `flowrun resume` continues from the"
        " last committed step",
    )


def _store_boundary(cls: C) -> C:
    """Every public method: retried on a serialization failure or deadlock; any other
    database failure leaves it as one StoreError."""

    def guard(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def guarded(self: PostgresDB, *args: Any, **kwargs: Any) -> Any:
            for attempt in range(1, RETRIES + 1):
                try:
                    return fn(self, *args, **kwargs)
                except _RETRY as exc:
                    if attempt == RETRIES:
                        raise _failure(self, exc) from exc
                    time.sleep(random.uniform(0, 0.005 * 2**attempt))
                except psycopg.Error as exc:
                    raise _failure(self, exc) from exc
            raise AssertionError("unreachable")

        return guarded

    for name in dir(cls):
        attr = getattr(cls, name)
        if not name.startswith("_") and callable(attr) and not isinstance(attr, type):
            setattr(cls, name, guard(attr))
    return cls


@_store_boundary
class PostgresStore(SQLMaintenance, SQLLedger, SQLProcs, PostgresDB):
    """The :class:`~.base.Store` on a PostgreSQL database (``PostgresStore(url, ...)``).

    ``durability="full"`` sets ``synchronous_commit = on`` for the session (each commit
    waits for the server's WAL flush); ``normal`` sets it ``off`` (a crash of the server
    may lose the last commits, never half of one: SQLite's ``synchronous=NORMAL``).
    """
