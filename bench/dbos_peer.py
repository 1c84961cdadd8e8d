"""The same graphs on DBOS 3.4 with its default SQLite system database, for bench.py's ratios.

Imported only where DBOS is installed (``make bench`` installs it into
``.venv-bench``); never by the test suite. DBOS is one instance per process, so
each figure is measured in a fresh ``python bench/dbos_peer.py SHAPE DIR`` and
timed around the workflow call only (start-up and launch excluded, in DBOS's
favour).

- chain: one workflow calling 1,000 steps one after another;
- fan-out: one workflow that starts 1,000 child workflows (one step each) with
  ``DBOS.start_workflow`` and awaits their results. (A DBOS queue polls its
  table once a second: with 8 workers that is ~6 tasks/s here, so the child
  workflows are the faster of DBOS's two durable fan-outs.)
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

N = 1000


def _measure(shape: str, d: Path) -> float:
    from dbos import DBOS  # type: ignore[import-not-found]

    DBOS(
        config={
            "name": "bench",
            "system_database_url": f"sqlite:///{d / f'dbos-{time.monotonic_ns()}.sqlite'}",
            "run_admin_server": False,
        }
    )

    @DBOS.step()
    def inc(n: int) -> int:
        return n + 1

    @DBOS.workflow()
    def chain(n: int) -> int:
        x = 0
        for _ in range(n):
            x = inc(x)
        return x

    @DBOS.step()
    def double(i: int) -> int:
        return i * 2

    @DBOS.workflow()
    def work(i: int) -> int:
        return double(i)  # type: ignore[no-any-return]

    @DBOS.workflow()
    def fan(n: int) -> list[int]:
        handles = [DBOS.start_workflow(work, i) for i in range(n)]
        return [h.get_result() for h in handles]

    DBOS.launch()
    try:
        t0 = time.perf_counter()
        if shape == "chain":
            assert chain(N) == N
        else:
            assert len(fan(N)) == N
        return N / (time.perf_counter() - t0)
    finally:
        DBOS.destroy()


def _once(shape: str, d: Path) -> float:
    p = subprocess.run(
        [sys.executable, __file__, shape, str(d)], capture_output=True, text=True, check=False
    )
    if p.returncode != 0:
        raise RuntimeError(f"dbos {shape}: {p.stderr[-2000:]}")
    rate: float = json.loads(p.stdout.strip().splitlines()[-1])
    return rate


def run(d: Path, repeat: int = 3) -> dict[str, float]:
    return {
        shape: statistics.median(_once(shape, d) for _ in range(repeat))
        for shape in ("chain", "foreach")
    }


def available() -> bool:
    try:
        import dbos  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    out: Any = _measure(sys.argv[1], Path(sys.argv[2]))
    print(json.dumps(out))
