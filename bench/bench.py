"""`make bench`: flowrun's speed figures (SPEC §8), printed, never asserted.

Each figure is the median of several runs on this machine. flowrun is measured
twice: in process (the engine's loop, around ``Engine.start``) and as a whole
``flowrun run`` process (loading the file, validating, opening the store,
running), both as it is and with a one-node run's start-up subtracted (the two
kinds of process interleaved, so both see the same load; see :class:`Whole`).
Where the peers are importable (make bench installs them into its own venv), the
same graphs run on LangGraph 1.2 with its SQLite checkpointer and on DBOS 3.4
with its SQLite system database, timed around their invoke call only (in their
favour), for the ratios.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flowrun.engine import Engine, Settings, SQLiteStore, Store, load_workflow, open_store

sys.path.insert(0, str(Path(__file__).resolve().parent))
import startup  # type: ignore[import-not-found]

REPEAT = int(os.environ.get("BENCH_REPEAT", "5"))
PG = os.environ.get("FLOWRUN_BENCH_PG")  # a server URL: the PostgreSQL store is measured too
PEERS = os.environ.get("BENCH_PEERS", "LangGraph,DBOS").split(",")  # which peers to run
BIN = Path(sys.executable).parent
NOISE = 3  # a difference below this many times the start-up's spread is noise
ONE_NODE = "name: one\nstate: {x: {default: 0}}\nnodes:\n  a: {set: {x: 1}}\n"


def median(fn: Callable[[], float], n: int = REPEAT) -> float:
    return statistics.median(fn() for _ in range(n))


def _write(d: Path, name: str, text: str) -> Path:
    p = d / name
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return p


LIB = """
def inc(state, ctx):
    return {"n": state["n"] + 1}

def item(state, ctx):
    return ctx.item * 2

def touch(state, ctx):
    return {"n": state["n"] + 1}

def items(state, ctx):
    return list(range(state["count"]))
"""


def chain_yaml(n: int, big: bool = False) -> str:
    lines = ["name: chain", "state:", "  n: {default: 0}"]
    if big:
        lines.append("  blob: {default: null}")
    lines += [f"config: {{max_steps: {n + 10}}}", "nodes:"]
    if big:
        lines += ["  init:", "    python: benchblob:blob", "    next: n0"]
    for i in range(n):
        nxt = f"n{i + 1}" if i + 1 < n else "END"
        lines += [f"  n{i}:", "    python: benchlib:inc", f"    next: {nxt}"]
    return "\n".join(lines) + "\n"


def foreach_yaml(n: int) -> str:
    return textwrap.dedent(f"""
        name: fanout
        state:
          items: {{default: {list(range(n))}}}
          out: {{default: [], reducer: append}}
        config: {{max_concurrency: 8, queue_depth: 1024}}
        nodes:
          map:
            foreach: "{{{{ state.items }}}}"
            python: benchlib:item
            save: out
        """)


def run_flowrun(
    d: Path, yaml_text: str, url: str | None = None, durability: str = "normal", **settings: int
) -> tuple[float, int, Path]:
    wf_path = d / f"wf-{time.monotonic_ns()}.yaml"
    wf_path.write_text(yaml_text)
    wf = load_workflow(wf_path)
    db = d / f"{wf_path.stem}.db"
    store: Store = SQLiteStore(db) if url is None else open_store(url, durability=durability)
    t0 = time.perf_counter()
    r = Engine(store, settings=Settings(**settings)).start(wf)  # type: ignore[arg-type]
    dt = time.perf_counter() - t0
    assert r.status == "succeeded", r
    store.close()
    return dt, r.steps, db


def bench_chain(d: Path, url: str | None = None, durability: str = "normal") -> float:
    dt, steps, _ = run_flowrun(d, chain_yaml(1000), url, durability)
    return steps / dt


def bench_foreach(d: Path, url: str | None = None, durability: str = "normal") -> float:
    dt, _, _ = run_flowrun(d, foreach_yaml(1000), url, durability)
    return 1000 / dt


def postgres_figures(d: Path, url: str) -> dict[str, float]:
    """The chain and the foreach on PostgreSQL (``FLOWRUN_BENCH_PG``): in process (with
    ``--durability normal`` and ``full``)."""
    return {
        "chain": median(lambda: bench_chain(d, url)),
        "foreach": median(lambda: bench_foreach(d, url)),
        "chain full": median(lambda: bench_chain(d, url, "full")),
        "foreach full": median(lambda: bench_foreach(d, url, "full")),
    }


def postgres_server(url: str) -> str:
    """``PostgreSQL 15.8`` and the server's own ``synchronous_commit``."""
    import psycopg

    with psycopg.connect(url, connect_timeout=10) as c:
        version, sync = c.execute(
            "SELECT current_setting('server_version'), current_setting('synchronous_commit')"
        ).fetchone() or ("?", "?")
    return f"PostgreSQL {version}, synchronous_commit={sync} on the server"


