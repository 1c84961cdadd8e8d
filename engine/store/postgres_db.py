"""The PostgreSQL plumbing of :class:`~.postgres.PostgresStore`: connect, migrate, transact.

One connection (psycopg 3, autocommit) is shared by the coordinator, the heartbeat
thread and LLM worker threads behind one lock, as SQLite's is; every write is one
``BEGIN`` … ``COMMIT`` from :meth:`PostgresDB._tx`, sent as one pipeline. Its first
statement is the lease fence (``UPDATE runs … WHERE lease_token = ?``), which holds the
run row's lock until the commit, or a ``SELECT … FOR UPDATE`` of that row: no takeover
can come between the check and the commit. The fence's answer is checked before the
``COMMIT`` is sent, so a transaction costs two round trips (plus one per value read
back in it). A lost connection is opened again at the next call; the transaction it
was in never committed half.

Session settings, sent at once: ``search_path`` is the ``flowrun`` schema;
``default_transaction_isolation`` is ``read committed`` whatever the database's default
(the fence and the migration's lock rely on each statement seeing what committed before
it); ``lock_timeout`` is ``FLOWRUN_BUSY_TIMEOUT`` (a write waits that long for another
holder's row lock; 0 is the shortest wait, 1 ms, never PostgreSQL's "forever");
``idle_in_transaction_session_timeout`` is half the lease's stale time, so a client
frozen inside a transaction after its fences were answered is cut off by the server and
its locks released before a waiter gives up (when it thaws, its commit fails; the
server does not count a client frozen mid-pipeline, before a sync, as idle);
``synchronous_commit`` is ``off`` for ``--durability normal`` and ``on`` for ``full``;
``default_transaction_read_only`` for ``readonly=True``. A failure to open (a malformed
URL, no privilege, a refused setting) is one line naming the database without its
secrets, with a hint.
Text goes through ``postgres_text.py`` (U+0000, which ``text`` cannot hold).
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

import psycopg
from psycopg import errors as pg_errors

from ..envvars import busy_timeout_s
from ..errors import DatabaseRefused, LeaseLost, ResumeRefused, StoreError, UsageError
from . import postgres_text
from .leases import stale_after
from .open import masked, url_secrets
from .postgres_migrations import (
    MIGRATION_LOCK,
    MIGRATIONS,
    SCHEMA,
    VERSION_TABLE,
    WORKFLOWS_LOCK,
)
from .sql import SQLDB, SQLConn, lease_lost

CONNECT_TIMEOUT_S = 10
MIGRATION_WAIT_S = 60  # how long a first open waits for another process's migration
# refused by the server: no privilege, or a role that may not log in or use the database
REFUSALS = (pg_errors.InsufficientPrivilege, pg_errors.InvalidAuthorizationSpecification)


def idle_cutoff_ms() -> int:
    """``idle_in_transaction_session_timeout``: half the lease's stale time.

    A client frozen inside a transaction is cut off by the server and its row locks go,
    before the lease is stale and well before a waiter's ``lock_timeout`` (both 30 s by
    default) runs out: a takeover blocked on its lock takes over instead of failing.
    """
    return max(1, int(stale_after() * 500))


@functools.lru_cache(maxsize=512)
def _pg(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (the shared statements hold no ``%``)."""
    return sql.replace("?", "%s")


class PgRows:
    """A statement's cursor in a pipeline: its ``rowcount`` waits for the server's answer."""

    __slots__ = ("cursor", "pipeline")

    def __init__(self, cursor: psycopg.Cursor[Any], pipeline: psycopg.Pipeline) -> None:
        self.cursor = cursor
        self.pipeline = pipeline

    @property
    def rowcount(self) -> int:
        if self.cursor.rowcount < 0:  # not answered yet
            self.pipeline.sync()
        return self.cursor.rowcount

    def fetchone(self) -> Any:
        return self.cursor.fetchone()  # a fetch waits for the answer by itself

    def fetchall(self) -> list[Any]:
        return self.cursor.fetchall()

    def __iter__(self) -> Iterator[Any]:
        return iter(self.cursor)


