"""Node kinds: run, shell, python, set; outputs, env/cwd, save, failures and timeouts."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flowrun.engine import (
    Engine,
    Interrupted,
    Observer,
    RunFailed,
    RunResult,
    Settings,
    SQLiteStore,
    load_workflow,
)
from flowrun.engine.errors import WorkflowError
from flowrun.engine.spec.checks import Checker
from flowrun.engine.store.base import TaskResult

from tests.support.installed import FLOWRUN

Write = Callable[[str, str], Path]


def run_wf(
    path: Path, db: Path, *, inputs: dict[str, Any] | None = None, **settings: Any
) -> tuple[RunResult, SQLiteStore]:
    store = SQLiteStore(db)
    result = Engine(store, settings=Settings(**settings)).start(
        load_workflow(str(path)), inputs=inputs
    )
    return result, store


def fail_wf(path: Path, db: Path, **kw: Any) -> tuple[RunFailed, SQLiteStore]:
    store = SQLiteStore(db)
    with pytest.raises(RunFailed) as info:
        Engine(store, settings=Settings(**kw)).start(load_workflow(str(path)))
    return info.value, store


def results(store: SQLiteStore, run_id: str, node: str) -> list[TaskResult]:
    return [r for r in store.task_results(run_id) if r.node == node]


def latest_run(store: SQLiteStore) -> str:
    return store.list_runs(limit=1)[0].run_id


# run: argv, no shell ---------------------------------------------------------------------
def test_run_passes_argv_without_a_shell_so_a_semicolon_is_literal(
    write: Write, db: Path, tmp_path: Path
) -> None:
    wf = write(
        "wf.yaml",
        """
        name: argv
        state:
          word: {default: "hi; touch pwned; $(touch pwned2)"}
          out: {default: null}
        nodes:
          echo:
            run: [printf, "%s", "{{ state.word }}"]
            save: out
        """,
    )
    res, _ = run_wf(wf, db)
    assert res.state["out"] == "hi; touch pwned; $(touch pwned2)"
    assert not (tmp_path / "pwned").exists()
    assert not (tmp_path / "pwned2").exists()


def test_shell_quotes_every_substituted_value(write: Write, db: Path, tmp_path: Path) -> None:
    wf = write(
        "wf.yaml",
        """
        name: shell
        state:
          word: {default: "it's; touch pwned `touch pwned2` $(touch pwned3)"}
          words: {default: ["a b", "c;d"]}
          out: {default: null}
          many: {default: null}
        nodes:
          one:
            shell: "printf '%s' {{ state.word }}"
            save: out
            next: two
          two:
            shell: "printf '<%s>' {{ state.words }} | tr -d '\\n'"
            save: many
        """,
    )
    res, _ = run_wf(wf, db)
    assert res.state["out"] == "it's; touch pwned `touch pwned2` $(touch pwned3)"
    assert res.state["many"] == "<a b><c;d>"
    assert not list(tmp_path.glob("pwned*"))


@pytest.mark.parametrize(
    ("output", "stdout", "expected"),
    [
        ("text", "hello\\nworld\\n", "hello\nworld"),
        ("lines", "a\\n\\nb\\n  \\nc\\n", ["a", "b", "c"]),
        ("json", '{\\"out\\": [1, 2]}', None),  # a JSON object is the delta itself
        ("none", "ignored\\n", None),
    ],
)
def test_command_output_modes(
    write: Write, db: Path, output: str, stdout: str, expected: Any
) -> None:
    save = "" if output in ("json", "none") else "    save: out\n"
    wf = write(
        "wf.yaml",
        "name: out\nstate:\n  out: {default: untouched}\nnodes:\n  emit:\n"
        f"    shell: \"printf '{stdout}'\"\n    output: {output}\n{save}",
    )
    res, _ = run_wf(wf, db)
    if output == "json":
        assert res.state["out"] == [1, 2]
    elif output == "none":
        assert res.state["out"] == "untouched"
    else:
        assert res.state["out"] == expected


def test_output_json_that_is_not_json_fails_clearly(write: Write, db: Path) -> None:
    wf = write(
        "wf.yaml",
        """
        name: badjson
        state: {out: {default: null}}
        nodes:
          emit:
            run: [echo, "not json"]
            output: json
        """,
    )
    err, _ = fail_wf(wf, db)
    assert "'emit'" in err.message
    assert "stdout is not JSON" in err.message


def test_output_json_writing_an_undeclared_key_fails_clearly(write: Write, db: Path) -> None:
    wf = write(
        "wf.yaml",
        """
        name: undeclared
        state: {out: {default: null}}
        nodes:
          emit:
            run: [echo, '{"out": 1, "oops": 2}']
            output: json
        """,
    )
    err, store = fail_wf(wf, db)
    assert "undeclared state key 'oops'" in err.message
    # a wrong result is not retried: it would be wrong again
    assert results(store, latest_run(store), "emit")[0].attempts == 1


def test_env_and_cwd_are_templated_and_applied(write: Write, db: Path, tmp_path: Path) -> None:
    (tmp_path / "sub" / "dir").mkdir(parents=True)
    wf = write(
        "wf.yaml",
        """
        name: envcwd
        state:
          where: {default: sub/dir}
          greeting: {default: hello}
          out: {default: null}
        nodes:
          show:
            shell: 'printf "%s|%s|%s" "$GREETING" "$(pwd)" "$FLOWRUN_NODE"'
            env: {GREETING: "{{ state.greeting }} from {{ node }}"}
            cwd: "{{ state.where }}"
            save: out
        """,
    )
    res, _ = run_wf(wf, db)
    greeting, cwd, node = res.state["out"].split("|")
    assert greeting == "hello from show"
    assert Path(cwd).resolve() == (tmp_path / "sub" / "dir").resolve()
    assert node == "show"


def test_non_zero_exit_fails_the_task_with_the_stderr_tail(write: Write, db: Path) -> None:
    wf = write(
        "wf.yaml",
        """
        name: boom
        state: {out: {default: null}}
        nodes:
          boom:
            shell: "echo some output; echo first problem >&2; echo disk is on fire >&2; exit 3"
            save: out
        """,
    )
    err, store = fail_wf(wf, db)
    assert "'boom'" in err.message
    assert "exit code 3" in err.message
    assert "disk is on fire" in err.message
    (r,) = results(store, latest_run(store), "boom")
    assert r.status == "failed"
    assert r.stderr is not None and "first problem" in r.stderr and "disk is on fire" in r.stderr
    assert r.stdout is not None and "some output" in r.stdout


def test_a_missing_command_fails_clearly(write: Write, db: Path) -> None:
    wf = write(
        "wf.yaml",
        """
        name: missing
        state: {}
        nodes:
          go:
            run: [definitely-not-a-command-xyz]
        """,
    )
    err, _ = fail_wf(wf, db)
    assert "command not found: definitely-not-a-command-xyz" in err.message


def test_command_stdout_and_stderr_tails_are_kept(write: Write, db: Path) -> None:
    wf = write(
        "wf.yaml",
        """
        name: tails
        state: {out: {default: null}}
        nodes:
          talk:
            shell: "echo to-out; echo to-err >&2"
            save: out
        """,
    )
    res, store = run_wf(wf, db)
    (r,) = results(store, res.run_id, "talk")
    assert r.stdout == "to-out\n"
    assert r.stderr == "to-err\n"


# python: module:function ----------------------------------------------------------------
def test_python_node_gets_a_full_ctx_and_its_folder_is_importable(write: Write, db: Path) -> None:
    write(
        "pyctx_lib.py",
        """
        import logging
        import threading

        def look(state, ctx):
            assert isinstance(ctx.logger, logging.Logger)
            ctx.logger.info("hello from %s", ctx.node)
            assert isinstance(ctx.cancelled, threading.Event) and not ctx.cancelled.is_set()
            ctx.record_llm_usage("my-model", 10, 5)
            return {
                "seen": {
                    "run_id": ctx.run_id,
                    "step": ctx.step,
                    "node": ctx.node,
                    "attempt": ctx.attempt,
                    "item": ctx.item,
                    "index": ctx.index,
                    "state": dict(state)["items"],
                }
            }
        """,
    )
    wf = write(
        "wf.yaml",
        """
        name: pyctx
        state:
          items: {default: [x, y]}
          seen: {default: [], reducer: append}
        nodes:
          first:
            set: {items: [p, q]}
            next: look
          look:
            foreach: "{{ state.items }}"
            python: pyctx_lib:look
        """,
    )
    res, _ = run_wf(wf, db)
    assert res.state["seen"] == [
        {
            "run_id": res.run_id,
            "step": 1,
            "node": "look",
            "attempt": 1,
            "item": item,
            "index": i,
            "state": ["p", "q"],
        }
        for i, item in enumerate(["p", "q"])
    ]


def test_python_state_is_read_only_at_every_level(write: Write, db: Path) -> None:
    write(
        "pyro_lib.py",
        """
        def poke(state, ctx):
            errors = []
            attempts = [
                lambda: state.__setitem__("n", 1),
                lambda: state.pop("n"),
                lambda: state.update(n=2),
                lambda: state["items"].append(9),
                lambda: state["items"].__setitem__(0, 9),
                lambda: state["items"].sort(),
                lambda: state["conf"].__setitem__("k", 9),
                lambda: state["conf"]["nested"].append(9),
                lambda: ctx.item.append(9),
            ]
            for attempt in attempts:
                try:
                    attempt()
                except (TypeError, AttributeError):
                    errors.append(True)
                else:
                    errors.append(False)
            return {"raised": errors}
        """,
    )
    wf = write(
        "wf.yaml",
        """
        name: pyro
        state:
          n: {default: 0}
          items: {default: [1, 2]}
          conf: {default: {k: 1, nested: [1]}}
          lists: {default: [[1], [2]]}
          raised: {default: null}
        nodes:
          poke:
            foreach: "{{ state.lists[:1] }}"
            python: pyro_lib:poke
        """,
    )
    res, _ = run_wf(wf, db)
    assert res.state["raised"] == [True] * 9
    assert res.state["items"] == [1, 2]
    assert res.state["conf"] == {"k": 1, "nested": [1]}
    assert res.state["lists"] == [[1], [2]]


def test_python_node_with_save_stores_any_value(write: Write, db: Path) -> None:
    write("pysave_lib.py", "def value(state, ctx):\n    return [1, 'two', None]\n")
    wf = write(
        "wf.yaml",
        """
        name: pysave
        state: {out: {default: null}}
        nodes:
          v:
            python: pysave_lib:value
            save: out
        """,
    )
    res, _ = run_wf(wf, db)
    assert res.state["out"] == [1, "two", None]


def test_python_returning_a_non_mapping_without_save_fails_clearly(write: Write, db: Path) -> None:
    write("pynm_lib.py", "def value(state, ctx):\n    return [1, 2]\n")
    wf = write(
        "wf.yaml",
        """
        name: pynm
        state: {out: {default: null}}
        nodes:
          v:
            python: pynm_lib:value
        """,
    )
    err, _ = fail_wf(wf, db)
    assert "node 'v'" in err.message
    assert "returned list, not a mapping of state keys" in err.message


def test_python_writing_an_undeclared_key_fails_clearly(write: Write, db: Path) -> None:
    write("pyund_lib.py", "def value(state, ctx):\n    return {'out': 1, 'typo': 2}\n")
    wf = write(
        "wf.yaml",
        """
        name: pyund
        state: {out: {default: null}}
        nodes:
          v:
            python: pyund_lib:value
        """,
    )
    err, _ = fail_wf(wf, db)
    assert "node 'v'" in err.message
    assert "undeclared state key 'typo'" in err.message


def test_python_returning_none_changes_nothing(write: Write, db: Path) -> None:
    write("pynone_lib.py", "def value(state, ctx):\n    return None\n")
    wf = write(
        "wf.yaml",
        """
        name: pynone
        state: {out: {default: 7}}
        nodes:
          v:
            python: pynone_lib:value
        """,
    )
    res, _ = run_wf(wf, db)
    assert res.state == {"out": 7}


def test_python_exception_fails_with_its_type_and_message(write: Write, db: Path) -> None:
    write("pyexc_lib.py", "def value(state, ctx):\n    raise ValueError('bad input 42')\n")
    wf = write(
        "wf.yaml",
        """
        name: pyexc
        state: {}
        nodes:
          v:
            python: pyexc_lib:value
        """,
    )
    err, _ = fail_wf(wf, db)
    assert "ValueError: bad input 42" in err.message


def test_a_failed_foreach_task_is_named_with_its_index(write: Write, db: Path) -> None:
    write(
        "pyidx_lib.py",
        "def value(state, ctx):\n    if ctx.index == 2:\n        raise KeyError('x')\n",
    )
    wf = write(
        "wf.yaml",
        """
        name: pyidx
        state: {}
        nodes:
          each:
            foreach: [a, b, c, d]
            python: pyidx_lib:value
        """,
    )
    err, store = fail_wf(wf, db)
    assert "node 'each[2]' failed after 1 attempt(s): pyidx_lib.py:3 in value: KeyError: 'x'" in (
        err.message
    )
    ok = [r.index for r in results(store, latest_run(store), "each") if r.status == "ok"]
    assert sorted(ok) == [0, 1, 3]  # the step's other tasks finished and were kept


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("pymissing_nope:fn", "cannot import 'pymissing_nope'"),
        ("pymissing_lib:nope", "'pymissing_lib' has no function 'nope'"),
    ],
)
def test_python_target_that_cannot_be_resolved_fails_clearly(
    write: Write, db: Path, target: str, message: str
) -> None:
    # validate refuses both targets up front (tests/engine/spec/test_validate_all.py); the run
    # still fails clearly when the module changes after the workflow was loaded
    write("pymissing_nope.py", "def fn(state, ctx):\n    return None\n")
    lib = write("pymissing_lib.py", "def fn(state, ctx):\n    return None\n\nnope = fn\n")
    wf = write("wf.yaml", f"name: pymiss\nstate: {{}}\nnodes:\n  v:\n    python: {target}\n")
    loaded = load_workflow(str(wf))
    (wf.parent / "pymissing_nope.py").unlink()
    lib.write_text("def fn(state, ctx):\n    return None\n")
    store = SQLiteStore(db)
    with pytest.raises(RunFailed) as info:
        Engine(store).start(loaded)
    assert message in info.value.message


def test_python_modules_of_the_same_name_resolve_per_workflow_folder(
    tmp_path: Path, db: Path
) -> None:
    outs = []
    for name in ("one", "two"):
        d = tmp_path / name
        d.mkdir()
        (d / "samename_lib.py").write_text(
            f"def who(state, ctx):\n    return {{'who': {name!r}}}\n"
        )
        (d / "wf.yaml").write_text(
            "name: same\nstate: {who: {default: null}}\nnodes:\n"
            "  w:\n    python: samename_lib:who\n"
        )
        res, _ = run_wf(d / "wf.yaml", db)
        outs.append(res.state["who"])
    assert outs == ["one", "two"]


# set --------------------------------------------------------------------------------------
def test_set_renders_templates_to_native_values(write: Write, db: Path) -> None:
    wf = write(
        "wf.yaml",
        """
        name: setter
        state:
          nums: {default: [3, 1, 2]}
          sorted: {default: null}
          count: {default: null}
          label: {default: null}
          nested: {default: null}
          flag: {default: null}
        nodes:
          s:
            set:
              sorted: "{{ state.nums | sort }}"
              count: "{{ state.nums | length }}"
              label: "n={{ state.nums | length }}"
              nested: {total: "{{ state.nums | sum }}", raw: [1, "{{ run.step }}"]}
              flag: true
        """,
    )
    res, _ = run_wf(wf, db)
    assert res.state["sorted"] == [1, 2, 3]
    assert res.state["count"] == 3
    assert res.state["label"] == "n=3"
    assert res.state["nested"] == {"total": 6, "raw": [1, 0]}
    assert res.state["flag"] is True


# a new kind: one registry entry, whose hooks check and run it ----------------------------
def check_upper(c: Checker, body: Any, site: Any) -> str:
    text = c.text(body, site.path)
    if not text.strip():
        c.err(site.path, "upper takes a word", hint="e.g. `upper: hello`")
    return text


def run_upper(node: Any, state: Any, ctx: Any, timeout: float | None) -> str:
    return str(node.body).upper()


def test_a_node_kind_is_one_registry_entry_that_validation_the_schema_and_runs_follow(
    write: Write, db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flowrun.engine.nodes.registry import KINDS, Kind
    from flowrun.engine.spec import keys
    from flowrun.engine.spec.schema import workflow_schema

    upper = Kind(
        keys.Key("upper", "string", "A word, in capitals."),
        f"{__name__}:check_upper",
        f"{__name__}:run_upper",
        lambda node: False,
    )
    monkeypatch.setitem(KINDS, "upper", upper)
    wf = write(
        "wf.yaml",
        """
        name: shout
        state: {out: {default: null}}
        nodes:
          loud: {upper: hello, save: out}
        """,
    )
    res, _ = run_wf(wf, db)
    assert res.state["out"] == "HELLO"
    bad = write(
        "bad.yaml",
        """
        name: shout
        state: {out: {default: null}}
        nodes:
          loud: {upper: " ", save: out, env: {A: b}}
          typo: {uper: hello}
        """,
    )
    with pytest.raises(WorkflowError) as info:
        load_workflow(str(bad))
    message = "\n".join(f"{e}: {e.hint}" for e in info.value.errors)
    assert "nodes.loud.upper: upper takes a word" in message
    assert "env applies only to run and shell nodes" in message
    assert "did you mean 'upper'?" in message
    assert keys.KIND_BODIES[-1] is upper.body
    variants = workflow_schema()["$defs"]["node"]
    assert variants["description"].endswith("llm, set, upper")
    assert variants["oneOf"][-1]["required"] == ["upper"]


def test_a_node_key_of_a_kind_registered_after_import_is_refused_on_other_kinds(
    write: Write, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flowrun.engine.nodes.registry import KINDS, Kind, taken_by
    from flowrun.engine.spec import keys

    upper = Kind(
        keys.Key("upper", "string", "A word, in capitals."),
        f"{__name__}:check_upper",
        f"{__name__}:run_upper",
        lambda node: False,
        keys=(keys.Key("accent", "string", "How to say it."),),
    )
    monkeypatch.setitem(KINDS, "upper", upper)
    assert taken_by("accent") == ("upper",)
    bad = write(
        "bad.yaml",
        """
        name: shout
        state: {out: {default: null}}
        nodes:
          say: {shell: 'echo hi', accent: loud}
        """,
    )
    with pytest.raises(WorkflowError) as info:
        load_workflow(str(bad))
    message = "\n".join(f"{e}: {e.hint}" for e in info.value.errors)
    assert "accent applies only to upper nodes" in message


# timeouts ---------------------------------------------------------------------------------
def _gone(pid: int) -> bool:
    """True once ``pid`` no longer runs (absent, or a zombie waiting for its reaper)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return "\nState:\tZ" in status


