"""What flowrun does to database files it did not make, or that do not exist."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

from .conftest import FLOWRUN


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
