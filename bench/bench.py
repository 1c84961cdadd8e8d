"""`make bench`: flowrun's speed figures (SPEC §8), printed, never asserted.

Each figure is the median of several runs on this machine. Where LangGraph 1.2
with its SQLite checkpointer is importable (make bench installs it into its own
venv), the same graphs run on it in the same process for a ratio.
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
from pathlib import Path

from flowrun.engine import Engine, Settings, SQLiteStore, load_workflow

REPEAT = int(os.environ.get("BENCH_REPEAT", "5"))
BIN = Path(sys.executable).parent


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


def run_flowrun(d: Path, yaml_text: str, **settings: int) -> tuple[float, int, Path]:
    wf_path = d / f"wf-{time.monotonic_ns()}.yaml"
    wf_path.write_text(yaml_text)
    wf = load_workflow(wf_path)
    db = d / f"{wf_path.stem}.db"
    store = SQLiteStore(db)
    t0 = time.perf_counter()
    r = Engine(store, settings=Settings(**settings)).start(wf)  # type: ignore[arg-type]
    dt = time.perf_counter() - t0
    assert r.status == "succeeded", r
    store.close()
    return dt, r.steps, db


def bench_chain(d: Path) -> float:
    dt, steps, _ = run_flowrun(d, chain_yaml(1000))
    return steps / dt


def bench_foreach(d: Path) -> float:
    dt, _, _ = run_flowrun(d, foreach_yaml(1000))
    return 1000 / dt


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
    wf = d / "big.yaml"
    wf.write_text(
        textwrap.dedent(f"""
        name: big-foreach
        state:
          count: {{default: {n}}}
          out: {{default: [], reducer: append}}
        config: {{max_concurrency: 8, queue_depth: 256}}
        nodes:
          map:
            foreach: "{{{{ range(state.count) | list }}}}"
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


def bench_process(d: Path, args: list[str]) -> float:
    def once() -> float:
        t0 = time.perf_counter()
        subprocess.run([str(BIN / "flowrun"), *args], cwd=d, capture_output=True, check=False)
        return time.perf_counter() - t0

    return median(once, 7)


def langgraph_figures(d: Path) -> dict[str, float] | None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        import lg  # type: ignore[import-not-found]
    except ImportError:  # LangGraph is not installed in this venv
        return None
    figures: dict[str, float] = lg.run(d)
    return figures


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "benchlib.py").write_text(LIB)
        print(
            f"flowrun bench — {os.cpu_count()} cores, Python {sys.version.split()[0]},"
            f" median of {REPEAT}"
        )
        chain = median(lambda: bench_chain(d))
        print(f"1,000-node chain of python nodes : {chain:8,.0f} durable steps/s")
        fe = median(lambda: bench_foreach(d))
        print(f"1,000-item foreach               : {fe:8,.0f} tasks/s")
        steps, rows = bench_big_value(d)
        print(f"unchanging 1 MB value            : stored {rows}x over {steps} steps")
        for n, s in bench_resume_cost(d):
            print(f"resume load after {n:>5} steps    : {s * 1000:8.2f} ms")
        n_big = int(os.environ.get("BENCH_BIG", "100000"))
        dt, rss = bench_big_foreach(d, n_big)
        print(f"{n_big:,}-item foreach (process)   : {dt:8.1f} s, peak RSS {rss:.0f} MB")
        _write(
            d,
            "one.yaml",
            """
            name: one
            state: {x: {default: 0}}
            nodes:
              a: {set: {x: 1}}
            """,
        )
        print(f"flowrun --help                   : {bench_process(d, ['--help']) * 1000:8.0f} ms")
        one = bench_process(d, ["run", "one.yaml", "--db", str(d / "one.db"), "-q"])
        print(f"one-node run (whole process)     : {one * 1000:8.0f} ms")
        lg = langgraph_figures(d)
        if lg is None:
            print("langgraph: not installed here; ratios skipped")
        else:
            print(
                f"langgraph 1,000-node chain       : {lg['chain']:8,.0f} steps/s"
                f"  → flowrun {chain / lg['chain']:.1f}x"
            )
            print(
                f"langgraph 1,000-item fan-out     : {lg['foreach']:8,.0f} tasks/s"
                f"  → flowrun {fe / lg['foreach']:.1f}x"
            )


if __name__ == "__main__":
    main()
