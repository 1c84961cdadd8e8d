"""What flowrun does to database files it did not make, or that do not exist."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from flowrun.engine.errors import StoreError
from flowrun.engine.store.migrations import APP_ID_VERSION, FLOWRUN_APP_ID, MIGRATIONS
from flowrun.engine.store.sqlite import SQLiteStore
from flowrun.engine.store.sqlite_file import legacy_tables

from tests.support.installed import FLOWRUN


def flowrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLOWRUN, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def test_read_only_commands_never_create_a_database(tmp_path: Path) -> None:
    typo = tmp_path / "typo.db"
    show = flowrun("show", "latest", "--db", str(typo), cwd=tmp_path)
    assert show.returncode == 3
    assert "no flowrun database at" in show.stderr
    costs = flowrun("costs", "latest", "--db", str(typo), cwd=tmp_path)
    assert costs.returncode == 3
    runs = flowrun("runs", "--db", str(typo), "--json", cwd=tmp_path)
    assert runs.returncode == 0
    assert json.loads(runs.stdout) == []
    default = flowrun("runs", cwd=tmp_path)
    assert default.returncode == 0
    assert "no runs" in default.stdout
    assert not typo.exists()
    assert not (tmp_path / ".flowrun").exists()


def test_another_applications_sqlite_file_is_left_alone(tmp_path: Path) -> None:
    other = tmp_path / "app.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.commit()
    conn.close()
    (tmp_path / "wf.yaml").write_text("name: x\nnodes:\n  a: {shell: 'true'}\n")
    p = flowrun("run", "wf.yaml", "--db", str(other), cwd=tmp_path)
    assert p.returncode == 2
    assert "another application's SQLite database" in p.stderr
    assert "Traceback" not in p.stderr
    conn = sqlite3.connect(other)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert tables == {"customers"}


WF = "name: x\nnodes:\n  a: {shell: 'true'}\n"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def every_command(db: Path, tmp_path: Path) -> list[subprocess.CompletedProcess[str]]:
    (tmp_path / "wf.yaml").write_text(WF)
    return [
        flowrun(*args, "--db", str(db), cwd=tmp_path)
        for args in (
            ["show", "latest"],
            ["runs"],
            ["run", "wf.yaml"],
            ["resume", "latest"],
            ["costs", "latest"],
            ["prune"],
        )
    ]


@pytest.mark.parametrize("user_version", [0, 1, 4])
@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_another_applications_file_is_refused_by_every_command_byte_for_byte(
    tmp_path: Path, user_version: int, journal: str
) -> None:
    other = tmp_path / "app.db"
    conn = sqlite3.connect(other)
    conn.execute(f"PRAGMA journal_mode = {journal}")
    conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO customers (name) VALUES ('ada')")
    conn.execute(f"PRAGMA user_version = {user_version}")
    conn.commit()
    conn.close()
    before = sha256(other)
    for p in every_command(other, tmp_path):
        assert p.returncode == 2, p.args
        assert "another application's SQLite database" in p.stderr
        assert "internal error" not in p.stderr
        assert sha256(other) == before, p.args
        assert sorted(f.name for f in tmp_path.iterdir()) == ["app.db", "wf.yaml"], p.args


def test_another_applications_id_is_refused_even_with_flowrun_tables(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    assert flowrun("run", "wf.yaml", "--db", str(db), cwd=tmp_path).returncode == 2  # no wf yet
    (tmp_path / "wf.yaml").write_text(WF)
    assert flowrun("run", "wf.yaml", "--db", str(db), cwd=tmp_path).returncode == 0
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA application_id").fetchone() == (FLOWRUN_APP_ID,)
    conn.execute("PRAGMA application_id = 42")
    conn.close()
    before = sha256(db)
    p = flowrun("show", "latest", "--db", str(db), cwd=tmp_path)
    assert p.returncode == 2
    assert "another application's SQLite database" in p.stderr
    assert sha256(db) == before


def _undo_columns_after(conn: sqlite3.Connection, version: int) -> None:
    """Drop the columns the migrations after ``version`` added to older tables."""
    for migration in reversed(MIGRATIONS[version:]):
        for table, column in re.findall(r"ALTER TABLE (\w+) ADD COLUMN (\w+)", migration):
            conn.execute(f"ALTER TABLE {table} DROP COLUMN {column}")


def test_a_flowrun_database_from_before_application_id_is_recognised(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    (tmp_path / "wf.yaml").write_text(WF)
    assert flowrun("run", "wf.yaml", "--db", str(db), cwd=tmp_path).returncode == 0
    conn = sqlite3.connect(db)  # as an older flowrun left it: no application_id
    conn.execute("PRAGMA application_id = 0")
    _undo_columns_after(conn, APP_ID_VERSION - 1)
    conn.execute(f"PRAGMA user_version = {APP_ID_VERSION - 1}")
    tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for later in sorted(tables - legacy_tables(APP_ID_VERSION - 1)):  # made by migrations since
        conn.execute(f"DROP TABLE {later}")
    conn.close()
    before = sha256(db)
    show = flowrun("show", "latest", "--db", str(db), cwd=tmp_path)
    assert show.returncode == 0, show.stderr
    assert sha256(db) == before  # reading does not upgrade it
    assert flowrun("run", "wf.yaml", "--db", str(db), cwd=tmp_path).returncode == 0
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA application_id").fetchone() == (FLOWRUN_APP_ID,)
    assert conn.execute("SELECT count(*) FROM runs").fetchone() == (2,)
    conn.close()


def test_read_only_commands_create_and_change_nothing_in_a_flowrun_database(
    tmp_path: Path,
) -> None:
    db = tmp_path / "f.db"
    (tmp_path / "wf.yaml").write_text(WF)
    assert flowrun("run", "wf.yaml", "--db", str(db), cwd=tmp_path).returncode == 0
    before = sha256(db)
    for args in (["show", "latest"], ["runs"], ["costs", "latest"]):
        p = flowrun(*args, "--db", str(db), cwd=tmp_path)
        assert p.returncode == 0, p.stderr
        assert sha256(db) == before
        assert sorted(f.name for f in tmp_path.iterdir()) == ["f.db", "wf.yaml"]


BIG = """
name: big
state:
  rows: {default: [], reducer: append}
