"""Real crashes of the installed ``flowrun``: kill -9 at random instants, signals, leases.

Every test here starts the real command in a subprocess and kills it for real, with its
runs in a SQLite file and (``store_url``) in a PostgreSQL database.
Python nodes append ``run step node index`` to a side file as they start, so a
test can count how often each task actually ran.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.installed import FLOWRUN
from tests.support.stores import integrity_ok, is_postgres, query

Key = tuple[int, str, str]  # step, node, index ("None" when not a foreach task)

CRASHLIB = """
import os
import random
import time


def _done(ctx):
    # one line per execution, written as the task starts
    line = f"{ctx.run_id} {ctx.step} {ctx.node} {ctx.index}\\n"
    with open(os.environ["FLOWRUN_TEST_LOG"], "a") as f:
        f.write(line)
    # then a little work, so kills land inside tasks, between them and in commits
    time.sleep(random.uniform(0.01, 0.08) * float(os.environ.get("FLOWRUN_TEST_SLEEP", "1")))


def prepare(state, ctx):
    _done(ctx)
    return {"items": list(range(8)), "round": 0}


def left(state, ctx):
    _done(ctx)
    return {"left": [i * 2 for i in state["items"]]}


def right(state, ctx):
    _done(ctx)
    return {"right": [i * 3 for i in state["items"]]}


def join(state, ctx):
    _done(ctx)


def square(state, ctx):
    _done(ctx)
    return {"item": ctx.item, "sq": ctx.item * ctx.item + state["round"]}


def tally(state, ctx):
    _done(ctx)
    return {"total": sum(r["sq"] for r in state["squares"]), "round": state["round"] + 1}
"""

# prepare → (left ‖ right) → join → square × 8 (foreach) → tally → square … (50 rounds)
CRASH_YAML = """
name: crashy
state:
  items: {default: []}
  round: {default: 0}
  left: {default: []}
  right: {default: []}
  squares: {default: [], reducer: append}
  total: {default: 0, reducer: add}
config:
  max_concurrency: 4
nodes:
  prepare:
    python: crashlib:prepare
    next: [left, right]
  left:
    python: crashlib:left
    next: join
  right:
    python: crashlib:right
    next: join
  join:
    needs: [left, right]
    python: crashlib:join
    next: square
  square:
    foreach: "{{ state.items }}"
    python: crashlib:square
    save: squares
    next: tally
  tally:
    python: crashlib:tally
    routes:
      - when: "state.round < 50"
        to: square
      - to: END
"""


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Every process a test starts; any still alive at the end is killed and waited for."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


def start(
    procs: list[subprocess.Popen[bytes]], args: list[str], cwd: Path, env: dict[str, str]
) -> subprocess.Popen[bytes]:
    err = open(cwd / "stderr.txt", "ab")  # noqa: SIM115 - a file, not a pipe: never blocks
    p = subprocess.Popen([FLOWRUN, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    err.close()
    procs.append(p)
    return p


def flowrun(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [FLOWRUN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def executions(log: Path) -> collections.Counter[Key]:
    if not log.exists():
        return collections.Counter()
    out: collections.Counter[Key] = collections.Counter()
    for line in log.read_text().splitlines():
        _run, step, node, index = line.split(" ")
        out[(int(step), node, index)] += 1
    return out


def saved_ok(db: str | Path, run_id: str) -> set[Key]:
    rows = query(
        db, "SELECT step, node, idx FROM task_results WHERE run_id = ? AND status = 'ok'", run_id
    )
    return {(s, n, str(i)) for s, n, i in rows}


def run_status(db: str | Path, run_id: str) -> str | None:
    """The run's status, or None if the run (or the database) does not exist yet."""
    row = query(db, "SELECT status FROM runs WHERE run_id = ?", run_id)
    return str(row[0][0]) if row else None


def assert_intact(db: str | Path) -> None:
    """A SQLite file passes its integrity check; a PostgreSQL server keeps its own pages."""
    if not is_postgres(db):
        assert integrity_ok(db)


