"""Options shared by several commands, and the one way errors are printed."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

Db = Annotated[
    str | None,
    typer.Option("--db", envvar="FLOWRUN_DB", help="SQLite file (default .flowrun/flowrun.db)."),
]
MaxConcurrency = Annotated[
    int | None, typer.Option("--max-concurrency", min=1, help="Tasks running at once.")
]
Json = Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Only errors and the final summary.")]
Durability = Annotated[
    str,
    typer.Option(
        "--durability", help="normal (WAL, synchronous=NORMAL) or full (fsync every commit)."
    ),
]
Events = Annotated[
    str | None, typer.Option("--events", help="Append every event to this JSON-lines file.")
]

DEFAULT_DB = ".flowrun/flowrun.db"


def print_error(exc: Any) -> None:
    print(f"flowrun: error: {exc.message}", file=sys.stderr)
    if getattr(exc, "hint", None):
        print(f"  hint: {exc.hint}", file=sys.stderr)
