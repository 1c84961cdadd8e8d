"""A resume starts a key the workflow gained at its default, and copies no other default."""

from __future__ import annotations

from pathlib import Path

import pytest
from flowrun.engine import Engine, RunFailed, SQLiteStore, load_workflow
from flowrun.engine.spec.model import Workflow

LIB = """
import os


def step(state, ctx):
    if not os.path.exists(os.path.join(os.path.dirname(__file__), "ok")):
        raise RuntimeError("not yet")
    return {"n": len(state["big"])}
"""

WF = """
name: grows
state:
  big: {default: [1, 2, 3]}
  n: {default: 0}
nodes:
  step:
    python: lib:step
"""


def test_a_resume_gives_new_keys_their_defaults_without_copying_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "lib.py").write_text(LIB)
    (tmp_path / "wf.yaml").write_text(WF)
    store = SQLiteStore(str(tmp_path / "f.db"))
    try:
        with pytest.raises(RunFailed):
            Engine(store).start(load_workflow(str(tmp_path / "wf.yaml")), run_id="r")
        (tmp_path / "ok").touch()
        (tmp_path / "wf.yaml").write_text(
            WF.replace("  n: {default: 0}", "  n: {default: 0}\n  extra: {default: {b: [1], a: 2}}")
        )
        grown = load_workflow(str(tmp_path / "wf.yaml"))

        def copied(self: Workflow) -> None:
            raise AssertionError("a resume copied every default")

        monkeypatch.setattr(Workflow, "initial_state", copied)
        result = Engine(store).resume(grown, "r")
        assert result.status == "succeeded"
        assert result.state == {"big": [1, 2, 3], "n": 3, "extra": {"a": 2, "b": [1]}}
        assert store.load_latest("r").state == result.state
    finally:
        store.close()