def bench_big_value(d: Path) -> tuple[int, int]:
    (d / "benchblob.py").write_text("def blob(state, ctx):\n    return {'blob': 'x' * 1_000_000}\n")
    _, steps, db = run_flowrun(d, chain_yaml(50, big=True))
    import sqlite3

    c = sqlite3.connect(db)
    (rows,) = c.execute(
        "SELECT count(*) FROM state_kv WHERE key = 'blob' AND length(value) > 1000000"
    ).fetchone()
    c.close()
    return steps, rows


def bench_resume_cost(d: Path) -> list[tuple[int, float]]:
    out = []
    for n in (10, 1000):
        _, _, db = run_flowrun(d, chain_yaml(n))
        store = SQLiteStore(db)
        run_id = store.list_runs(limit=1)[0].run_id

        def once(store: SQLiteStore = store, run_id: str = run_id, n: int = n) -> float:
            t0 = time.perf_counter()
            store.load_latest(run_id)
            store.load_task_results(run_id, n - 1)
            return time.perf_counter() - t0

        out.append((n, median(once, 50)))
        store.close()
    return out


def bench_big_foreach(d: Path, n: int) -> tuple[float, float]:
    # the items come from a python node: a template's range() stops at 100,000 (Jinja's
    # sandbox), and BENCH_BIG may ask for more
    wf = d / "big.yaml"
    wf.write_text(
        textwrap.dedent(f"""
        name: big-foreach
        state:
          count: {{default: {n}}}
          items: {{default: []}}
          out: {{default: [], reducer: append}}
        config: {{max_concurrency: 8, queue_depth: 256}}
        nodes:
          make:
            python: benchlib:items
            save: items
            next: map
          map:
            foreach: "{{{{ state.items }}}}"
            python: benchlib:item
            save: out
        """)
    )
    t0 = time.perf_counter()
    p = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            import resource, sys
            from flowrun.cli.app import main
            try:
                main(["run", {str(wf)!r}, "--db", {str(d / "big.db")!r}, "--quiet"])
            except SystemExit as e:
                code = e.code
            print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
            sys.exit(code)
            """),
        ],
        cwd=d,
        capture_output=True,
        text=True,
    )
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-2000:])
    rss_kb = int(p.stderr.strip().splitlines()[-1])
    return dt, rss_kb / 1024


def bench_process(d: Path, args: list[str], n: int = 7) -> float:
    def once() -> float:
        t0 = time.perf_counter()
        p = subprocess.run(
            [str(BIN / "flowrun"), *args], cwd=d, env=startup.ENV, capture_output=True, check=False
        )
        dt = time.perf_counter() - t0
        if p.returncode != 0 and args[0] == "run":
            raise RuntimeError(p.stderr[-2000:])
        return dt

    return median(once, n)


@dataclass(frozen=True, slots=True)
class Whole:
    """Whole ``flowrun run`` processes of ``tasks`` tasks beside one-node runs, interleaved.

    Median seconds of each kind, and the one-node runs' spread (their median
    absolute deviation, which one stalled process does not inflate). What a task
    costs with the start-up subtracted is told only when the difference stands out
    of that noise: on a loaded machine a 1,000-task run may last no longer than a
    one-node run measured a minute apart did.
    """

    tasks: int
    run_s: float
    start_s: float
    start_spread: float

    def per_s(self) -> float:
        """Tasks per second of the whole process, nothing subtracted."""
        return self.tasks / self.run_s

    def beyond_start_per_s(self) -> float | None:
        """Tasks per second beyond a one-node run's start-up; None within the noise."""
        beyond = self.run_s - self.start_s
        if beyond <= 0 or beyond < NOISE * self.start_spread:
            return None
        return self.tasks / beyond


