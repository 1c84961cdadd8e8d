"""A run as a JUnit XML report, for the test views of Jenkins, GitLab and GitHub.

Built from stored data only, so it can be written at the end of a run or later
from the database (``flowrun show RUN --junit FILE``). One ``<testsuite>`` per run
(named after the workflow, ``<properties>`` run_id, status, steps, cost_usd), one
``<testcase>`` per task, named ``node`` or ``node[i]`` for a ``foreach`` item, with
classname ``workflow.node``:

- a task's last outcome decides its case (a step ``resume`` ran again counts once);
  a node a loop runs again is named ``node (step N)`` from its second step on;
- a failed task carries ``<failure>``: its error as the message, the error and the
  end of its stderr as the body;
- a task the run was stopped in (interrupted, or a crashed run) is an ``<error>``:
  it did not finish, and ``resume`` runs it;
- a node with no task at all is a ``<skipped>`` case: the run never reached it;
- a run that failed or stopped outside any task (a budget, max_steps, a merge
  conflict) gets a ``(run)`` case with that failure, so the counts never read green;
- ``<system-out>``/``<system-err>`` hold the stored output tails of every attempt.

The schema it keeps to is the Jenkins xUnit plugin's ``junit-10.xsd``
(``tests/engine/data/jenkins-junit.xsd``).
"""

from __future__ import annotations

import contextlib
import os
import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path

from .errors import WorkflowError
from .records import Task
from .report import last_outcomes, output_tails, stream_text
from .runtime.frontier import RouteError, expand
from .spec import Workflow, load_workflow
from .store.base import RunRecord, Store, TaskOutput, TaskResult

FAILURE_TAIL_LINES = 30  # of stderr, in a failure's body; the whole stored tail is in system-err

# XML 1.0 has no way to write these (ANSI colour escapes, NUL, lone surrogates)
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(text: str) -> str:
    """``text`` with what XML 1.0 cannot hold shown as ``\\xNN``."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def tail_lines(text: str, n: int) -> str:
    lines = text.splitlines()
    cut = len(lines) - n
    kept = "\n".join(lines[-n:])
    return f"… {cut} line(s) before …\n{kept}" if cut > 0 else kept


def junit_xml(store: Store, run_id: str, workflow: Workflow | None = None) -> bytes:
    """The run's JUnit document; ``workflow``: the one it ran (default: the stored one)."""
    rec = store.get_run(run_id)
    wf = workflow or _stored_workflow(store, run_id)
    suite_name = rec.workflow_name
    suite = ET.Element("testsuite", name=xml_text(suite_name))
    props = ET.SubElement(suite, "properties")
    for name, value in (
        ("run_id", rec.run_id),
        ("status", rec.status),
        ("steps", str(rec.step)),
        ("cost_usd", _cost_usd(store, run_id)),
    ):
        ET.SubElement(props, "property", name=name, value=xml_text(value))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}

    def case(node: str | None, name: str, seconds: float, kind: str | None = None) -> ET.Element:
        counts["tests"] += 1
        if kind is not None:
            counts[kind] += 1
        return ET.SubElement(
            suite,
            "testcase",
            name=xml_text(name),
            classname=xml_text(suite_name if node is None else f"{suite_name}.{node}"),
            time=f"{seconds:.3f}",
        )

    tails = output_tails(store, run_id)
    outcomes = last_outcomes(store, run_id)
    first_step: dict[str, int] = {}  # label -> the first step it ran in
    stopped = rec.status in ("interrupted", "running")  # by a signal, or crashed
    why = rec.error or "the run stopped before the task finished"
    for r in outcomes:
        label = _label(r.node, r.index)
        first = first_step.setdefault(label, r.step)
        name = label if first == r.step else f"{label} (step {r.step})"
        outputs = tails.get((r.step, r.order_key), [])
        if r.status == "ok":
            c = case(r.node, name, r.duration_s)
        elif stopped and r.step == rec.step:  # cut short, or failing as the run stopped
            c = case(r.node, name, r.duration_s, "errors")
            _failure(c, r, outputs, "error", f"{why}; `flowrun resume {rec.run_id}` runs it again")
        else:
            c = case(r.node, name, r.duration_s, "failures")
            _failure(c, r, outputs, "failure")
        _output(c, outputs)
    reached = {r.node for r in outcomes}
    if stopped:  # the tasks of the step it stopped in that never ended
        done = {r.order_key for r in outcomes if r.step == rec.step}
        done_nodes = {r.node for r in outcomes if r.step == rec.step}
        for t in _unfinished(store, run_id, rec, wf):
            if t.key in done or (not t.key and t.node in done_nodes):
                continue
            reached.add(t.node)
            c = case(t.node, t.label, 0.0, "errors")
            ET.SubElement(c, "error", message=xml_text(why), type="Interrupted").text = xml_text(
                f"{why}\nnot finished: `flowrun resume {rec.run_id}` runs it again"
            )
    if rec.status == "failed" and not counts["failures"]:
        error = rec.error or "the run failed"
        c = case(None, "(run)", rec.duration_s, "failures")
        ET.SubElement(c, "failure", message=xml_text(error), type="RunFailed").text = xml_text(
            error
        )
    elif rec.status == "interrupted" and not counts["errors"]:
        error = rec.error or "the run was interrupted"
        c = case(None, "(run)", rec.duration_s, "errors")
        ET.SubElement(c, "error", message=xml_text(error), type="Interrupted").text = xml_text(
            error
        )
    for node in wf.nodes if wf is not None else ():
        if node not in reached:
            c = case(node, node, 0.0, "skipped")
            ET.SubElement(c, "skipped", message="never reached")
    for kind, count in counts.items():
        suite.set(kind, str(count))
    suite.set("time", f"{rec.duration_s:.3f}")
    suite.set("timestamp", _timestamp(rec))
    ET.indent(suite)
    data: bytes = ET.tostring(suite, encoding="utf-8", xml_declaration=True)
    return data + b"\n"


