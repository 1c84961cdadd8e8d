"""What a database file is, found out before anything is written to it.

:func:`examine` looks at a ``--db`` path without changing it: the path itself
(a folder, a dangling link, a file in the way), the SQLite header, and, through a
read-only connection, ``application_id``, ``user_version`` and the tables. A
flowrun database is recognised positively: by :data:`FLOWRUN_APP_ID`, or, for a
file made before flowrun set it, by the exact table set its ``user_version``
stands for. Anything else is refused with the file left byte for byte as it was.

A read-only connection (:func:`read_only_uri`) shares a live writer's ``-wal``
and ``-shm`` files when they exist; when they do not, the main file holds every
committed page and is read as ``immutable``, so looking creates nothing (and
works in a folder that cannot be written). :func:`damage_error` turns an SQLite
failure into a :class:`StoreError` that names the file and, if ``PRAGMA
quick_check`` finds one, the damage.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from ..errors import DatabaseRefused, StoreError
from .migrations import APP_ID_VERSION, FLOWRUN_APP_ID, MIGRATIONS

SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass(frozen=True, slots=True)
class DbFile:
    """A ``--db`` path as found: ``fresh`` means there is nothing in it to keep."""

    path: Path
    exists: bool
    fresh: bool  # no file, a zero-length one, or an SQLite file with no schema at all

    @property
    def folder(self) -> Path:
        return self.path.parent


def read_only_uri(path: Path) -> str:
    """A ``mode=ro`` URI: ``immutable`` unless a writer's ``-wal``/``-shm`` files exist."""
    uri = f"file:{quote(str(path.absolute()))}?mode=ro"
    live = os.path.exists(f"{path}-wal") and os.path.exists(f"{path}-shm")
    return uri if live else uri + "&immutable=1"


def examine(path: Path) -> DbFile:
    """The path as a database: a :class:`DatabaseRefused` (exit 2) if it cannot be flowrun's.

    The read-only look may be ``immutable`` (it never makes ``-wal``/``-shm``), so it
    sees no writer's locks: a file another flowrun is creating and migrating at that
    moment can look half-made. A refusal is therefore only final once the file held
    still while it was read; while it is changing, it is read again.
    """
    for _ in range(100):  # at most ~5 s of another process's migrations
        before = _stamp(path)
        try:
            return _examine(path)
        except DatabaseRefused:
            if _stamp(path) == before:
                raise
        time.sleep(0.05)
    return _examine(path)


def _stamp(path: Path) -> tuple[tuple[int, int] | None, ...]:
    """Size and modification time of the file and its ``-wal``: what a writer changes."""
    out: list[tuple[int, int] | None] = []
    for p in (str(path), f"{path}-wal"):
        try:
            st = os.stat(p)
            out.append((st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


def _examine(path: Path) -> DbFile:
    _check_path(path)
    if not path.exists():
        return DbFile(path, exists=False, fresh=True)
    try:
        with path.open("rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise DatabaseRefused(f"database {path}: {exc.strerror}") from None
    if not head and not os.path.exists(f"{path}-wal"):
        return DbFile(path, exists=True, fresh=True)
    if head and head != SQLITE_MAGIC:
        raise DatabaseRefused(
            f"database {path}: not an SQLite database",
            hint="point --db (or FLOWRUN_DB) at a flowrun database, or at a new file",
        )
    try:
        conn = sqlite3.connect(read_only_uri(path), uri=True)
        try:
            (app_id,) = conn.execute("PRAGMA application_id").fetchone()
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            objects = conn.execute("SELECT type, name FROM sqlite_master").fetchall()
        finally:
            conn.close()
    except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
        raise damage_error(path, exc) from None
    if app_id == FLOWRUN_APP_ID:
        return DbFile(path, exists=True, fresh=False)
    tables = frozenset(name for kind, name in objects if kind == "table")
    if app_id == 0 and version == 0 and not objects:
        return DbFile(path, exists=True, fresh=True)
    if app_id == 0 and 0 < version < APP_ID_VERSION and tables == legacy_tables(version):
        return DbFile(path, exists=True, fresh=False)  # made before flowrun set application_id
    raise DatabaseRefused(
        f"{path} is another application's SQLite database",
        hint="flowrun neither reads nor changes it: pick another --db (or FLOWRUN_DB)",
    )


def _check_path(path: Path) -> None:
    if os.path.islink(path) and not path.exists():
        raise DatabaseRefused(
            f"database {path}: a symbolic link to {os.readlink(path)}, which does not exist",
            hint="fix or remove the link, or point --db (or FLOWRUN_DB) elsewhere",
        )
    if path.is_dir():
        raise DatabaseRefused(
            f"database {path}: is a folder, not a file",
            hint=f"e.g. --db {path / 'flowrun.db'} (or set FLOWRUN_DB)",
        )
    if path.exists() and not path.is_file():
        raise DatabaseRefused(
            f"database {path}: not a regular file",
            hint="point --db (or FLOWRUN_DB) at a flowrun database, or at a new file",
        )
    for parent in path.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise DatabaseRefused(
                    f"database {path}: {parent} is a file, not a folder",
                    hint="point --db (or FLOWRUN_DB) at a file in a folder",
                )
            break


@functools.cache
def legacy_tables(version: int) -> frozenset[str]:
    """The tables migrations ``1..version`` make, as an older flowrun left them."""
    conn = sqlite3.connect(":memory:")
    try:
        for script in MIGRATIONS[:version]:
            conn.executescript(script)
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    finally:
        conn.close()
    return frozenset(name for (name,) in rows)


def quick_check(path: Path) -> str | None:
    """The first problem ``PRAGMA quick_check`` finds in the file, or None if it is sound."""
    try:
        conn = sqlite3.connect(read_only_uri(path), uri=True)
        try:
            (first,) = conn.execute("PRAGMA quick_check(1)").fetchone()
        finally:
            conn.close()
    except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
        return str(exc)
    return None if first == "ok" else str(first)


def damaged(path: Path, problem: str) -> StoreError:
    return StoreError(
        f"{path} is damaged: {problem}",
        hint=f"restore it from a copy, or salvage what is left: sqlite3 {path} .recover",
    )


def damage_error(path: Path, exc: Exception) -> StoreError:
    """An SQLite failure (or undecodable text) as one line naming the file."""
    problem = quick_check(path)
    if problem is None and (
        isinstance(exc, UnicodeDecodeError)
        or "malformed" in str(exc)
        or "not a database" in str(exc)
    ):
        problem = str(exc)
    if problem is not None:
        return damaged(path, problem)
    return StoreError(
        f"cannot use database {path}: {exc}",
        hint="nothing of a failed write was kept; `flowrun resume` continues from the"
        " last committed step",
    )