def test_shell_timeout_kills_the_whole_process_group(
    write: Write, db: Path, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    wf = write(
        "wf.yaml",
        f"""
        name: slow
        state: {{}}
        nodes:
          slow:
            shell: "sleep 30 & echo $! >> {pids}; echo $$ >> {pids}; sleep 30; wait"
            timeout: 500ms
        """,
    )
    err, store = fail_wf(wf, db)
    assert "timed out after 0.5s" in err.message
    assert "process group" in err.message
    listed = [int(p) for p in pids.read_text().split()]
    assert len(listed) == 2
    deadline = time.monotonic() + 10
    while not all(_gone(p) for p in listed) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p for p in listed if not _gone(p)] == []
    (r,) = results(store, latest_run(store), "slow")
    assert r.status == "failed" and r.attempts == 1


def test_python_timeout_sets_cancelled_and_abandons_the_call(write: Write, db: Path) -> None:
    write(
        "pytimeout_lib.py",
        """
        import threading
        seen = threading.Event()

        def slow(state, ctx):
            if ctx.cancelled.wait(20):
                seen.set()
            return {"out": "too late"}
        """,
    )
    wf = write(
        "wf.yaml",
        """
        name: pyslow
        state: {out: {default: null}}
        nodes:
          slow:
            python: pytimeout_lib:slow
            timeout: 300ms
        """,
    )
    err, _ = fail_wf(wf, db)
    assert "timed out after 0.3s" in err.message
    assert "ctx.cancelled" in err.message
    import pytimeout_lib  # type: ignore[import-not-found]

    assert pytimeout_lib.seen.wait(10)