def bench_whole(
    d: Path,
    name: str,
    yaml_text: str,
    tasks: int,
    url: str | None = None,
    n: int = REPEAT,
    flags: tuple[str, ...] = (),
) -> Whole:
    """``n`` whole ``flowrun run`` processes of ``yaml_text``, each after a one-node run.

    Each run of either kind gets a new SQLite file (or ``url``), so creating the
    schema is in both and cancels out; ``flags`` go to both kinds.
    """
    (d / name).write_text(yaml_text)
    (d / "one-node.yaml").write_text(ONE_NODE)
    starts, runs = [], []
    for i in range(n):
        for wf, out in (("one-node.yaml", starts), (name, runs)):
            db = url or str(d / f"whole-{Path(wf).stem}-{i}.db")
            out.append(bench_process(d, ["run", wf, "--db", db, "-q", *flags], 1))
    return Whole(tasks, statistics.median(runs), statistics.median(starts), spread(starts))


def spread(xs: list[float]) -> float:
    """The median absolute deviation of ``xs``."""
    mid = statistics.median(xs)
    return statistics.median(abs(x - mid) for x in xs)


def rate(figure: float | None, width: int) -> str:
    return f"{figure:>{width},.0f}" if figure is not None else f"{'n/a (within noise)':>{width}}"


def bench_executors(d: Path, names: list[str]) -> None:
    """The 1,000-item foreach on other executors, as whole processes (``BENCH_EXECUTORS``).

    Each executor's own start-up (a process pool, a Dask cluster of 8 workers) is
    in its one-node run and so subtracted; what remains is the tasks, 8 at once.
    """
    print()
    print("1,000-item foreach by --executor (whole process minus a one-node run), median of 3")
    base: float | None = None
    for name in ["threads", *names]:
        flags = ("--executor", name, "--max-concurrency", "8")
        w = bench_whole(d, f"fan-{name}.yaml", foreach_yaml(1000), 1000, n=3, flags=flags)
        one, dt = w.start_s, w.run_s - w.start_s
        if dt <= 0:
            print(f"  {name:<10}: n/a (within noise); start-up {one * 1000:,.0f} ms")
            continue
        per_task = dt / 1000  # wall time per task, 8 at once
        base = per_task if base is None else base
        print(
            f"  {name:<10}: {1000 / dt:8,.0f} tasks/s, {per_task * 1000:6.2f} ms a task"
            f" ({(per_task - base) * 1000:+.2f} ms vs threads); start-up {one * 1000:,.0f} ms"
        )


def bench_load(d: Path) -> tuple[float, float]:
    """Wall and CPU milliseconds to load and validate a 1,000-node workflow."""
    wf = d / "load1000.yaml"
    wf.write_text(chain_yaml(1000))
    walls, cpus = [], []
    for _ in range(REPEAT):
        t0, c0 = time.perf_counter(), time.process_time()
        load_workflow(wf)
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls) * 1000, statistics.median(cpus) * 1000


