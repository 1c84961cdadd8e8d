"""The same graphs on LangGraph 1.2 with its SQLite checkpointer, for bench.py's ratios.

Imported only where LangGraph is installed (``make bench`` installs it into
``.venv-bench``); never by the test suite.
"""

from __future__ import annotations

import operator
import sqlite3
import statistics
import time
from pathlib import Path
from typing import Annotated, Any, TypedDict

from langgraph.checkpoint.sqlite import SqliteSaver  # type: ignore[import-not-found]
from langgraph.graph import END, START, StateGraph  # type: ignore[import-not-found]
from langgraph.types import Send  # type: ignore[import-not-found]


class Chain(TypedDict):
    n: int


class Fan(TypedDict):
    items: list[int]
    out: Annotated[list[int], operator.add]


def _saver(path: Path) -> Any:
    conn = sqlite3.connect(path, check_same_thread=False)
    return SqliteSaver(conn)


def chain(d: Path, n: int = 1000) -> float:
    g = StateGraph(Chain)
    for i in range(n):
        g.add_node(f"n{i}", lambda s: {"n": s["n"] + 1})
    g.add_edge(START, "n0")
    for i in range(n - 1):
        g.add_edge(f"n{i}", f"n{i + 1}")
    g.add_edge(f"n{n - 1}", END)
    app = g.compile(checkpointer=_saver(d / f"lg-chain-{time.monotonic_ns()}.db"))
    t0 = time.perf_counter()
    out = app.invoke(
        {"n": 0},
        {"configurable": {"thread_id": "t"}, "recursion_limit": n + 10},
        durability="sync",
    )
    dt = time.perf_counter() - t0
    assert out["n"] == n
    return n / dt


def foreach(d: Path, n: int = 1000) -> float:
    g = StateGraph(Fan)
    g.add_node("start", lambda s: {})
    g.add_node("work", lambda s: {"out": [s["item"] * 2]})  # type: ignore[typeddict-item]
    g.add_edge(START, "start")
    g.add_conditional_edges("start", lambda s: [Send("work", {"item": i}) for i in s["items"]])
    g.add_edge("work", END)
    app = g.compile(checkpointer=_saver(d / f"lg-fan-{time.monotonic_ns()}.db"))
    t0 = time.perf_counter()
    out = app.invoke(
        {"items": list(range(n)), "out": []},
        {"configurable": {"thread_id": "t"}},
        durability="sync",
    )
    dt = time.perf_counter() - t0
    assert len(out["out"]) == n
    return n / dt


def run(d: Path, repeat: int = 3) -> dict[str, float]:
    return {
        "chain": statistics.median(chain(d) for _ in range(repeat)),
        "foreach": statistics.median(foreach(d) for _ in range(repeat)),
    }
