"""The SQLite plumbing every part of :class:`~.sqlite.SQLiteStore` builds on.

Connections run in autocommit mode (``isolation_level=None``); every write is a
``BEGIN IMMEDIATE`` … ``COMMIT`` block from :meth:`SQLiteDB._tx`, so the
writer lock is taken up front and ``busy_timeout`` handles other processes.
Every write made on behalf of a run checks the run's lease token inside its
transaction (:meth:`SQLiteDB._fence`): a process whose lease was taken over can
never commit. The schema is brought up to date on open (``migrations.py``), once
``sqlite_file.examine`` has found the file to be flowrun's; ``readonly=True``
opens it ``mode=ro`` and never writes or creates anything. This module fills in
the SQLite side of the seam of ``sql.py`` (``flowrun_now()`` is this process's
clock, registered on the connection).
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from ..envvars import BUSY_TIMEOUT_S, busy_timeout_s
from ..errors import DatabaseRefused, ResumeRefused, StoreError
from .lockers import locked_message
from .migrations import MIGRATIONS
from .sql import SQLDB, SQLConn
from .sqlite_file import damage_error, damaged, examine, read_only_uri

BUSY_TIMEOUT_MS = int(BUSY_TIMEOUT_S * 1000)  # the default; FLOWRUN_BUSY_TIMEOUT overrides it
_ADD_COLUMN = re.compile(r"ALTER TABLE (\w+) ADD COLUMN (\w+)")

# sqlite3 binds str, int, float and bytes directly but looks every other parameter up as
# an adapter and then as ``__conform__``: a None parameter (a NULL column) costs two failed
# attribute look-ups and their exceptions, ~3k instructions, five times in a chain step's
# commit. An adapter of None to None (it binds as NULL, as before) makes it one look-up;
# one the program registered itself is left in place.
if (type(None), sqlite3.PrepareProtocol) not in getattr(sqlite3, "adapters", {}):
    _none: dict[None, None] = {}
    sqlite3.register_adapter(type(None), cast("Callable[[None], None]", _none.get))  # C, no frame


def busy_timeout_ms() -> int:
    """How long a write waits for another process's write lock before it fails."""
    return int(busy_timeout_s() * 1000)


