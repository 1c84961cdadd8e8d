"""``--junit FILE``: the run as JUnit XML that Jenkins' schema accepts and junitparser reads."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from junitparser import Error, Failure, JUnitXml, Skipped, TestSuite
from lxml import etree

from tests.support.installed import FLOWRUN

Write = Callable[[str, str], Path]

XSD = Path(__file__).parent / "data" / "jenkins-junit.xsd"

LIB = """
import sys, time
def work(state, ctx):
    print(f"working on {ctx.item}")
    if ctx.item == 2:
        print("bad item \\x1b[31m2\\x1b[0m", file=sys.stderr)
        print("see line 7 of the input", file=sys.stderr)
        raise ValueError("item 2 is bad")
    return {}
def slow(state, ctx):
    if ctx.item == 0:
        open("started", "w").close()
        time.sleep(60)
    open(f"done-{ctx.item}", "w").close()
    return {}
"""

FOREACH = """
name: demo
state:
  items: {default: [0, 1, 2, 3]}
nodes:
  fetch:
    shell: "echo fetched"
    next: work
  work:
    foreach: "{{ state.items }}"
    python: lib:work
    next: report
  report:
    shell: "echo done"
"""


def flowrun(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLOWRUN, *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def validate(path: Path) -> None:
    """Against the Jenkins xUnit plugin's junit-10.xsd, with a real XSD validator."""
    schema = etree.XMLSchema(etree.parse(str(XSD)))
    doc = etree.parse(str(path))
    assert schema.validate(doc), schema.error_log


def suite_of(path: Path) -> TestSuite:
    xml = JUnitXml.fromfile(str(path))
    suites = [xml] if isinstance(xml, TestSuite) else list(xml)
    assert len(suites) == 1
    return suites[0]


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """Where flowrun is started: not the workflow's folder, which it works in during a run."""
    d = tmp_path / "job"
    d.mkdir()
    return d


def test_a_failing_foreach_item_is_one_failure_with_its_stderr_and_the_file_validates(
    write: Write, elsewhere: Path, db: Path
) -> None:
    write("wf/lib.py", LIB)
    wf = write("wf/wf.yaml", FOREACH)
    (elsewhere / "reports").mkdir()
    p = flowrun(elsewhere, "run", str(wf), "--db", str(db), "--junit", "reports/junit.xml")
    assert p.returncode == 1, p.stderr
    report = elsewhere / "reports" / "junit.xml"  # relative to where flowrun was started
    assert report.is_file() and not (wf.parent / "reports").exists()
    validate(report)
    suite = suite_of(report)
    assert suite.name == "demo"
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (6, 1, 0, 1)
    cases = {c.name: c for c in suite}
    assert list(cases) == ["fetch", "work[0]", "work[1]", "work[2]", "work[3]", "report"]
    assert {c.classname for c in suite} == {"demo.fetch", "demo.work", "demo.report"}
    failed = cases["work[2]"]
    (failure,) = failed.result
    assert isinstance(failure, Failure)
    assert failure.message == "lib.py:7 in work: ValueError: item 2 is bad"
    assert "see line 7 of the input" in (failure.text or "")
    assert "see line 7 of the input" in (failed.system_err or "")
    assert "\\x1b[31m" in (failed.system_err or "")  # an escape XML cannot hold, shown
    assert failed.system_out == "working on 2\n"
    assert cases["fetch"].is_passed and cases["fetch"].system_out == "fetched\n"
    assert all(cases[f"work[{i}]"].is_passed for i in (0, 1, 3))
    (skipped,) = cases["report"].result
    assert isinstance(skipped, Skipped) and skipped.message == "never reached"
    props = {p.name: p.value for p in suite.properties()}
    assert props["status"] == "failed" and props["steps"] == "1"
    assert props["run_id"] == p.stderr.split()[1]  # "run <id> (demo) started"


def test_resume_rewrites_it_with_the_last_outcome_of_each_task(
    write: Write, elsewhere: Path, db: Path
) -> None:
    lib = write("wf/lib.py", LIB)
    wf = write("wf/wf.yaml", FOREACH)
    assert flowrun(elsewhere, "run", str(wf), "--db", str(db), "--run-id", "r1").returncode == 1
    lib.write_text(LIB.replace("ctx.item == 2", "ctx.item == 99"), encoding="utf-8")
    p = flowrun(elsewhere, "resume", "r1", "--db", str(db), "--junit", "j.xml")
    assert p.returncode == 0, p.stderr
    validate(elsewhere / "j.xml")
    suite = suite_of(elsewhere / "j.xml")
    assert (suite.tests, suite.failures, suite.errors, suite.skipped) == (6, 0, 0, 0)
    assert [c.name for c in suite][-1] == "report"


