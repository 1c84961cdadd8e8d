"""A real PostgreSQL server for the tests, a fresh database per test, and ``store_url``.

The server is ``FLOWRUN_TEST_PG`` when that names one (CI starts it in ``.ci/run``, which
sets ``FLOWRUN_TEST_PG_UNAVAILABLE`` to the reason instead when it could not);
else one started privately for the session with initdb/pg_ctl (on PATH or in
/usr/lib/postgresql/*/bin; as the ``postgres`` user when the suite runs as root), on a
free 127.0.0.1 port with trust authentication for loopback only, and stopped at the
session's end; else the tests that need it skip and say what is missing. Each test gets
its own database, ``t_<worker>_<uuid>``, dropped afterwards, so tests (and pytest-xdist
workers, each of which starts its own private server) never see each other's runs.

``store_url`` runs a test once on SQLite (a file in tmp_path) and once on PostgreSQL;
``tests/support/stores.py`` looks into either kind.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

PG_ENV = "FLOWRUN_TEST_PG"
UNAVAILABLE_ENV = "FLOWRUN_TEST_PG_UNAVAILABLE"  # why CI has no server: skip, say so
RUN_AS = "postgres"  # the non-root user a root test session runs the server as
INSTALL_HINT = "apt-get install postgresql, or set FLOWRUN_TEST_PG=postgresql://…"
PREFIX = "flowrun-pg-"  # a private server's temp dir: tmp/flowrun-pg-*/{data,session.pid}


def with_database(url: str, name: str) -> str:
    """``url`` with its database (the path) replaced by ``name``."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl: PATH first, then Debian's newest version."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(on_path).resolve().parent  # a symlink into the version's bin

    def version(d: str) -> int:
        m = re.search(r"/postgresql/(\d+)/", d)
        return int(m.group(1)) if m else 0

    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin/"), key=version, reverse=True):
        if os.access(f"{d}initdb", os.X_OK) and os.access(f"{d}pg_ctl", os.X_OK):
            return Path(d)
    return None


@dataclass
class PrivateServer:
    """A PostgreSQL cluster in a temp dir, owned by ``user``, serving 127.0.0.1:``port``."""

    bindir: Path
    user: str | None  # None: the current (non-root) user runs it
    root: Path = Path()
    port: int = 0

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        prefix = ["runuser", "-u", self.user, "--"] if self.user else []
        return subprocess.run(
            [*prefix, *argv], capture_output=True, text=True, timeout=120, cwd=self.root
        )

    def start(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix=PREFIX))
        (self.root / "session.pid").write_text(str(os.getpid()))
        if self.user:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        init = self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
            "-A", "trust", "--auth-host=trust", "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
        # trust on the unix socket (in root, reachable by its owner only) and on 127.0.0.1 only
        hba = self.data / "pg_hba.conf"
        hba.write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        if self.user:
            os.chown(hba, entry.pw_uid, entry.pw_gid)
        log = self.root / "server.log"
        for _attempt in range(3):  # another process may take the free port first
            self.port = free_port()
            # fsync off: the tests crash clients, never the server
            options = (
                f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
                " -c fsync=off -c max_connections=200"
            )
            ctl = self._run(
                str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(log),
                "-w", "-t", "60", "-o", options, "start",
            )  # fmt: skip
            if ctl.returncode == 0:
                return
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ctl.stderr
        raise RuntimeError(f"pg_ctl start failed: {tail.strip()}")

    def stop(self) -> None:
        if self.data.exists():
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def stop_abandoned(template: PrivateServer) -> None:
    """Stop the private servers of test sessions that died without stopping them (kill -9)."""
    for root in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            session = int((root / "session.pid").read_text())
        except (OSError, ValueError):
            continue  # being set up right now, or not one of ours
        try:
            os.kill(session, 0)
            continue  # that session is still running
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        PrivateServer(template.bindir, template.user, root=root).stop()


def private_server_or_reason() -> PrivateServer | str:
    bindir = find_bindir()
    if bindir is None:
        return f"no PostgreSQL server: {PG_ENV} is unset and initdb/pg_ctl are not installed"
    user: str | None = None
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            pwd.getpwnam(RUN_AS)
        except KeyError:
            return f"no PostgreSQL server: running as root and there is no {RUN_AS!r} user"
        if shutil.which("runuser") is None:
            return "no PostgreSQL server: running as root and runuser is not installed"
        user = RUN_AS
    return PrivateServer(bindir, user)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """The URL of a PostgreSQL server's ``postgres`` database, as a superuser."""
    pytest.importorskip("psycopg", reason="psycopg is not installed: pip install -e '.[dev]'")
    if os.environ.get(UNAVAILABLE_ENV):
        pytest.skip(f"no PostgreSQL server: {os.environ[UNAVAILABLE_ENV]}")
    given = os.environ.get(PG_ENV)
    if given:
        yield given
        return
    server = private_server_or_reason()
    if isinstance(server, str):
        pytest.skip(f"{server} ({INSTALL_HINT})")
    stop_abandoned(server)
    try:
        server.start()
    except Exception:
        server.stop()
        raise
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty database on the test server, dropped after the test."""
    import psycopg
    from psycopg import sql

    worker = re.sub(r"\W", "", os.environ.get("PYTEST_XDIST_WORKER", "")) or "main"
    name = f"t_{worker}_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(pg_server, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_database(pg_server, name)
    finally:
        with psycopg.connect(pg_server, autocommit=True) as c:
            # FORCE ends what a test left connected: a killed or stopped flowrun's sessions
            c.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Where a test keeps its runs: a SQLite file, then a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "flowrun.db")
    return str(request.getfixturevalue("pg_url"))