class SQLiteDB(SQLDB):
    """One database file and one shared connection: open, migrate, transact."""

    _IntegrityError = sqlite3.IntegrityError

    def __init__(
        self, path: str | os.PathLike[str], *, durability: str = "normal", readonly: bool = False
    ) -> None:
        self.path = Path(path)
        self.label = str(self.path)
        self.durability = durability
        self.readonly = readonly
        found = examine(self.path)  # nothing is written to a file not known to be flowrun's
        self._lock = threading.RLock()  # the heartbeat thread shares the connection
        if readonly and found.fresh:
            raise ResumeRefused(
                f"no flowrun database at {self.path}",
                hint="run a workflow here first, or point --db (or FLOWRUN_DB) at its database",
            )
        if not readonly:
            self._check_writable(found.exists)
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                if not found.exists:
                    os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            except OSError as exc:
                raise StoreError(f"cannot create database {self.path}: {exc.strerror}") from None
        self.conn = self._connect(read_only_uri(self.path) if readonly else None)
        try:
            if not found.fresh:  # damage is found on open, before any write (~0.05 s per 50 MB)
                (first,) = self.conn.execute("PRAGMA quick_check(1)").fetchone()
                if first != "ok":
                    raise damaged(self.path, first)
            if readonly:
                self._read_older(self._check_version())
            else:
                self._migrate()
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            raise damage_error(self.path, exc) from None

    def _check_writable(self, exists: bool) -> None:
        """SQLite's WAL makes and removes ``-wal``/``-shm`` files next to the database."""
        folder = self.path.parent
        if folder.exists() and not os.access(folder, os.W_OK | os.X_OK):
            raise StoreError(
                f"cannot write to {self.path}: folder {folder} is read-only",
                hint="reading works (`flowrun show`, `runs`, `costs`); to run, copy the"
                " database to a writable folder and pass --db",
            )
        if exists and not os.access(self.path, os.W_OK):
            raise StoreError(
                f"cannot write to {self.path}: the file is read-only",
                hint="reading works (`flowrun show`, `runs`, `costs`); make it writable to run",
            )

    def _connect(self, uri: str | None = None) -> sqlite3.Connection:
        busy_ms = self._busy_ms = busy_timeout_ms()
        try:
            conn = sqlite3.connect(
                uri or self.path,
                isolation_level=None,
                timeout=busy_ms / 1000,
                check_same_thread=False,
                uri=uri is not None,
            )
            conn.create_function("flowrun_now", 0, time.time)  # the seam's _NOW
            conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
            if uri is None:
                self._wal(conn, busy_ms / 1000)
                sync = "FULL" if self.durability == "full" else "NORMAL"
                conn.execute(f"PRAGMA synchronous = {sync}")
            else:
                conn.execute("PRAGMA query_only = ON")
            conn.execute("PRAGMA foreign_keys = ON")
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            raise damage_error(self.path, exc) from None
        return conn

    @staticmethod
    def _wal(conn: sqlite3.Connection, wait_s: float) -> None:
        """``PRAGMA journal_mode = WAL``, waiting up to ``wait_s`` for other openers.

        Switching a new file to WAL takes an exclusive lock, and SQLite answers "database
        is locked" at once (without the busy handler) while another process that opens
        the same new file holds a lock on it: several flowruns starting on one fresh
        database met that. A wait like busy_timeout's makes them take turns.
        """
        deadline = time.monotonic() + wait_s
        pause = 0.002
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    def _tx(self) -> _Tx:
        return _Tx(self)

    def _write_error(self, exc: sqlite3.OperationalError) -> StoreError:
        """A write that failed: locked for too long, disk full, I/O."""
        if "locked" in str(exc):  # waited busy_timeout: say who holds the lock
            message, hint = locked_message(self.path, self._busy_ms / 1000)
            return StoreError(message, hint=hint)
        return StoreError(
            f"cannot write to {self.path}: {exc}",
            hint="nothing of the failed write was kept; fix the cause, then"
            " `flowrun resume` continues from the last committed step",
        )

    def _check_version(self) -> int:
        (version,) = self.conn.execute("PRAGMA user_version").fetchone()
        if version > len(MIGRATIONS):
            raise StoreError(
                f"database {self.path} has schema version {version}, newer than this flowrun",
                hint="upgrade flowrun",
            )
        return int(version)

    def _read_older(self, version: int) -> None:
        """Read a file of an older schema as if it were current, without changing it:
        each table that later versions add columns to is shadowed by a TEMP view (temp
        objects come first in SQLite's name lookup) with those columns as NULL."""
        added: dict[str, list[str]] = {}
        for script in MIGRATIONS[version:] if version else []:
            for table, column in _ADD_COLUMN.findall(script):
                added.setdefault(table, []).append(column)
        if not added:
            return
        self.conn.execute("PRAGMA query_only = OFF")  # for the TEMP views; the file is mode=ro
        try:
            for table, columns in added.items():
                nulls = ", ".join(f"NULL AS {c}" for c in columns)
                self.conn.execute(
                    f"CREATE TEMP VIEW {table} AS SELECT *, {nulls} FROM main.{table}"
                )
        finally:
            self.conn.execute("PRAGMA query_only = ON")

    def _migrate(self) -> None:
        version = self._check_version()
        while version < len(MIGRATIONS):
            with self._tx() as c:
                (version,) = c.execute("PRAGMA user_version").fetchone()
                if version >= len(MIGRATIONS):
                    break
                if version == 0 and c.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone():
                    raise DatabaseRefused(
                        f"{self.path} is another application's SQLite database",
                        hint="flowrun adds no tables to it: pick another --db (or FLOWRUN_DB)",
                    )
                for stmt in MIGRATIONS[version].split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                c.execute(f"PRAGMA user_version = {version + 1}")
            version += 1

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self.conn

    def _insert_id(self, c: SQLConn, sql: str, args: Sequence[Any]) -> int:
        return int(c.execute(sql, args).lastrowid or 0)

    def _failure_cols(self) -> str:
        """The traceback columns, or NULLs in a file a read-only command did not upgrade."""
        with self._lock:
            cols = {r[1] for r in self.conn.execute("PRAGMA table_info(task_results)")}
        if "traceback" in cols:
            return "traceback, error_file, error_line"
        return "NULL, NULL, NULL"

    def _size(self) -> int:
        """The size of the database file and its WAL."""
        wal = self.path.with_name(self.path.name + "-wal")
        return sum(p.stat().st_size for p in (self.path, wal) if p.exists())

    def _reclaim(self) -> str | None:
        with self._lock:
            try:  # not inside a transaction: VACUUM cannot run in one
                self.conn.execute("VACUUM")
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError as exc:
                return str(exc)
        return None

    def close(self) -> None:
        self.conn.close()


class _Tx:
    """:meth:`SQLiteDB._tx`: ``BEGIN IMMEDIATE`` … ``COMMIT`` under the connection's lock,
    ``ROLLBACK`` on any exception; an ``OperationalError`` leaves as a :class:`StoreError`.
    A class rather than a ``@contextmanager`` generator: it is entered at every step."""

    __slots__ = ("db",)

    def __init__(self, db: SQLiteDB) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        db = self.db
        db._lock.acquire()
        try:
            db.conn.execute("BEGIN IMMEDIATE")
        except BaseException as exc:
            db._lock.release()
            if isinstance(exc, sqlite3.OperationalError):
                raise db._write_error(exc) from exc
            raise
        return db.conn

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        db = self.db
        conn = db.conn
        try:
            if kind is None:
                try:
                    conn.execute("COMMIT")
                    return
                except BaseException as failed:
                    exc = failed
            # SQLite may already have rolled back (disk full, I/O error): a second
            # ROLLBACK would fail and hide the real cause
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.OperationalError as failed:
                exc = failed
            if isinstance(exc, sqlite3.OperationalError):
                raise db._write_error(exc) from exc
            if kind is None:  # the COMMIT failed otherwise
                assert exc is not None
                raise exc
        finally:
            db._lock.release()
