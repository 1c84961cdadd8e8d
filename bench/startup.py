"""Whole-process start-up: `flowrun --help`, `--version`, `validate` and one-node runs.

Each figure is the median of N processes (``BENCH_STARTUP_REPEAT``, default 15): wall
time and the child's CPU time (user+sys, which the other load on a shared machine
disturbs less), with the load average beside them. The one-node runs go into a
database that exists already, as every run after a project's first does. One
warm-up process per command first lets Python cache the bytecode, as a pip install
does, even where ``PYTHONDONTWRITEBYTECODE`` is set.

``make bench`` prints these lines; alone: ``python bench/startup.py [PATH/TO/flowrun]``.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPEAT = int(os.environ.get("BENCH_STARTUP_REPEAT", "15"))
# as a user's shell has it: Python may cache bytecode (a pip install has compiled it)
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}

ONE_SET = """
name: one-set
state: {x: {default: 0}}
nodes:
  a: {set: {x: 1}}
"""
ONE_TRUE = """
name: one-true
nodes:
  a: {run: ["true"]}
"""


def _cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def whole(flowrun: str, args: list[str], cwd: Path, n: int = REPEAT) -> tuple[float, float]:
    """Median wall and CPU seconds of ``n`` whole ``flowrun ARGS`` processes."""
    walls, cpus = [], []
    for i in range(n + 1):
        c0, t0 = _cpu_of_children(), time.perf_counter()
        p = subprocess.run(
            [flowrun, *args], cwd=cwd, env=ENV, capture_output=True, text=True, check=False
        )
        wall, cpu = time.perf_counter() - t0, _cpu_of_children() - c0
        if p.returncode != 0:
            raise RuntimeError(f"flowrun {' '.join(args)}: exit {p.returncode}\n{p.stderr[-2000:]}")
        if i:  # the first one is the warm-up
            walls.append(wall)
            cpus.append(cpu)
    return statistics.median(walls), statistics.median(cpus)


def figures(flowrun: str, d: Path, n: int = REPEAT) -> dict[str, tuple[float, float]]:
    """{label: (wall s, CPU s)} of each start-up command, run in directory ``d``."""
    (d / "one-set.yaml").write_text(textwrap.dedent(ONE_SET).lstrip())
    (d / "one-true.yaml").write_text(textwrap.dedent(ONE_TRUE).lstrip())
    db = str(d / "startup.db")
    cases = {
        "flowrun --help": ["--help"],
        "flowrun --version": ["--version"],
        "flowrun validate (one node)": ["validate", "one-set.yaml"],
        "one-node run, set": ["run", "one-set.yaml", "--db", db, "-q"],
        'one-node run, run: ["true"]': ["run", "one-true.yaml", "--db", db, "-q"],
    }
    return {label: whole(flowrun, args, d, n) for label, args in cases.items()}


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def report(results: dict[str, tuple[float, float]], n: int = REPEAT) -> None:
    print(f"whole process, median of {n} (load average {load()})")
    for label, (wall, cpu) in results.items():
        print(f"{label:<33}: {wall * 1000:8.0f} ms ({cpu * 1000:.0f} ms CPU)")


def main() -> None:
    flowrun = sys.argv[1] if len(sys.argv) > 1 else str(Path(sys.executable).parent / "flowrun")
    with tempfile.TemporaryDirectory() as tmp:
        report(figures(flowrun, Path(tmp)))


if __name__ == "__main__":
    main()