@pytest.mark.parametrize("concurrency", ["4", "1"])
def test_an_interrupted_run_reports_its_unfinished_tasks_as_errors(
    write: Write, elsewhere: Path, db: Path, concurrency: str
) -> None:
    write("wf/lib.py", LIB)
    wf = write("wf/wf.yaml", FOREACH.replace("lib:work", "lib:slow"))
    args = ["--db", str(db), "--junit", "j.xml", "--run-id", "i1", "--max-concurrency", concurrency]
    proc = subprocess.Popen(
        [FLOWRUN, "run", str(wf), *args],
        cwd=elsewhere,
        env={**os.environ, "FLOWRUN_GRACE": "0"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    started = wf.parent / "started"
    deadline = time.monotonic() + 60
    beside = [wf.parent / f"done-{i}" for i in (1, 2, 3)] if concurrency == "4" else []
    while time.monotonic() < deadline and not (
        started.exists() and all(p.exists() for p in beside)
    ):
        time.sleep(0.02)
    assert started.exists() and all(p.exists() for p in beside)
    time.sleep(0.5)  # the tasks beside work[0] hand their results back
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    validate(elsewhere / "j.xml")
    suite = suite_of(elsewhere / "j.xml")
    cases = {c.name: c for c in suite}
    (error,) = cases["work[0]"].result  # still sleeping when the signal came
    assert isinstance(error, Error) and error.type == "Interrupted"
    assert (error.message or "").startswith("interrupted")
    assert "interrupted by SIGTERM" in (error.text or "")
    assert "flowrun resume i1" in (error.text or "")
    for i in (1, 2, 3):
        if concurrency == "4":  # they ran beside work[0] and ended
            assert cases[f"work[{i}]"].is_passed
        else:  # queued behind work[0], never started: resume runs them
            (never,) = cases[f"work[{i}]"].result
            assert isinstance(never, Error) and "flowrun resume i1" in (never.text or "")
    assert cases["fetch"].is_passed
    assert isinstance(cases["report"].result[0], Skipped)
    assert suite.errors >= 1 and suite.failures == 0
    assert {p.name: p.value for p in suite.properties()}["status"] == "interrupted"


def test_show_writes_the_same_report_from_the_database(
    write: Write, elsewhere: Path, db: Path
) -> None:
    write("wf/lib.py", LIB)
    wf = write("wf/wf.yaml", FOREACH)
    run = flowrun(elsewhere, "run", str(wf), "--db", str(db), "--junit", "run.xml")
    assert run.returncode == 1
    shown = flowrun(elsewhere, "show", "latest", "--db", str(db), "--junit", "show.xml")
    assert shown.returncode == 1  # show's exit code stays the run's
    assert (elsewhere / "show.xml").read_bytes() == (elsewhere / "run.xml").read_bytes()


def test_a_run_that_fails_outside_any_task_is_a_failure_not_green(
    write: Write, elsewhere: Path, db: Path
) -> None:
    wf = write(
        "wf/loop.yaml",
        """
        name: loop
        config: {max_steps: 3}
        nodes:
          again: {shell: "true", next: again}
        """,
    )
    p = flowrun(elsewhere, "run", str(wf), "--db", str(db), "--junit", "j.xml")
    assert p.returncode == 1
    validate(elsewhere / "j.xml")
    suite = suite_of(elsewhere / "j.xml")
    assert [c.name for c in suite] == ["again", "again (step 1)", "again (step 2)", "(run)"]
    assert suite.failures == 1
    (failure,) = next(c for c in suite if c.name == "(run)").result
    assert isinstance(failure, Failure) and "max_steps" in (failure.message or "")


def test_a_junit_path_that_can_never_be_written_is_refused_before_the_run(
    write: Write, elsewhere: Path, db: Path
) -> None:
    wf = write("wf/wf.yaml", FOREACH)
    p = flowrun(elsewhere, "run", str(wf), "--db", str(db), "--junit", "missing/j.xml")
    assert p.returncode == 2
    assert "--junit missing/j.xml: no such directory" in p.stderr
    assert not db.exists()  # nothing ran


def test_fork_writes_the_report_of_the_new_run(write: Write, elsewhere: Path, db: Path) -> None:
    lib = write("wf/lib.py", LIB)
    wf = write("wf/wf.yaml", FOREACH)
    assert flowrun(elsewhere, "run", str(wf), "--db", str(db), "--run-id", "f0").returncode == 1
    lib.write_text(LIB.replace("ctx.item == 2", "ctx.item == 99"), encoding="utf-8")
    p = flowrun(
        elsewhere, "fork", "f0", "--from-step", "0", "--run-id", "f1", "--db", str(db),
        "--junit", "fork.xml",
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    validate(elsewhere / "fork.xml")
    suite = suite_of(elsewhere / "fork.xml")
    assert {p.name: p.value for p in suite.properties()}["run_id"] == "f1"
    assert (suite.tests, suite.failures, suite.skipped) == (6, 0, 0)


def test_secrets_are_masked_in_the_report_and_the_job_summary(
    write: Write, elsewhere: Path, db: Path
) -> None:
    token = "tok-3f9a-SECRET-value"
    write(
        "wf/leak.py",
        """
        import os, sys
        def leak(state, ctx):
            print("token is", os.environ["DEPLOY_TOKEN"])
            print("auth failed for", os.environ["DEPLOY_TOKEN"], file=sys.stderr)
            raise PermissionError("bad token " + os.environ["DEPLOY_TOKEN"])
        """,
    )
    wf = write(
        "wf/leak.yaml",
        """
        name: leak
        secrets: [DEPLOY_TOKEN]
        nodes:
          deploy: {python: "leak:leak"}
        """,
    )
    summary = elsewhere / "summary.md"
    p = flowrun(
        elsewhere, "run", str(wf), "--db", str(db), "--junit", "j.xml",
        DEPLOY_TOKEN=token, GITHUB_STEP_SUMMARY=str(summary),
    )  # fmt: skip
    assert p.returncode == 1, p.stderr
    validate(elsewhere / "j.xml")
    report = (elsewhere / "j.xml").read_text(encoding="utf-8")
    assert "auth failed for ***" in report and "bad token ***" in report
    assert "auth failed for ***" in summary.read_text(encoding="utf-8")
    for text in (report, summary.read_text(encoding="utf-8")):
        assert token not in text and token.lower() not in text.lower()