def write_junit(store: Store, run_id: str, path: Path, workflow: Workflow | None = None) -> None:
    """Write the report to ``path`` atomically (a temp file in its folder, then a rename).

    Raises ``OSError`` when it cannot be written; ``path`` is then left as it was.
    """
    data = junit_xml(store, run_id, workflow)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _failure(
    case: ET.Element, r: TaskResult, outputs: list[TaskOutput], tag: str, note: str = ""
) -> None:
    """``<failure>`` (the task failed) or ``<error>`` (the run stopped it): cause, stderr."""
    error = r.error or "failed"
    stderr = stream_text(outputs[-1:], "stderr") or r.stderr or ""
    body = f"{error}\nafter {r.attempts} attempt(s)" + (f"\n{note}" if note else "")
    if stderr:
        body += f"\n\nstderr (end):\n{tail_lines(stderr, FAILURE_TAIL_LINES)}"
    kind = "TaskFailed" if tag == "failure" else "Interrupted"
    message = error.splitlines()[0] if error else "failed"
    ET.SubElement(case, tag, message=xml_text(message), type=kind).text = xml_text(body)


def _output(case: ET.Element, outputs: list[TaskOutput]) -> None:
    for stream in ("stdout", "stderr"):
        text = stream_text(outputs, stream)
        if text:
            ET.SubElement(case, f"system-{stream[3:]}").text = xml_text(text)


def _cost_usd(store: Store, run_id: str) -> str:
    calls = store.llm_calls(run_id)
    total = sum(c.cost_usd for c in calls if c.cost_usd is not None)
    known = all(c.cost_usd is not None for c in calls)
    return f"{total:.6f}" + ("" if known else " (lower bound: some calls unpriced)")


def _timestamp(rec: RunRecord) -> str:
    return datetime.fromtimestamp(rec.created_at, UTC).isoformat(timespec="seconds")


def _label(node: str, index: int | None) -> str:
    return node if index is None else f"{node}[{index}]"


def _unfinished(store: Store, run_id: str, rec: RunRecord, wf: Workflow | None) -> list[Task]:
    """The tasks of the step the run stopped in (its frontier's nodes, if it cannot expand;
    those have no key)."""
    cp = store.load_latest(run_id)
    entries = cp.frontier.entries
    if wf is not None and all(e.node in wf.nodes for e in entries):
        with contextlib.suppress(RouteError):
            return expand(wf, entries, cp.state, run_id, rec.step)
    return [Task(e.node, e.parent, e.edge, "") for e in entries]


def _stored_workflow(store: Store, run_id: str) -> Workflow | None:
    """The workflow the run was started with; None if it no longer loads."""
    path, text = store.workflow_text(run_id)
    try:
        return load_workflow(path, text=text)
    except WorkflowError:
        return None
