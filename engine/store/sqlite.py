"""The SQLite store: one file, WAL, one explicit transaction per write.

:class:`SQLiteStore` is composed of one class per concern, each in its own module
and each building on the plumbing of ``sqlite_db.py``:

==========================  ==============================================================
``sqlite_db.py``            connect + pragmas, ``_tx`` (``BEGIN IMMEDIATE``), migrations,
                            the SQLite side of the seam of ``sql.py``
``sql.py``                  the seam, and ``_fence`` (the lease-token check in a transaction)
``events.py``               the event outbox (``events``, ``event_seq``, ``events_emitted``)
``runs.py``                 runs: create, lease, heartbeat, status, look-ups and listing
``results.py``              task results, saved as each task finishes
``steps.py``                the atomic step commit, state per key
``ledger.py``               the LLM cost ledger
``procs.py``                commands in flight (killed on takeover if their owner died)
``maintenance.py``          ``fork_run`` and ``prune_runs``
``leases.py``               when a lease is live (store-agnostic)
==========================  ==============================================================

All but ``sqlite_db.py`` and ``sqlite_file.py`` are shared with the PostgreSQL store.

Every write is a ``BEGIN IMMEDIATE`` … ``COMMIT`` block from the one ``_tx``, and
every write made on behalf of a run is fenced by its lease token: a process whose
lease was taken over can never commit.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from .leases import HOST, LEASE_STALE_S, lease_live, pid_alive
from .ledger import SQLLedger
from .maintenance import SQLMaintenance
from .procs import SQLProcs
from .sqlite_db import BUSY_TIMEOUT_MS, SQLiteDB
from .sqlite_file import damage_error

__all__ = [
    "BUSY_TIMEOUT_MS",
    "HOST",
    "LEASE_STALE_S",
    "SQLiteDB",
    "SQLiteStore",
    "lease_live",
    "pid_alive",
]


C = TypeVar("C", bound=type)


def _store_boundary(cls: C) -> C:
    """Every public method: an SQLite failure leaves it as a StoreError naming the file.

    A damaged page surfaces as ``sqlite3.DatabaseError`` (or undecodable text) from
    whichever read or write meets it first; :func:`~.sqlite_file.damage_error` runs
    ``PRAGMA quick_check`` then and reports the damage instead of an internal error.
    """

    def guard(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def guarded(self: SQLiteDB, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(self, *args, **kwargs)
            except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
                raise damage_error(self.path, exc) from exc

        return guarded

    for name in dir(cls):
        attr = getattr(cls, name)
        if not name.startswith("_") and callable(attr) and not isinstance(attr, type):
            setattr(cls, name, guard(attr))
    return cls


@_store_boundary
class SQLiteStore(SQLMaintenance, SQLLedger, SQLProcs, SQLiteDB):
    """The :class:`~.base.Store` on one SQLite file (``SQLiteStore(path, durability=...)``).

    ``durability="full"`` sets ``synchronous=FULL`` (every commit survives power
    loss); the default ``normal`` survives a process crash. The connection is shared
    by the coordinator, the heartbeat thread and LLM worker threads; ``_tx`` holds a
    lock around each transaction.
    """