nodes:
  fill:
    set: {rows: "{{ 'x' * 3000 }}"}
    routes:
      - when: "state.rows | length < 200"
        to: fill
      - to: END
"""


def test_a_damaged_page_is_reported_by_show_and_resume(tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    (tmp_path / "big.yaml").write_text(BIG)
    p = flowrun("run", "big.yaml", "--db", str(db), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    size = db.stat().st_size
    page = 4096
    assert size > 40 * page
    with db.open("r+b") as f:  # garbage over a page in the middle
        f.seek((size // page // 2) * page)
        f.write(os.urandom(page))
    for args in (["show", "latest"], ["resume", "latest"], ["runs"], ["run", "big.yaml"]):
        p = flowrun(*args, "--db", str(db), cwd=tmp_path)
        assert p.returncode == 1, (args, p.stderr)
        assert f"{db} is damaged: " in p.stderr, (args, p.stderr)
        assert ".recover" in p.stderr
        assert "internal error" not in p.stderr
        assert "succeeded" not in p.stderr


def test_damage_met_after_open_is_a_store_error_naming_the_file(tmp_path: Path) -> None:
    db = tmp_path / "f.db"
    (tmp_path / "big.yaml").write_text(BIG)
    assert flowrun("run", "big.yaml", "--db", str(db), cwd=tmp_path).returncode == 0
    store = SQLiteStore(db)  # opened while sound, then damaged under it
    run_id = store.resolve_run_id("latest")
    size = db.stat().st_size
    with db.open("r+b") as f:  # the newest pages: the last state values, not read yet
        for at in range(size - 20 * 4096, size, 4096):
            f.seek(at)
            f.write(os.urandom(4096))
    with pytest.raises(StoreError, match=f"{db} is damaged: "):
        store.load_latest(run_id)
    store.close()


def immutable_folder(folder: Path) -> None:
    try:
        subprocess.run(["chattr", "+i", str(folder)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("chattr +i is not available here")


@pytest.fixture
def read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody, root included, can write to (``chattr +i``; chmod does not stop root)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    yield folder
    subprocess.run(["chattr", "-i", str(folder)], check=False, capture_output=True)


def test_a_database_in_a_read_only_folder_can_be_read_but_not_written(
    tmp_path: Path, read_only_folder: Path
) -> None:
    db = read_only_folder / "f.db"
    (tmp_path / "wf.yaml").write_text(WF)
    assert flowrun("run", "wf.yaml", "--db", str(db), cwd=tmp_path).returncode == 0
    sqlite3.connect(db).close()  # the last connection folds the WAL in, as a clean exit does
    immutable_folder(read_only_folder)
    before = sha256(db)
    show = flowrun("show", "latest", "--db", str(db), "--json", cwd=tmp_path)
    assert show.returncode == 0, show.stderr
    assert json.loads(show.stdout)["status"] == "succeeded"
    runs = flowrun("runs", "--db", str(db), "--json", cwd=tmp_path)
    assert runs.returncode == 0, runs.stderr
    assert len(json.loads(runs.stdout)) == 1
    assert flowrun("costs", "latest", "--db", str(db), cwd=tmp_path).returncode == 0
    for args in (["run", "wf.yaml"], ["resume", "latest"], ["prune"]):
        p = flowrun(*args, "--db", str(db), cwd=tmp_path)
        assert p.returncode == 1, (args, p.stderr)
        assert f"folder {read_only_folder} is read-only" in p.stderr
    assert sha256(db) == before
    assert [f.name for f in read_only_folder.iterdir()] == ["f.db"]


@pytest.mark.parametrize("kind", ["dangling link", "folder", "under a file", "fifo"])
def test_every_unusable_db_path_is_a_usage_error(tmp_path: Path, kind: str) -> None:
    (tmp_path / "wf.yaml").write_text(WF)
    if kind == "dangling link":
        db = tmp_path / "link.db"
        db.symlink_to(tmp_path / "gone" / "x.db")
    elif kind == "folder":
        db = tmp_path / "folder"
        db.mkdir()
    elif kind == "under a file":
        (tmp_path / "file.txt").write_text("x")
        db = tmp_path / "file.txt" / "x.db"
    else:
        db = tmp_path / "pipe.db"
        os.mkfifo(db)
    for args in (["run", "wf.yaml"], ["show", "latest"], ["runs"], ["resume", "latest"]):
        p = flowrun(*args, "--db", str(db), cwd=tmp_path)
        assert p.returncode == 2, (kind, args, p.stderr)
        assert f"database {db}" in p.stderr
        assert "internal error" not in p.stderr
