"""The one SQL layer: what every SQL store's shared modules build on, and the dialect seam.

The shared modules (``events.py``, ``runs.py``, ``results.py``, ``steps.py``,
``ledger.py``, ``procs.py``, ``maintenance.py``) are written once against
:class:`SQLDB`: statements with ``?`` placeholders, run on the connection that
:meth:`SQLDB._tx` (a write transaction) or :meth:`SQLDB._read` (reads) hands out.
A backend (``sqlite_db.py``, ``postgres_db.py``) supplies the connection and fills
in the seam:

=======================  ========================  ====================================
hook                     SQLite                    PostgreSQL
=======================  ========================  ====================================
placeholders             ``?``                     ``%s`` (translated by its connection)
``_GREATEST``            ``max``                   ``GREATEST``
``_NOW``                 ``flowrun_now()``         ``now()`` in epoch seconds: the
                         (this process's clock)    database's clock
``_FOR_UPDATE``          (``BEGIN IMMEDIATE``      ``FOR UPDATE``: the run row is
                         locks the file)           locked for the transaction
``_IS``                  ``IS``                    ``IS NOT DISTINCT FROM``
``_insert_id``           ``lastrowid``             ``RETURNING id``
``_IntegrityError``      ``sqlite3``'s             ``psycopg``'s
``_failure_cols``        NULLs in an old file      always present
``_reclaim``             ``VACUUM``                nothing (autovacuum)
``_workflows_lock``      (the write lock)          an advisory lock
``_check_fence``         at once                   before the ``COMMIT`` (pipelined)
=======================  ========================  ====================================

Upserts are ``ON CONFLICT … DO NOTHING`` / ``DO UPDATE SET … = excluded.…`` on both.
Every write made on behalf of a run is fenced by its lease token
(:meth:`SQLDB._fence`): the first statement of its transaction updates the run
row only where the token is still the run's, so a process whose lease was taken
over can never commit (on PostgreSQL that update also holds the row lock until
the commit, so no takeover can slip in between).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Protocol

from ..errors import LeaseLost


def lease_lost(run_id: str) -> LeaseLost:
    return LeaseLost(
        f"run {run_id} was taken over by another process; this one stops",
        hint="two processes drove the same run; only the newest lease may commit",
    )


class Rows(Protocol):
    """What a statement returns: a DB-API cursor."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...

    def __iter__(self) -> Iterator[Any]: ...


class SQLConn(Protocol):
    """A connection (or transaction) that runs ``?``-placeholder statements."""

    def execute(self, sql: str, parameters: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> Any: ...


@functools.cache
def _fence_sql(cols: tuple[str, ...]) -> str:
    """The fence's statement for these columns (made once: a step commit sets the same ones)."""
    sets = ", ".join(f"{k} = ?" for k in cols)
    return f"UPDATE runs SET {sets} WHERE run_id = ? AND lease_token = ?"


class SQLDB:
    """The seam: a backend sets the class attributes and implements the methods below."""

    _GREATEST: ClassVar[str] = "max"
    _NOW: ClassVar[str] = "flowrun_now()"
    _FOR_UPDATE: ClassVar[str] = ""
    _IS: ClassVar[str] = "IS"
    _IntegrityError: ClassVar[type[Exception]] = Exception

    label: str  # how messages name the database: a path, or a URL without its password
    _lock: threading.RLock  # one connection, shared by the coordinator and worker threads

    def _tx(self) -> AbstractContextManager[SQLConn]:
        """One write transaction (locked against other writers of the run)."""
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[SQLConn]:
        """The connection for reads, held for the ``with`` block."""
        raise NotImplementedError

    def _insert_id(self, c: SQLConn, sql: str, args: Sequence[Any]) -> int:
        """Run an ``INSERT`` into a table with an ``id`` key; the new row's id."""
        raise NotImplementedError

    def _failure_cols(self) -> str:
        """The ``task_results`` traceback columns (NULLs where an old file lacks them)."""
        return "traceback, error_file, error_line"

    def _reclaim(self) -> str | None:
        """After a prune: give the freed space back where the store can; why it could not."""
        return None

    def _size(self) -> int | None:
        """The database's size in bytes, where that is the store's own (a file)."""
        return None

    def _workflows_lock(self, c: SQLConn, *, exclusive: bool) -> None:
        """Held by a transaction that adds a run (shared) or deletes unused workflow texts
        (exclusive), so a text is never deleted under a run being created. SQLite's write
        lock already serialises them."""

    def _fence(self, c: SQLConn, run_id: str, token: int, **updates: Any) -> None:
        updates["updated_at"] = time.time()
        rows = c.execute(_fence_sql(tuple(updates)), (*updates.values(), run_id, token))
        self._check_fence(c, rows, run_id)

    def _check_fence(self, c: SQLConn, rows: Rows, run_id: str) -> None:
        """LeaseLost unless the fence of ``run_id`` updated its row: at once (SQLite), or
        before the transaction commits (PostgreSQL, whose statements are pipelined)."""
        if rows.rowcount != 1:
            raise lease_lost(run_id)

    def close(self) -> None:
        raise NotImplementedError

    def secrets(self) -> frozenset[str]:
        """Nothing: a path holds no secret (PostgreSQL's URL may)."""
        return frozenset()