def peer_figures(d: Path) -> dict[str, dict[str, float]]:
    """Each installed peer's {"chain": steps/s, "foreach": tasks/s}."""
    out: dict[str, dict[str, float]] = {}
    if "LangGraph" not in PEERS:
        pass
    else:
        try:
            import lg  # type: ignore[import-not-found]
        except ImportError:  # LangGraph is not installed in this venv
            pass
        else:
            out["LangGraph"] = lg.run(d)
    import dbos_peer  # type: ignore[import-not-found]

    if "DBOS" in PEERS and dbos_peer.available():
        out["DBOS"] = dbos_peer.run(d)
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "benchlib.py").write_text(LIB)
        print(
            f"flowrun bench — {os.cpu_count()} cores, Python {sys.version.split()[0]},"
            f" median of {REPEAT}"
        )
        wall_ms, cpu_ms = bench_load(d)
        print(f"load+validate 1,000-node file    : {wall_ms:8.1f} ms ({cpu_ms:.1f} ms CPU)")
        chain = median(lambda: bench_chain(d))
        print(f"1,000-node chain of python nodes : {chain:8,.0f} durable steps/s (in process)")
        fe = median(lambda: bench_foreach(d))
        print(f"1,000-item foreach               : {fe:8,.0f} tasks/s (in process)")
        steps, rows = bench_big_value(d)
        print(f"unchanging 1 MB value            : stored {rows}x over {steps} steps")
        for n, s in bench_resume_cost(d):
            print(f"resume load after {n:>5} steps    : {s * 1000:8.2f} ms")
        n_big = int(os.environ.get("BENCH_BIG", "100000"))
        dt, rss = bench_big_foreach(d, n_big)
        print(f"{n_big:,}-item foreach (process)   : {dt:8.1f} s, peak RSS {rss:.0f} MB")
        results = startup.figures(str(BIN / "flowrun"), d)
        startup.report(results)
        whole = {
            "chain": bench_whole(d, "chain1000.yaml", chain_yaml(1000), 1000),
            "foreach": bench_whole(d, "fan1000.yaml", foreach_yaml(1000), 1000),
        }
        if PG:
            from flowrun.engine.store.open import masked

            pg = postgres_figures(d, PG)
            pg_whole = {
                "chain": bench_whole(d, "chain1000.yaml", chain_yaml(1000), 1000, PG),
                "foreach": bench_whole(d, "fan1000.yaml", foreach_yaml(1000), 1000, PG),
            }
            print(f"PostgreSQL store ({masked(PG)}; {postgres_server(PG)}), beside SQLite")
            print(
                "  in process / whole process minus start-up (nothing subtracted);"
                " PostgreSQL in process also with --durability full"
            )
            for label, shape, ours in (
                ("1,000-node chain (steps/s)  ", "chain", chain),
                ("1,000-item foreach (tasks/s)", "foreach", fe),
            ):
                w, pw = whole[shape], pg_whole[shape]
                print(
                    f"{label}: SQLite {ours:8,.0f} / {rate(w.beyond_start_per_s(), 6)}"
                    f" ({w.per_s():,.0f})   PostgreSQL {pg[shape]:8,.0f}"
                    f" / {rate(pw.beyond_start_per_s(), 6)} ({pw.per_s():,.0f})"
                    f"   full {pg[shape + ' full']:8,.0f}"
                )
        else:
            print("PostgreSQL: skipped (set FLOWRUN_BENCH_PG=postgresql://… to measure it)")
        executors = [e for e in os.environ.get("BENCH_EXECUTORS", "").split(",") if e]
        if executors:
            bench_executors(d, executors)
        else:
            print("other executors: skipped (BENCH_EXECUTORS=processes,dask runs them)")
        peers = peer_figures(d)
        if not peers:
            print("peers: none installed here (make bench installs them); ratios skipped")
        print()
        whole_table(whole, {"chain": chain, "foreach": fe}, peers)


def whole_table(
    whole: dict[str, Whole], in_process: dict[str, float], peers: dict[str, dict[str, float]]
) -> None:
    """flowrun's whole process beside the peers' invoke calls, and the ratios."""
    names = list(peers)
    start = whole["chain"]
    print(
        f"whole process, median of {REPEAT} each, interleaved with as many one-node runs"
        f" (median {start.start_s * 1000:.0f} ms, spread {start.start_spread * 1000:.0f} ms;"
        " peers: invoke only)"
    )
    print(
        f"{'shape':<29}{'minus start-up':>19}{'whole':>8}{'in-proc':>9}"
        + "".join(f"{n:>11}" for n in names)
        + "".join(f"{'/' + n + ' (whole)':>21}" for n in names)
    )
    for shape, label in (
        ("chain", "1,000-node chain (steps/s)"),
        ("foreach", "1,000-item foreach (tasks/s)"),
    ):
        w = whole[shape]
        beyond = w.beyond_start_per_s()
        ratios = "".join(
            f"{(f'{beyond / peers[n][shape]:.1f}x' if beyond else 'n/a'):>13}"
            f"{f'({w.per_s() / peers[n][shape]:.1f}x)':>8}"
            for n in names
        )
        print(
            f"{label:<29}{rate(beyond, 19)}{w.per_s():>8,.0f}{in_process[shape]:>9,.0f}"
            + "".join(f"{peers[n][shape]:>11,.0f}" for n in names)
            + ratios
        )


if __name__ == "__main__":
    main()
