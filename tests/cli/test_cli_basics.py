"""End-to-end basics through the installed `flowrun` command."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tests.support.installed import FLOWRUN

ROOT = Path(__file__).resolve().parents[2]


def flowrun(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLOWRUN, *args], cwd=cwd, capture_output=True, text=True, timeout=120, env=env
    )


def test_example_pipeline_runs_and_prints_json(tmp_path: Path) -> None:
    work = tmp_path / "pipeline"
    shutil.copytree(ROOT / "workflows" / "pipeline", work, ignore=shutil.ignore_patterns("out"))
    p = flowrun("run", "pipeline.yaml", "--json", "--db", str(tmp_path / "f.db"), cwd=work)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == "succeeded"
    assert out["state"]["flagged"] == [2, 4, 6]
    assert [s["id"] for s in out["state"]["scored"]] == [1, 2, 3, 4, 5, 6]
    assert out["state"]["alert"] == "3 flagged"
    assert out["state"]["source_info"] == "data/reviews.json (541 bytes)"
    assert (work / "out" / "report.md").read_text().startswith("# Review report")
    assert p.stderr.splitlines()[0].startswith(f"run {out['run_id']} ")
    assert "Traceback" not in p.stderr


def test_help_lists_commands(tmp_path: Path) -> None:
    p = flowrun("--help", cwd=tmp_path)
    assert p.returncode == 0
    for cmd in ("run", "resume", "runs", "show", "validate", "graph"):
        assert cmd in p.stdout


def test_unknown_option_is_usage_error_exit_2(tmp_path: Path) -> None:
    p = flowrun("run", "x.yaml", "--nope", cwd=tmp_path)
    assert p.returncode == 2
    assert "No such option" in p.stderr
    assert "Traceback" not in p.stderr