class PgConn:
    """A psycopg connection speaking the shared statements' ``?`` placeholders.

    In a transaction (:meth:`PostgresDB._tx`) it is in pipeline mode: a statement is sent
    without waiting for its answer, so a step's statements cost one round trip together,
    plus one per value read back. A lease fence's answer is checked before the ``COMMIT``
    is sent (:meth:`check_fences`).
    """

    __slots__ = ("conn", "fences", "pipeline")

    def __init__(self, conn: psycopg.Connection[Any], pipeline: psycopg.Pipeline | None) -> None:
        self.conn = conn
        self.pipeline = pipeline
        self.fences: list[tuple[PgRows, str]] = []  # (a fence's answer, its run id)

    def execute(self, sql: str, parameters: Sequence[Any] = (), /) -> Any:
        cur = self.conn.execute(_pg(sql), parameters)
        return cur if self.pipeline is None else PgRows(cur, self.pipeline)

    def executemany(self, sql: str, parameters: Iterable[Sequence[Any]], /) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(_pg(sql), parameters)

    def fenced_out(self) -> str | None:
        """The run whose fence matched no row (its lease was taken over), among the answered."""
        for rows, run_id in self.fences:
            if rows.cursor.rowcount == 0:
                return run_id
        return None

    def check_fences(self) -> None:
        """Wait for every answer; LeaseLost if a fence matched no row."""
        if self.pipeline is not None:
            self.pipeline.sync()
        run_id = self.fenced_out()
        if run_id is not None:
            raise lease_lost(run_id)


