"""The PostgreSQL test server itself: loopback only, a fresh database per test, stopped after."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.pg import PrivateServer, private_server_or_reason, stop_abandoned
from tests.support.stores import execute, query


def test_each_test_gets_a_fresh_empty_database_on_a_loopback_server(pg_url: str) -> None:
    (addr, db, tables) = query(
        pg_url,
        "SELECT host(inet_server_addr()), current_database(),"
        " (SELECT count(*) FROM pg_tables WHERE schemaname = 'public')",
    )[0]
    assert addr == "127.0.0.1"
    assert db.startswith("t_") and pg_url.endswith(f"/{db}")
    assert tables == 0
    execute(pg_url, "CREATE TABLE mark (x int)")  # the next test must not see it


def test_no_database_of_an_earlier_test_is_left_on_the_server(pg_url: str, pg_server: str) -> None:
    mine = pg_url.rsplit("/", 1)[1]
    worker = mine.split("_")[1]  # t_<worker>_<uuid>: other xdist workers' are their own
    names = [n for (n,) in query(pg_server, "SELECT datname FROM pg_database")]
    assert [n for n in names if n.startswith(f"t_{worker}_")] == [mine]


def test_store_url_reads_and_writes_the_same_sql_on_both_stores(store_url: str) -> None:
    execute(store_url, "CREATE TABLE kv (k text PRIMARY KEY, v integer)")
    execute(store_url, "INSERT INTO kv VALUES (?, ?)", "a", 1)
    assert query(store_url, "SELECT k, v FROM kv WHERE k = ?", "a") == [("a", 1)]


def test_a_private_server_listens_on_loopback_only_and_stop_removes_it(pg_server: str) -> None:
    server = private_server_or_reason()
    if isinstance(server, str):
        pytest.skip(server)
    server.start()
    try:
        assert query(server.url, "SELECT current_setting('listen_addresses')") == [("127.0.0.1",)]
        hba = (server.data / "pg_hba.conf").read_text().split("\n")
        assert [line.split()[-2:] for line in hba if line.startswith("host")] == [
            ["127.0.0.1/32", "trust"]
        ]
        root = server.root
    finally:
        server.stop()
    assert not root.exists()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", server.port)) != 0  # nothing listens there now


def test_a_private_server_runs_as_a_non_root_user(pg_server: str) -> None:
    server = private_server_or_reason()
    if isinstance(server, str):
        pytest.skip(server)
    assert isinstance(server, PrivateServer)
    assert (server.user is None) == (os.geteuid() != 0)
    server.start()
    try:
        (pid,) = query(server.url, "SELECT pg_backend_pid()")[0]
        assert Path(f"/proc/{pid}").stat().st_uid != 0
    finally:
        server.stop()


SESSION = """
import sys, time
from tests.support.pg import private_server_or_reason
server = private_server_or_reason()
server.start()
print(server.root, server.url, flush=True)
time.sleep(600)
"""


def test_a_server_left_by_a_killed_session_is_stopped_by_the_next(pg_server: str) -> None:
    template = private_server_or_reason()
    if isinstance(template, str):
        pytest.skip(template)
    repo = Path(__file__).resolve().parents[2]
    session = subprocess.Popen(
        [sys.executable, "-c", SESSION], cwd=repo, stdout=subprocess.PIPE, text=True
    )
    try:
        assert session.stdout is not None
        root, url = session.stdout.readline().split()
    finally:
        session.send_signal(signal.SIGKILL)  # it never stops its server
        session.wait()
    assert query(url, "SELECT 1") == [(1,)]  # left running
    stop_abandoned(template)
    assert not Path(root).exists()
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