def step_digests(db: str | Path, run_id: str) -> list[tuple[int, str]]:
    rows = query(
        db, "SELECT step, digest FROM steps WHERE run_id = ? AND step >= 0 ORDER BY step", run_id
    )
    return [(int(step), str(digest)) for step, digest in rows]


def crash_env(log: Path) -> dict[str, str]:
    return dict(os.environ, FLOWRUN_TEST_LOG=str(log), NO_COLOR="1")


def test_kill_9_at_random_instants_then_resume_gives_the_uninterrupted_result(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], store_url: str
) -> None:
    (tmp_path / "crashlib.py").write_text(CRASHLIB)
    (tmp_path / "crash.yaml").write_text(CRASH_YAML)

    # the reference: one uninterrupted run, always on SQLite (the sleeps change no result:
    # skip them); a run on PostgreSQL must give the very same state and step digests
    ref_log = tmp_path / "ref.log"
    ref_db = tmp_path / "ref.db"
    p = flowrun(
        "run", "crash.yaml", "--db", str(ref_db), "--run-id", "ref", "--json", "-q",
        cwd=tmp_path, env={**crash_env(ref_log), "FLOWRUN_TEST_SLEEP": "0"},
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    ref = json.loads(p.stdout)
    assert ref["status"] == "succeeded"
    assert ref["state"]["round"] == 50 and len(ref["state"]["squares"]) == 400
    assert max(executions(ref_log).values()) == 1

    # the crashed run: SIGKILL at seeded random instants (the run needs ~8 s of sleeps, far
    # more than 20 lives of at most 0.6 s), then resume until it finishes
    rng = random.Random(int(os.environ.get("FLOWRUN_CRASH_SEED", "20240607")))
    # the instants count from when a flowrun process is up (imports, workflow loaded), so
    # a slow or loaded machine moves them, not the share of kills that land mid-run
    t0 = time.monotonic()
    assert flowrun("validate", "crash.yaml", cwd=tmp_path).returncode == 0
    startup = time.monotonic() - t0
    log = tmp_path / "crash.log"
    db = store_url
    events = tmp_path / "events.jsonl"
    env = crash_env(log)
    kills = 0
    mid_run_kills = 0
    # (results saved with status ok, executions counted) at each kill
    snapshots: list[tuple[set[Key], collections.Counter[Key]]] = []
    finished = False
    while kills < 20:
        if run_status(db, "crash") is None:
            args = ["run", "crash.yaml", "--db", str(db), "--run-id", "crash", "-q"]
        else:
            args = ["resume", "crash", "--db", str(db), "-q"]
        args += ["--events", str(events)]
        proc = start(procs, args, tmp_path, env)
        time.sleep(startup + rng.uniform(0.05, 0.6))
        if proc.poll() is not None:  # it finished before the kill
            assert proc.wait() == 0, (tmp_path / "stderr.txt").read_text()
            finished = True
            break
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        kills += 1
        status = run_status(db, "crash")
        if status is None:
            continue
        assert_intact(db)
        if status == "running":
            mid_run_kills += 1
        snapshots.append((saved_ok(db, "crash"), executions(log)))
    assert kills >= 15, f"only {kills} kills landed before the run finished"
    assert mid_run_kills >= 10
    steps_before_last_resume = len(step_digests(db, "crash"))
    env["FLOWRUN_TEST_SLEEP"] = "0"  # the rest runs straight through
    for _ in range(3):
        if finished:
            break
        p = flowrun(
            "resume", "crash", "--db", str(db), "-q", "--events", str(events),
            cwd=tmp_path, env=env,
        )  # fmt: skip
        assert p.returncode in (0, 3), p.stderr  # 3 would be a lease that looks live
        finished = p.returncode == 0
    assert finished

    p = flowrun("show", "crash", "--db", str(db), "--json", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert got["status"] == "succeeded"
    assert got["state"] == ref["state"]
    assert got["digest"] == ref["digest"]
    assert step_digests(db, "crash") == step_digests(ref_db, "ref")
    assert_intact(db)

    # every task ran at least once, and none whose result was saved ran again
    final = executions(log)
    assert set(final) == set(executions(ref_log))
    for saved, seen in snapshots:
        for key in saved:
            assert seen[key] >= 1, f"{key} was saved but never ran?"
            assert final[key] == seen[key], f"{key} ran again after its result was saved"

    # events reached the sink at least once and in order, none lost to a kill
    seen: set[str] = set()
    delivered: list[str] = []  # first deliveries, in file order
    for line in events.read_text().splitlines():
        event_id = json.loads(line)["event_id"]  # a kill never leaves half a line
        if event_id not in seen:
            seen.add(event_id)
            delivered.append(event_id)
    stored = [s for (s,) in query(db, "SELECT seq FROM events WHERE run_id = 'crash'")]
    assert sorted(stored) == list(range(1, len(stored) + 1))
    assert delivered == [f"crash:{seq}" for seq in range(1, len(stored) + 1)]

    reruns = sum(final.values()) - len(final)
    print(
        f"{kills} kills ({mid_run_kills} mid-run) over {steps_before_last_resume} of"
        f" {len(step_digests(ref_db, 'ref'))} steps, {reruns} unsaved task(s) re-ran"
    )


WAL_YAML = """
name: chain
state:
  n: {default: 0}
nodes:
  tick:
    python: chainlib:tick
    routes:
      - when: "state.n < 400"
        to: tick
      - to: END
"""

CHAINLIB = """
import os
import time


def tick(state, ctx):
    if state["n"] == 30:
        open(os.environ["FLOWRUN_TEST_LOG"], "a").close()  # "step 30 reached"
        time.sleep(60)
    return {"n": state["n"] + 1}
"""


def test_committed_steps_live_in_the_wal_after_kill_9_and_resume_keeps_them(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    (tmp_path / "chainlib.py").write_text(CHAINLIB)
    (tmp_path / "chain.yaml").write_text(WAL_YAML)
    db = tmp_path / "f.db"
    marker = tmp_path / "reached"
    env = crash_env(marker)
    proc = start(procs, ["run", "chain.yaml", "--db", str(db), "--run-id", "w"], tmp_path, env)
    wait_for(lambda: marker.exists(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    wal = Path(f"{db}-wal")
    assert wal.exists() and wal.stat().st_size > 0, "the WAL must survive a crash"
    assert Path(f"{db}-shm").exists()
    committed = step_digests(db, "w")
    assert len(committed) == 30  # steps 0..29; step 30 was running
    for f in (db, wal, Path(f"{db}-shm")):
        assert f.stat().st_mode & 0o777 == 0o600, f

    # another command on the same file first, then the resume: nothing committed is lost
    assert flowrun("runs", "--db", str(db), cwd=tmp_path).returncode == 0
    env["FLOWRUN_TEST_LOG"] = str(tmp_path / "unused")  # step 30 now runs straight through
    (tmp_path / "chainlib.py").write_text(CHAINLIB.replace("== 30", "== -1"))
    p = flowrun("resume", "w", "--db", str(db), "--json", "-q", cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["state"] == {"n": 400}
    assert step_digests(db, "w")[:30] == committed
    assert_intact(db)


def wait_for(cond: Any, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"flowrun exited early with {proc.returncode}"
        assert time.monotonic() < deadline, "timed out waiting for the run to get there"
        time.sleep(0.02)


SLEEPER_YAML = """
name: sleeper
state:
  quick: {default: null}
  slow: {default: null}
  after: {default: null}
nodes:
  begin:
    set: {}
    next: [quick, slow]
  quick:
    python: sleeplib:quick
    save: quick
    next: after
  slow:
    shell: "echo $$ > started; if [ -f fast ]; then echo fast; else sleep 60; fi"
    save: slow
    next: after
  after:
    needs: [quick, slow]
    python: sleeplib:after
    save: after
"""

SLEEPLIB = """
import os


def _log(ctx):
    with open(os.environ["FLOWRUN_TEST_LOG"], "a") as f:
        f.write(f"{ctx.run_id} {ctx.step} {ctx.node} {ctx.index}\\n")


def quick(state, ctx):
    _log(ctx)
    return "q"


def after(state, ctx):
    _log(ctx)
    return [state["quick"], state["slow"]]
"""


def slow_started(tmp_path: Path) -> bool:
    f = tmp_path / "started"
    return f.exists() and f.read_text().strip() != ""


def sleeper(tmp_path: Path) -> tuple[dict[str, str], Path]:
    (tmp_path / "sleeplib.py").write_text(SLEEPLIB)
    (tmp_path / "sleeper.yaml").write_text(SLEEPER_YAML)
    log = tmp_path / "tasks.log"
    return crash_env(log), log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_interrupts_the_run_saves_finished_tasks_and_resume_completes(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], sig: signal.Signals, store_url: str
) -> None:
    env, log = sleeper(tmp_path)
    db = store_url
    proc = start(procs, ["run", "sleeper.yaml", "--db", str(db), "--run-id", "s"], tmp_path, env)
    wait_for(lambda: slow_started(tmp_path) and log.exists(), proc)
    wait_for(lambda: ("s", 1, "quick") in {(r, s, n) for r, s, n, _ in rows(db)}, proc)
    proc.send_signal(sig)
    time.sleep(0.3)  # a second signal ends the grace period: the sleep is killed at once
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == 130
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert "flowrun resume s" in stderr

    assert run_status(db, "s") == "interrupted"
    assert ("s", 1, "quick", "ok") in rows(db)
    assert all(n != "slow" or st != "ok" for _r, _s, n, st in rows(db))
    assert executions(log) == {(1, "quick", "None"): 1}

    (tmp_path / "fast").touch()  # the slow node is fast from now on
    p = flowrun("resume", "s", "--db", str(db), "--json", "-q", cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["status"] == "succeeded"
    assert out["state"]["after"] == ["q", "fast"]
    assert executions(log) == {(1, "quick", "None"): 1, (2, "after", "None"): 1}


def test_sigterm_lets_running_tasks_finish_within_the_grace_period(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], store_url: str
) -> None:
    env, log = sleeper(tmp_path)
    (tmp_path / "sleeper.yaml").write_text(SLEEPER_YAML.replace("sleep 60", "sleep 1; echo slept"))
    db = store_url
    proc = start(procs, ["run", "sleeper.yaml", "--db", str(db), "--run-id", "g"], tmp_path, env)
    wait_for(lambda: slow_started(tmp_path), proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 130
    assert run_status(db, "g") == "interrupted"
    saved = {(n, st) for _r, _s, n, st in rows(db)}
    assert ("slow", "ok") in saved and ("quick", "ok") in saved
    assert not any(n == "after" for n, _ in saved)  # nothing new was dispatched

    p = flowrun("resume", "g", "--db", str(db), "--json", "-q", cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["state"]["after"] == ["q", "slept"]
    assert executions(log) == {(1, "quick", "None"): 1, (2, "after", "None"): 1}


def rows(db: str | Path) -> list[tuple[str, int, str, str]]:
    return [
        (str(r), int(s), str(n), str(st))
        for r, s, n, st in query(db, "SELECT run_id, step, node, status FROM task_results")
    ]


def test_resume_of_a_live_run_is_refused_then_takes_over_after_kill_9(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], store_url: str
) -> None:
    env, _log = sleeper(tmp_path)
    db = store_url
    proc = start(procs, ["run", "sleeper.yaml", "--db", str(db), "--run-id", "L"], tmp_path, env)
    wait_for(lambda: slow_started(tmp_path), proc)

    p = flowrun("resume", "L", "--db", str(db), cwd=tmp_path, env=env)
    assert p.returncode == 3
    assert f"run L is being executed by pid {proc.pid}" in p.stderr
    assert "--force" in p.stderr and "Traceback" not in p.stderr
    assert proc.poll() is None  # the refused resume left the live run alone

    proc.send_signal(signal.SIGKILL)
    proc.wait()
    os.killpg(int((tmp_path / "started").read_text()), signal.SIGKILL)  # kill -9 orphans it
    (tmp_path / "fast").touch()
    p = flowrun("resume", "L", "--db", str(db), "--json", "-q", cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr  # no --force needed: the lease holder is dead
    assert json.loads(p.stdout)["state"]["after"] == ["q", "fast"]


SLOW_CHAIN_YAML = """
name: slow-chain
state:
  n: {default: 0}
nodes:
  tick:
    python: slowlib:tick
    routes:
      - when: "state.n < 30"
        to: tick
      - to: END
"""

SLOWLIB = """
import os
import time


def tick(state, ctx):
    with open(os.environ["FLOWRUN_TEST_LOG"], "a") as f:
        f.write(f"{ctx.run_id} {ctx.step} {ctx.node} {ctx.index}\\n")
    time.sleep(0.05)
    return {"n": state["n"] + 1}
"""


def committed_steps(db: str | Path, run_id: str) -> int:
    rows = query(db, "SELECT count(*) FROM steps WHERE run_id = ? AND step >= 0", run_id)
    return int(rows[0][0]) if rows else 0


def test_resume_force_takes_over_a_live_run_and_fences_the_old_process_out(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], store_url: str
) -> None:
    (tmp_path / "slowlib.py").write_text(SLOWLIB)
    (tmp_path / "slow.yaml").write_text(SLOW_CHAIN_YAML)
    log = tmp_path / "tasks.log"
    env = crash_env(log)
    db = store_url
    old = start(procs, ["run", "slow.yaml", "--db", str(db), "--run-id", "t"], tmp_path, env)
    wait_for(lambda: committed_steps(db, "t") >= 3, old)

    p = flowrun("resume", "t", "--force", "--db", str(db), "--json", "-q", cwd=tmp_path, env=env)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["state"] == {"n": 30}
    assert old.wait(timeout=30) == 1  # its next write found the lease gone
    stderr = (tmp_path / "stderr.txt").read_text()
    assert "run t was taken over by another process" in stderr
    assert "Traceback" not in stderr

    steps = [s for (s,) in query(db, "SELECT step FROM steps WHERE run_id = 't' AND step >= 0")]
    assert sorted(steps) == list(range(30)) and run_status(db, "t") == "succeeded"
    assert_intact(db)
    # at most the step in flight at the takeover ran in both processes
    assert sum(executions(log).values()) <= 31


def test_racing_resumes_of_a_crashed_run_let_exactly_one_drive_it(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], store_url: str
) -> None:
    (tmp_path / "slowlib.py").write_text(SLOWLIB)
    (tmp_path / "slow.yaml").write_text(SLOW_CHAIN_YAML)
    log = tmp_path / "tasks.log"
    env = crash_env(log)
    db = store_url
    first = start(procs, ["run", "slow.yaml", "--db", str(db), "--run-id", "x"], tmp_path, env)
    wait_for(lambda: committed_steps(db, "x") >= 3, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = executions(log)
    committed = committed_steps(db, "x")

    racers = [
        subprocess.Popen(
            [FLOWRUN, "resume", "x", "--db", str(db), "-q"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outcomes = [(p.wait(timeout=60), p.communicate()[1]) for p in racers]
    codes = sorted(code for code, _ in outcomes)
    assert codes[0] == 0, outcomes
    for code, stderr in outcomes:
        # a loser is refused (the winner's lease is live) or finds the run already done
        assert code == 0 or (code == 3 and "is being executed by pid" in stderr), stderr
    steps = [s for (s,) in query(db, "SELECT step FROM steps WHERE run_id = 'x' AND step >= 0")]
    assert sorted(steps) == list(range(30)) and run_status(db, "x") == "succeeded"
    after = executions(log)
    assert len(after) == 30
    for key, n in after.items():  # the winner ran each missing step once, the losers nothing
        assert n - before[key] == (0 if key[0] < committed else 1), key