LATE_LIB = """
import threading
import time
from pathlib import Path

HERE = Path(__file__).parent
callers = []  # the thread of each attempt's call


def slow(state, ctx):
    callers.append(threading.get_ident())
    if ctx.attempt > 1:
        return {"out": "second"}
    ctx.cancelled.wait(20)  # abandoned past its timeout, and it goes on
    for _ in range(400):  # until the next step runs: its own step is over by then
        if (HERE / "started").exists():
            break
        time.sleep(0.05)
    ctx.record_llm_usage("gpt-4o-mini", 10, 5)  # returns once the ledger row is in
    (HERE / "reported").write_text("yes")
"""


class UsageThreads(Observer):
    """The thread each billed call was applied on, and each step's coordinator thread."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self.steps: dict[int, int] = {}

    def step_started(self, step: int, tasks: Any) -> None:
        self.steps[step] = threading.get_ident()

    def llm_usage(self, node: str, model: str, *args: Any) -> None:
        self.seen.append((node, threading.get_ident()))


def test_a_call_abandoned_by_an_inline_python_task_is_billed_on_the_coordinator_thread(
    write: Write, db: Path
) -> None:
    write("latelib.py", LATE_LIB)
    wf = write(
        "wf.yaml",
        """
        name: late
        state: {out: {default: null}}
        nodes:
          slow:
            python: latelib:slow
            timeout: 300ms
            retry: {max_attempts: 2, backoff: 0s}
            next: after
          after:
            shell: |
              touch started
              i=0
              while [ ! -e reported ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i+1)); done
              test -e reported
        """,
    )
    observer = UsageThreads()
    store = SQLiteStore(db)
    res = Engine(store, observer=observer).start(load_workflow(str(wf)))
    assert res.status == "succeeded" and res.state["out"] == "second"
    # the lone python task ran on the coordinator's thread, and its retry on the thread
    # that took the baton; the abandoned call sent the usage while the next step ran,
    # and that step's coordinator thread applied it (not the call's own thread)
    first, retry = sys.modules["latelib"].callers
    assert first != retry and observer.steps == {0: first, 1: retry}
    assert observer.seen == [("slow", retry)]
    (call,) = store.llm_calls(res.run_id)
    assert (call.node, call.step, call.attempt, call.tokens_in) == ("slow", 0, 1, 10)


def test_python_timeout_does_not_keep_the_flowrun_process_alive(
    write: Write, tmp_path: Path
) -> None:
    write(
        "pyhang_lib.py",
        """
        import time

        def hang(state, ctx):
            time.sleep(30)  # ignores ctx.cancelled
        """,
    )
    write(
        "wf.yaml",
        """
        name: pyhang
        state: {}
        nodes:
          hang:
            python: pyhang_lib:hang
            timeout: 300ms
        """,
    )
    p = subprocess.run(
        [FLOWRUN, "run", "wf.yaml", "--db", str(tmp_path / "f.db"), "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=25,  # generous: a process kept alive by the sleeping call would take 30 s
    )
    assert p.returncode == 1, p.stderr
    assert "timed out after 0.3s" in p.stderr
    assert json.loads(p.stdout)["status"] == "failed"
    assert "Traceback" not in p.stderr


def test_command_nodes_get_flowrun_environment(write: Write, db: Path) -> None:
    wf = write(
        "wf.yaml",
        """
        name: envs
        state: {out: {default: null}}
        nodes:
          e:
            run: [sh, -c, 'printf "%s %s %s" "$FLOWRUN_RUN_ID" "$FLOWRUN_STEP" "$FLOWRUN_ATTEMPT"']
            save: out
        """,
    )
    res, _ = run_wf(wf, db)
    assert res.state["out"] == f"{res.run_id} 0 1"
    assert os.environ.get("FLOWRUN_NODE") is None


def test_a_missing_cwd_fails_clearly(write: Write, db: Path) -> None:
    wf = write(
        "wf.yaml",
        """
        name: nocwd
        state: {}
        nodes:
          go:
            run: [pwd]
            cwd: no/such/dir
        """,
    )
    err, _ = fail_wf(wf, db)
    assert "cwd" in err.message and "no/such/dir is not a directory" in err.message
    assert "command not found" not in err.message


ESCAPEE = (
    "python3 -c 'import os, time; os.setsid(); print(os.getpid(), flush=True); time.sleep(300)'"
    " > {pids} &"
)


def test_a_timeout_does_not_wait_for_a_descendant_that_left_the_group(
    write: Write, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    # the escapee inherits stderr, so the pipe stays open after the group is killed
    write(
        "wf.yaml",
        f"""
        name: escape
        state: {{}}
        nodes:
          slow:
            shell: "{ESCAPEE.format(pids=pids)} sleep 30"
            timeout: 300ms
        """,
    )
    try:
        p = subprocess.run(
            [FLOWRUN, "run", "wf.yaml", "--db", str(tmp_path / "f.db")],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=25,  # generous: waiting for the escapee would take 300 s
        )
        assert p.returncode == 1, p.stderr
        assert "timed out after 0.3s" in p.stderr
    finally:
        for pid in pids.read_text().split() if pids.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def test_an_interrupt_kills_running_commands_after_the_grace_period(
    write: Write, db: Path, tmp_path: Path
) -> None:
    pids = tmp_path / "pids"
    wf = write(
        "wf.yaml",
        f"""
        name: interrupted
        state: {{}}
        nodes:
          slow:
            shell: "sleep 30 & echo $! >> {pids}; sleep 30; wait"
        """,
    )
    store = SQLiteStore(db)
    engine = Engine(store, settings=Settings(grace_s=0.2))

    def stop_when_started() -> None:
        deadline = time.monotonic() + 20
        while not pids.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        engine.stop_reason = "SIGTERM"
        engine.stop.set()

    threading.Thread(target=stop_when_started, daemon=True).start()
    with pytest.raises(Interrupted, match="interrupted by SIGTERM"):
        engine.start(load_workflow(str(wf)))
    (pid,) = [int(p) for p in pids.read_text().split()]
    deadline = time.monotonic() + 10
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(pid)
    assert store.list_runs()[0].status == "interrupted"
