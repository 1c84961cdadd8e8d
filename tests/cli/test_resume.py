"""Resume edge cases: a changed workflow, a finished run, run-id prefixes."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.support.installed import FLOWRUN


def flowrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLOWRUN, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_resume_with_a_workflow_that_adds_a_state_key_starts_it_at_its_default(
    write: Callable[[str, str], Path], tmp_path: Path
) -> None:
    write(
        "wf.yaml",
        """
        name: grow
        state:
          n: {default: 0}
        nodes:
          a: {set: {n: 1}, next: b}
          b: {shell: "exit 3"}
        """,
    )
    db = str(tmp_path / "f.db")
    first = flowrun("run", "wf.yaml", "--db", db, "--run-id", "grow-1", cwd=tmp_path)
    assert first.returncode == 1, first.stderr
    write(
        "fixed.yaml",
        """
        name: grow
        state:
          n: {default: 0}
          extra: {default: [1, 2]}
        nodes:
          a: {set: {n: 1}, next: b}
          b: {set: {n: "{{ state.n + state.extra | length }}"}}
        """,
    )
    second = flowrun(
        "resume", "grow", "--workflow", "fixed.yaml", "--db", db, "--json", cwd=tmp_path
    )
    assert second.returncode == 0, second.stderr
    out = json.loads(second.stdout)
    assert out["state"] == {"n": 3, "extra": [1, 2]}
    again = flowrun("show", "grow-1", "--db", db, "--json", cwd=tmp_path)
    assert again.returncode == 0
    assert json.loads(again.stdout)["state"] == {"n": 3, "extra": [1, 2]}


def test_resume_of_a_finished_run_changes_nothing_and_exits_0(
    write: Callable[[str, str], Path], tmp_path: Path
) -> None:
    write(
        "wf.yaml",
        """
        name: done
        state: {n: {default: 0}}
        nodes:
          a: {set: {n: 5}}
        """,
    )
    db = str(tmp_path / "f.db")
    assert flowrun("run", "wf.yaml", "--db", db, "--run-id", "d1", cwd=tmp_path).returncode == 0
    p = flowrun("resume", "latest", "--db", db, "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == "succeeded"
    assert out["state"] == {"n": 5}
    assert out["steps"] == 1


def test_unknown_and_ambiguous_run_ids_exit_3(
    write: Callable[[str, str], Path], tmp_path: Path
) -> None:
    write("wf.yaml", "name: x\nstate: {n: {default: 0}}\nnodes:\n  a: {set: {n: 1}}\n")
    db = str(tmp_path / "f.db")
    for rid in ("job-10", "job-11"):
        assert flowrun("run", "wf.yaml", "--db", db, "--run-id", rid, cwd=tmp_path).returncode == 0
    missing = flowrun("resume", "nope", "--db", db, cwd=tmp_path)
    assert missing.returncode == 3
    assert "no run matches 'nope'" in missing.stderr
    ambiguous = flowrun("show", "job-1", "--db", db, cwd=tmp_path)
    assert ambiguous.returncode == 3
    assert "ambiguous" in ambiguous.stderr
    assert "Traceback" not in missing.stderr + ambiguous.stderr
    unique = flowrun("show", "job-11", "--db", db, "--json", cwd=tmp_path)
    assert unique.returncode == 0
    assert json.loads(unique.stdout)["run_id"] == "job-11"


def test_resume_onto_a_workflow_missing_the_next_node_exits_2_and_keeps_the_run(
    write: Callable[[str, str], Path], tmp_path: Path
) -> None:
    write(
        "a.yaml",
        """
        name: x
        state: {n: {default: 0}}
        nodes:
          a: {set: {n: 1}, next: z}
          z: {shell: "exit 4"}
        """,
    )
    write("b.yaml", "name: x\nstate: {n: {default: 0}}\nnodes:\n  a: {set: {n: 1}}\n")
    db = str(tmp_path / "f.db")
    assert flowrun("run", "a.yaml", "--db", db, "--run-id", "m1", cwd=tmp_path).returncode == 1
    p = flowrun("resume", "m1", "--workflow", "b.yaml", "--db", db, cwd=tmp_path)
    assert p.returncode == 2
    assert "has no node 'z'" in p.stderr
    assert "Traceback" not in p.stderr
    shown = flowrun("show", "m1", "--db", db, "--json", cwd=tmp_path)
    assert shown.returncode == 1
    assert json.loads(shown.stdout)["status"] == "failed"


def test_record_llm_usage_refuses_negative_or_inconsistent_counts(
    write: Callable[[str, str], Path], tmp_path: Path
) -> None:
    write(
        "uselib.py",
        """
        def bad(state, ctx):
            ctx.record_llm_usage("gpt-4o-mini", 10, -5)
        def cached(state, ctx):
            ctx.record_llm_usage("gpt-4o-mini", 10, 5, cached=11)
        def good(state, ctx):
            ctx.record_llm_usage("gpt-4o-mini", 10, 5, cached=4)
        """,
    )
    db = str(tmp_path / "f.db")
    for fn, code in (("bad", 1), ("cached", 1), ("good", 0)):
        write(f"{fn}.yaml", f"name: u\nnodes:\n  a: {{python: 'uselib:{fn}'}}\n")
        p = flowrun("run", f"{fn}.yaml", "--db", db, "--json", cwd=tmp_path)
        assert p.returncode == code, p.stderr
        out = json.loads(p.stdout)
        if code:
            assert "record_llm_usage" in out["error"]
            assert not out.get("costs") or out["costs"]["calls"] == 0
        else:
            assert out["costs"]["tokens_in"] == 10
            assert out["costs"]["cached_tokens"] == 4


def test_a_failed_run_records_how_long_it_ran(
    write: Callable[[str, str], Path], tmp_path: Path
) -> None:
    write(
        "wf.yaml",
        """
        name: slowfail
        nodes:
          a: {shell: "sleep 0.3; exit 1"}
        """,
    )
    db = str(tmp_path / "f.db")
    p = flowrun("run", "wf.yaml", "--db", db, "--json", cwd=tmp_path)
    assert p.returncode == 1
    assert json.loads(p.stdout)["duration_s"] >= 0.3


def test_show_tells_a_crashed_run_from_a_live_one(
    write: Callable[[str, str], Path], tmp_path: Path
) -> None:
    import signal
    import time

    write(
        "wf.yaml",
        """
        name: crashy
        nodes:
          a: {shell: "touch started; sleep 30"}
        """,
    )
    db = str(tmp_path / "f.db")
    proc = subprocess.Popen(
        [FLOWRUN, "run", "wf.yaml", "--db", db, "--run-id", "c1"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not (tmp_path / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        live = flowrun("show", "c1", "--db", db, "--json", cwd=tmp_path)
        assert json.loads(live.stdout)["live"] is True
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    dead = flowrun("show", "c1", "--db", db, "--json", cwd=tmp_path)
    detail = json.loads(dead.stdout)
    assert detail["status"] == "running" and detail["live"] is False
    human = flowrun("show", "c1", "--db", db, cwd=tmp_path)
    assert "flowrun resume c1" in human.stdout


def test_plain_resume_notes_an_edited_workflow_and_runs_the_stored_one(
    write: Callable[[str, str], Path], tmp_path: Path
) -> None:
    text = """
        name: edited
        state:
          n: {default: 0}
        nodes:
          a: {set: {n: 1}, next: b}
          b: {shell: "exit 3"}
        """
    write("graph.yaml", text)
    db = str(tmp_path / "f.db")
    assert flowrun("run", "graph.yaml", "--db", db, "--run-id", "e1", cwd=tmp_path).returncode == 1

    unchanged = flowrun("resume", "e1", "--db", db, cwd=tmp_path)
    assert unchanged.returncode == 1
    assert "note:" not in unchanged.stderr

    write("graph.yaml", text.replace('"exit 3"', '"exit 0"'))
    edited = flowrun("resume", "e1", "--db", db, cwd=tmp_path)
    assert edited.returncode == 1, edited.stderr  # the stored version ran: b fails again
    assert (
        "note: graph.yaml changed since this run started; resuming with the stored version"
        " (use --workflow graph.yaml to resume with the new one)"
    ) in edited.stderr.splitlines()

    (tmp_path / "graph.yaml").unlink()
    gone = flowrun("resume", "e1", "--db", db, cwd=tmp_path)
    assert gone.returncode == 1
    assert "note:" not in gone.stderr

    write("graph.yaml", text.replace('"exit 3"', '"exit 0"'))
    new = flowrun("resume", "e1", "--workflow", "graph.yaml", "--db", db, cwd=tmp_path)
    assert new.returncode == 0, new.stderr
    assert "note:" not in new.stderr
