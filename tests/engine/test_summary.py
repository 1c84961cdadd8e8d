"""``GITHUB_STEP_SUMMARY``: each run appends its Markdown summary, never overwriting."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.engine.llm.test_llm import OPENAI_KEY, clean_env
from tests.engine.test_junit import FOREACH, LIB
from tests.support.installed import FLOWRUN
from tests.support.llm_servers import OpenAIServer

Write = Callable[[str, str], Path]


def flowrun(cwd: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLOWRUN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_summary_is_appended_after_what_earlier_steps_wrote_and_holds_the_tables(
    write: Write, tmp_path: Path, db: Path
) -> None:
    write("wf/lib.py", LIB)
    wf = write("wf/wf.yaml", FOREACH)
    summary = tmp_path / "step_summary.md"
    earlier = "## Build\n\nearlier step's table | kept |\n"
    summary.write_text(earlier, encoding="utf-8")
    env = {**os.environ, "GITHUB_STEP_SUMMARY": str(summary)}
    p = flowrun(tmp_path, "run", str(wf), "--db", str(db), "--run-id", "s1", env=env)
    assert p.returncode == 1, p.stderr
    text = summary.read_text(encoding="utf-8")
    assert text.startswith(earlier)
    ours = text[len(earlier) :]
    lines = ours.splitlines()
    assert "## flowrun: demo failed" in lines
    assert any(ln.startswith("Run `s1`: 1 step(s) in ") for ln in lines)
    assert "| node | tasks | ok | failed | time |" in lines
    rows = {ln.split(" | ")[0]: ln.split(" | ")[1:4] for ln in lines if ln.startswith("| ")}
    assert rows["| fetch"] == ["1", "1", "0"]
    assert rows["| work"] == ["4", "3", "1"]
    assert "### First failure: `work[2]`" in lines
    fence = lines.index("```text")
    assert lines[fence + 1 : fence + 4] == [
        "bad item \\x1b[31m2\\x1b[0m",  # a terminal escape, shown
        "see line 7 of the input",
        "```",
    ]
    # the resume that fixes it appends its own summary under the first
    (wf.parent / "lib.py").write_text(LIB.replace("ctx.item == 2", "ctx.item == 99"), "utf-8")
    again = flowrun(tmp_path, "resume", "s1", "--db", str(db), env=env)
    assert again.returncode == 0, again.stderr
    after = summary.read_text(encoding="utf-8")
    assert after.startswith(text)
    added = after[len(text) :].splitlines()
    assert "## flowrun: demo succeeded" in added
    assert any(ln.startswith("| work | 4 | 4 | 0 | ") for ln in added)  # each task once
    assert not any(ln.startswith("### First failure") for ln in added)


def test_the_summary_prices_what_it_can_and_says_unknown_for_the_rest(
    write: Write, tmp_path: Path, db: Path
) -> None:
    wf = write(
        "wf.yaml",
        """
        name: asks
        state: {a: {default: ""}, b: {default: ""}}
        nodes:
          priced:
            llm: {model: gpt-4o-mini, prompt: "hello"}
            save: a
            next: local
          local:
            llm: {model: my-local-model, provider: openai, prompt: "hello"}
            save: b
        """,
    )
    summary = tmp_path / "summary.md"
    with OpenAIServer(api_key=OPENAI_KEY) as o:
        env = clean_env(
            OPENAI_BASE_URL=o.url, OPENAI_API_KEY=OPENAI_KEY, GITHUB_STEP_SUMMARY=str(summary)
        )
        p = flowrun(tmp_path, "run", str(wf), "--db", str(db), env=env)
    assert p.returncode == 0, p.stderr
    lines = summary.read_text(encoding="utf-8").splitlines()
    assert "| model | calls | tokens in | tokens out | cost |" in lines
    rows = {ln.split(" | ")[0][2:]: ln.split(" | ")[1:] for ln in lines if ln.startswith("| ")}
    assert rows["my-local-model"][-1] == "unknown |"
    assert rows["gpt-4o-mini"][-1].startswith("$0.0")
    assert rows["**total**"][0] == "2"
    assert rows["**total**"][-1].endswith(" + unknown |")


def test_without_github_step_summary_nothing_is_written(
    write: Write, tmp_path: Path, db: Path
) -> None:
    wf = write("wf/wf.yaml", "name: one\nnodes:\n  a: {shell: 'true'}\n")
    env = {k: v for k, v in os.environ.items() if k != "GITHUB_STEP_SUMMARY"}
    before = sorted(p.name for p in tmp_path.iterdir())
    p = flowrun(tmp_path, "run", str(wf), "--db", str(db), env=env)
    assert p.returncode == 0, p.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({*before, db.name})