class PostgresDB(SQLDB):
    """One PostgreSQL database, one shared connection: open, migrate, transact."""

    _GREATEST = "GREATEST"
    _NOW = "EXTRACT(EPOCH FROM now())::float8"
    _FOR_UPDATE = " FOR UPDATE"
    _IS = "IS NOT DISTINCT FROM"
    _IntegrityError = pg_errors.IntegrityError

    def __init__(self, url: str, *, durability: str = "normal", readonly: bool = False) -> None:
        self.url = url
        self.label = masked(url)
        # longest first: a secret inside another is never left half shown
        self._secrets = sorted(url_secrets(url), key=lambda s: (-len(s), s))
        self.durability = durability
        self.readonly = readonly
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None
        try:
            self._params = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise UsageError(
                f"--db {self.label}: not a valid PostgreSQL URL: {self._scrub(exc)}",
                hint="postgresql://user:password@host:port/dbname, with @ : / ? # % in the"
                " user or password written %40 %3A %2F %3F %23 %25; several hosts as"
                " host1:port1,host2:port2",
            ) from None
        conn = self._connection()
        try:
            if readonly:
                self._check_version(conn, fresh_ok=False)
            else:
                self._migrate(conn)
        except psycopg.Error as exc:
            self.close()
            raise self._open_error(exc) from None

    def secrets(self) -> frozenset[str]:
        """The URL's password (and ``sslpassword``), as libpq reads them and as written:
        a run masks them in what its tasks print, as a task inherits ``FLOWRUN_DB``."""
        return frozenset(self._secrets)

    # connecting ---------------------------------------------------------------------
    def _connection(self) -> psycopg.Connection[Any]:
        """The open connection, opened (again) if there is none or it was lost."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn
        self._conn = None
        if conn is not None:
            conn.close()
        kwargs: dict[str, Any] = {"autocommit": True}
        if "connect_timeout" not in self._params:
            kwargs["connect_timeout"] = CONNECT_TIMEOUT_S
        try:
            conn = psycopg.connect(self.url, **kwargs)
        except psycopg.Error as exc:
            raise self._connect_error(exc) from None
        except ValueError as exc:  # a port that is not a number, say
            raise DatabaseRefused(f"--db {self.label}: {self._scrub(exc)}") from None
        postgres_text.adapt(conn)
        try:
            conn.execute(self._session_settings())  # one round trip
        except psycopg.Error as exc:
            conn.close()
            raise self._open_error(exc) from None
        self._conn = conn
        return conn

    def _session_settings(self) -> str:
        """The ``SET`` statements every flowrun session starts with (module docstring)."""
        settings = {
            "search_path": SCHEMA,
            # a database's default may be repeatable read or serializable: the lease fence
            # and the migration's re-read after its lock need each statement's own snapshot
            "default_transaction_isolation": "'read committed'",
            # lock_timeout = 0 would wait forever: FLOWRUN_BUSY_TIMEOUT=0 fails at once, as
            # on SQLite (the shortest wait PostgreSQL has is 1 ms)
            "lock_timeout": max(1, int(busy_timeout_s() * 1000)),
            "idle_in_transaction_session_timeout": idle_cutoff_ms(),
            # normal: a commit does not wait for the WAL flush; a crash of the server (not of
            # flowrun) may lose the last commits, never half of one. full: every commit waits
            "synchronous_commit": "on" if self.durability == "full" else "off",
        }
        if self.readonly:
            settings["default_transaction_read_only"] = "on"
        return "; ".join(f"SET {name} = {value}" for name, value in settings.items())

    def _scrub(self, exc: BaseException) -> str:
        """An error's first line, with the URL (libpq may quote it) and its secrets masked."""
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        text = text.replace(self.url, self.label)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _open_error(self, exc: psycopg.Error) -> StoreError:
        """A failure while setting up the session or the schema, as one line and a hint."""
        why = self._scrub(exc)
        if isinstance(exc, REFUSALS):
            return DatabaseRefused(
                f"cannot open {self.label}: {why}",
                hint=f"the --db user needs CREATE on the database the first time (flowrun"
                f" adds its schema {SCHEMA}), then the use of that schema: GRANT CREATE ON"
                " DATABASE … TO …, or open it once as its owner",
            )
        return StoreError(
            f"cannot open {self.label}: {why}",
            hint="nothing was changed; is the server usable (`psql` with the same URL)?",
        )

    def _connect_error(self, exc: psycopg.Error) -> StoreError:
        why = self._scrub(exc)
        if any(
            s in why for s in ("does not exist", "authentication failed", "no password", "role")
        ):
            return DatabaseRefused(
                f"cannot connect to {self.label}: {why}",
                hint="check the user, password and database name in --db (or FLOWRUN_DB)",
            )
        return StoreError(
            f"cannot connect to {self.label}: {why}",
            hint="is the server running and reachable? `flowrun resume` continues a run"
            " from its last committed step once it is",
        )

    # transactions -------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[SQLConn]:
        """``BEGIN``, the statements and the ``COMMIT`` in one pipeline: one round trip for
        what the transaction writes, one for the ``COMMIT`` after its fences were checked."""
        with self._lock:
            conn = self._connection()
            c: PgConn | None = None
            try:
                with conn.pipeline() as pipeline:
                    conn.execute("BEGIN")
                    c = PgConn(conn, pipeline)
                    yield c
                    c.check_fences()
                    conn.execute("COMMIT")
            except BaseException as exc:
                if not conn.closed and not conn.broken:
                    # if the connection goes meanwhile, the server rolls the transaction back
                    with contextlib.suppress(psycopg.Error):
                        conn.execute("ROLLBACK")
                run_id = None if c is None else c.fenced_out()
                if run_id is not None and not isinstance(exc, LeaseLost):
                    # a statement after a fence that matched nothing failed (a step the new
                    # owner already committed, say): the lease is what was lost
                    raise lease_lost(run_id) from exc
                raise

    @contextmanager
    def _read(self) -> Iterator[SQLConn]:
        with self._lock:
            yield PgConn(self._connection(), None)

    def _insert_id(self, c: SQLConn, sql: str, args: Sequence[Any]) -> int:
        (new_id,) = c.execute(sql + " RETURNING id", args).fetchone()
        return int(new_id)

    def _check_fence(self, c: SQLConn, rows: Any, run_id: str) -> None:
        cast(PgConn, c).fences.append((rows, run_id))  # answered with the rest (_tx)

    def _workflows_lock(self, c: SQLConn, *, exclusive: bool) -> None:
        kind = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        c.execute(f"SELECT {kind}({WORKFLOWS_LOCK})")

    # the schema ---------------------------------------------------------------------
    def _check_version(self, conn: psycopg.Connection[Any], *, fresh_ok: bool) -> int:
        found = conn.execute(
            "SELECT to_regclass(%s), to_regclass(%s)",
            (f"{SCHEMA}.schema_version", f"{SCHEMA}.runs"),
        ).fetchone()
        if found is None or found[0] is None:
            if found is not None and found[1] is not None:
                raise DatabaseRefused(
                    f"{self.label}: schema {SCHEMA} holds another application's tables",
                    hint="flowrun adds nothing to it: use another database for --db",
                )
            if fresh_ok:
                return 0
            raise ResumeRefused(
                f"no flowrun database at {self.label}",
                hint="run a workflow with this --db first (or FLOWRUN_DB)",
            )
        row = conn.execute(f"SELECT coalesce(max(version), 0) FROM {SCHEMA}.schema_version")
        version = int(row.fetchone()[0])  # type: ignore[index]
        if version > len(MIGRATIONS):
            raise StoreError(
                f"database {self.label} has schema version {version}, newer than this flowrun",
                hint="upgrade flowrun",
            )
        return version

    def _migrate(self, conn: psycopg.Connection[Any]) -> None:
        if self._check_version(conn, fresh_ok=True) >= len(MIGRATIONS):
            return
        with self._lock, conn.transaction():
            # the processes opening a new database at once wait for the first one's migration
            wait_ms = max(MIGRATION_WAIT_S, busy_timeout_s()) * 1000
            conn.execute(f"SET LOCAL lock_timeout = {int(wait_ms)}")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
            conn.execute(VERSION_TABLE)
            version = self._check_version(conn, fresh_ok=False)
            for number in range(version + 1, len(MIGRATIONS) + 1):
                conn.execute(MIGRATIONS[number - 1])
                conn.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (%s, %s)",
                    (number, time.time()),
                )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
